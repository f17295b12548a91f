"""Read a sweep's Parquet tables into pandas, skipping (and naming) damaged files.

Each table is a folder of small Parquet files, one per trial (see `workers.records`),
plus, once compacted, one consolidated file holding most of them (`workers.tables`):
it is read with only the record files it does not hold, so each row comes once.
Metric rows (`measures`) are joined onto `trials`, so one DataFrame holds a model's
config, outcome and landscape scalars. The long tables (`history`, `curves`: a row per
epoch or curve point, each with the full config) are read on first use: at 10,000
models they hold 340,000 rows whose decoding alone costs seconds, and summaries, phases
and `status` never touch them. A file that cannot be read is reported and left out
instead of failing the whole analysis.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

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
            self.long[table] = read.data.to_pandas()
        return self.long[table]

    def axes(self) -> list[str]:
        """Grid axes other than seed: from spec.json, else the columns that vary."""
        values = self.spec.get("values", {})
        axes = [k.replace(".", "_") for k, v in values.items() if len(v) > 1 and k != "seed"]
        if axes:
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


def load_sweep(path: str) -> Sweep:
    """Load a sweep folder (local path or URI) written by `sweeps/*.py` or an importer."""
    storage = Storage.open(path)
    spec: dict[str, Any] = {}
    if storage.exists("spec.json"):
        spec = json.loads(storage.read_bytes("spec.json"))
    reads = read_tables(storage, tuple(t for t in TABLES if t not in LONG_TABLES))
    frames = {table: read.data.to_pandas() for table, read in reads.items()}
    trials = _join_measures(frames[TRIALS], frames[MEASURES])
    sweep = Sweep(storage.uri, spec, trials, frames[PAIRS], frames[MEASURES], frames[FAILURES])
    _report(list(reads.values()), sweep)
    return sweep
