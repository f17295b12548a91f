"""Read a sweep's Parquet tables into pandas, skipping (and naming) damaged files.

Each table is a folder of small Parquet files, one per trial (see `workers.records`),
plus, once compacted, one consolidated file holding most of them (`workers.tables`):
it is read with only the record files it does not hold, so each row comes once.
Metric rows (`measures`) are joined onto `trials`, so one DataFrame holds a model's
config, outcome and landscape scalars. The long tables (`history`, `curves`: a row per
epoch or curve point, each with the full config) are read on first use: at 10,000
models they hold 340,000 rows whose decoding alone costs seconds, and summaries, phases
and `status` never touch them. A file that cannot be read is reported and left out
instead of failing the whole analysis. Only the records of the folder's latest spec are
read unless asked for all of them (`analysis.lens`).
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from analysis.lens import Lens, describe_others, read_lens
from workers.errors import ConfigError
from workers.records import (
    CURVES,
    FAILURES,
    HISTORY,
    IDENTITY_COLUMNS,
    LONG_TABLES,
    MEASURES,
    PACKING_COLUMNS,
    PAIRS,
    PROVENANCE_COLUMNS,
    TABLES,
    TRIALS,
)
from workers.storage import Storage
from workers.tables import TableRead, read_table

# Columns that identify a row or describe provenance rather than configuration.
NOT_CONFIG = {*IDENTITY_COLUMNS, *PROVENANCE_COLUMNS, *PACKING_COLUMNS}


@dataclass
class Sweep:
    """The tables of one sweep as DataFrames; `skipped` names record files that could not
    be read, `ignored` consolidated files that were not used (their records were read),
    both including the long tables once they have been read."""

    path: str
    spec: dict[str, Any]
    trials: pd.DataFrame
    pairs: pd.DataFrame
    measures: pd.DataFrame  # one row per model and metric (also joined onto `trials`)
    failures: pd.DataFrame  # one row per failed attempt of a job (see `analysis.status`)
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # consolidated tables not used, and why
    long: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)  # LONG_TABLES read so far
    lens: Lens | None = None  # the records of the spec read; None: every record of the folder
    others: str = ""  # one line on the models of other specs left out ("" if none)

    @property
    def history(self) -> pd.DataFrame:
        return self._long(HISTORY)

    @property
    def curves(self) -> pd.DataFrame:
        return self._long(CURVES)

    def _long(self, table: str) -> pd.DataFrame:
        if table not in self.long:
            read = read_table(Storage.open(self.path), table)
            _report([read], self)
            self.long[table] = _through(self.lens, read)[0]
        return self.long[table]

    def axes(self) -> list[str]:
        """Grid axes other than seed: from spec.json, else the columns that vary."""
        values = self.spec.get("values")
        if values is not None:  # the spec says; none but the seed is an answer too
            axes = [k.replace(".", "_") for k, v in values.items() if len(v) > 1 and k != "seed"]
            return [a for a in axes if a in self.trials.columns]
        varying = [c for c in self.trials.columns
                   if c not in NOT_CONFIG and c != "seed" and self.trials[c].map(repr).nunique() > 1]
        return [c for c in varying if not pd.api.types.is_float_dtype(self.trials[c])
                or c in ("lr", "weight_decay", "label_noise", "data_fraction")]


def status_counts(trials: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of `keys`: `models` (all rows), `ok` and `diverged` counts (vectorised:
    a per-group Python function costs seconds at ten thousand cells)."""
    flags = pd.DataFrame({"models": 1, "ok": trials["status"] == "ok",
                          "diverged": trials["status"] == "diverged"}, index=trials.index)
    return flags.groupby([trials[k] for k in keys], dropna=False).sum().astype(int)


def read_tables(storage: Storage, tables: tuple[str, ...]) -> dict[str, TableRead]:
    """Tables through their consolidated file plus the records it lacks (see
    `workers.tables`); their listings run at once, which hides an object store's round
    trips."""
    with ThreadPoolExecutor(len(tables)) as pool:
        return dict(zip(tables, pool.map(lambda table: read_table(storage, table), tables)))


def _report(reads: list[TableRead], sweep: Sweep) -> None:
    """Name unreadable record files and unused consolidated files on stderr and in `sweep`."""
    skipped = [relpath for read in reads for relpath in read.skipped]
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable file(s): {', '.join(skipped)}", file=sys.stderr)
    for read in reads:
        if read.ignored:
            print(f"warning: ignoring consolidated table {read.ignored}; reading its record files instead "
                  "(`python -m analysis compact` rebuilds it)", file=sys.stderr)
    sweep.skipped += skipped
    sweep.ignored += [read.ignored for read in reads if read.ignored]


def _join_measures(trials: pd.DataFrame, measures: pd.DataFrame) -> pd.DataFrame:
    """Put each model's metric scalars (`<metric>_<name>` columns) on its trials row."""
    if trials.empty or measures.empty:
        return trials
    scalar_cols = [c for c in measures.columns
                   if any(c.startswith(f"{m}_") for m in measures["metric"].unique())
                   and c not in trials.columns]
    per_trial = measures.groupby("trial_key")[scalar_cols].first().reset_index()
    return trials.merge(per_trial, on="trial_key", how="left")


def load_sweep(path: str, all_specs: bool = False) -> Sweep:
    """Load a sweep folder (local path or URI) written by `sweeps/*.py` or an importer:
    the records of its latest spec, or with `all_specs` every record it holds."""
    storage = Storage.open(path)
    spec = _read_spec(storage)
    lens = None if all_specs else read_lens(storage, spec)
    reads = read_tables(storage, tuple(t for t in TABLES if t not in LONG_TABLES))
    if not spec and not any(read.records or read.skipped for read in reads.values()):
        raise ConfigError("PATH", f"{storage.uri} is not a sweep folder (no spec.json, no record files)")
    frames = {table: _through(lens, read) for table, read in reads.items()}
    trials = _join_measures(frames[TRIALS][0], frames[MEASURES][0])
    sweep = Sweep(storage.uri, spec, trials, frames[PAIRS][0], frames[MEASURES][0], frames[FAILURES][0],
                  lens=lens, others=describe_others(frames[TRIALS][1], spec.get("values", {})))
    _report(list(reads.values()), sweep)
    if sweep.others:
        print(f"note: {sweep.others}", file=sys.stderr)
    return sweep


def _read_spec(storage: Storage) -> dict[str, Any]:
    """`spec.json` ({} for a folder without one, e.g. imported records)."""
    if not storage.exists("spec.json"):
        return {}
    try:
        spec = json.loads(storage.read_bytes("spec.json"))
    except ValueError as exc:
        raise ConfigError("PATH", f"{storage.path('spec.json')} is damaged ({exc}); rerunning the sweep's "
                                  "command writes it again") from None
    if not isinstance(spec, dict):
        raise ConfigError("PATH", f"{storage.path('spec.json')} is damaged (not a JSON object)")
    return spec


def _through(lens: Lens | None, read: TableRead) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of `read` that belong to the lens's spec, and the others."""
    frame = read.data.to_pandas()
    if lens is None or frame.empty:
        return frame, frame.iloc[0:0]
    keep = lens.mask(read.table, read.row_names())
    return frame[keep].reset_index(drop=True), frame[~keep].reset_index(drop=True)
