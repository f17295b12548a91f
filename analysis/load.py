"""Read a sweep's Parquet tables into pandas, skipping (and naming) damaged files.

Each table is a folder of small Parquet files, one per trial (see `workers.core.records`),
plus, once compacted, one consolidated file holding most of them (`workers.core.tables`):
it is read with only the record files it does not hold, so each row comes once.
Metric rows (`measures`) are joined onto `trials`, so one DataFrame holds a model's
config, outcome and landscape scalars. The long tables (`history`, `curves`: a row per
epoch or curve point, each with the full config) are read on first use: at 10,000
models they hold 340,000 rows whose decoding alone costs seconds, and summaries, phases
and `status` never touch them. A file that cannot be read is reported and left out
instead of failing the whole analysis. Only the records of the folder's latest spec are
read unless asked for all of them (`analysis.lens`). A derived record (measure, pair,
curve) is read only while it describes the weights its model's trials row records
(lineage, `workers.core.records.is_current`): one computed from weights trained again since
is named and left out, with or without `--all`, so a model's loss, Hessian and mode
connectivity never describe two different networks.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.lens import Lens, describe_others, read_lens
from workers.core.errors import ConfigError
from workers.core.lineage import model_weights
from workers.core.records import (
    CURVES,
    FAILURES,
    HISTORY,
    IDENTITY_COLUMNS,
    LINEAGE_COLUMNS,
    LONG_TABLES,
    MEASURES,
    PACKING_COLUMNS,
    PAIR_WEIGHTS_IDS,
    PAIRS,
    PROVENANCE_COLUMNS,
    TABLES,
    TRIALS,
    WEIGHTS_ID,
)
from workers.core.storage import Storage
from workers.core.tables import TableRead, read_table

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
    others: str = ""  # one line on the records of other specs left out ("" if none)
    stale: str = ""  # one line on the derived records left out as not current ("" if none)
    conflicts: str = ""  # one line on metrics measured twice on a model, NaN in `trials` ("" if none)
    left_out: dict[str, int] = field(default_factory=dict)  # table -> records not current, left out
    weights: dict[str, str] = field(default_factory=dict, repr=False)  # trial key -> weights_id of its row

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
            kept, _, names = _through(self.lens, read)
            self.long[table] = self.leave_out_stale({table: (kept, names)})[table] if table == CURVES else kept
        return self.long[table]

    def leave_out_stale(self, frames: dict[str, tuple[pd.DataFrame, np.ndarray]]) -> dict[str, pd.DataFrame]:
        """Derived tables (rows and their record names) without the rows that are not
        current (`current_rows`, against `weights` and, for curves, `pairs`); counts the
        records left out in `left_out`, names them in `stale` and in one line on stderr."""
        current, dropped = {}, {}
        for table, (frame, names) in frames.items():
            keep = current_rows(table, frame, self.weights, self.pairs if table == CURVES else None)
            current[table] = frame[keep].reset_index(drop=True)
            dropped[table] = len(set(names[~keep]))
            self.left_out[table] = self.left_out.get(table, 0) + dropped[table]
        if any(dropped.values()):
            print(f"note: {describe_stale(dropped)}", file=sys.stderr)
            self.stale = describe_stale(self.left_out)
        return current

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
    `workers.core.tables`); their listings run at once, which hides an object store's round
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


def current_rows(table: str, frame: pd.DataFrame, weights: dict[str, str],
                 pairs: pd.DataFrame | None = None) -> np.ndarray:
    """Which rows of a derived table (measures, pairs, curves) describe their model(s)
    as recorded now: `workers.core.records.is_current`, vectorised (a curves table holds
    hundreds of thousands of rows), for every model a row names. A row of a pair (a
    pairs row, or a curve with a `pair_key`) names `trial_key_a` and `trial_key_b` with
    `weights_id_a` and `weights_id_b`, any other row `trial_key` with `weights_id`. A
    pair curve without its models' keys (the published archive's import) takes them
    from its row in `pairs`. A model without a trials row has no current weights, so
    nothing derived from it is current; a row that names no model at all (a table built
    by hand or by another tool) has no lineage to check and stays."""
    of_pair = np.full(len(frame), table == PAIRS) | (_texts(frame, "pair_key") != "").to_numpy()
    keep = np.ones(len(frame), dtype=bool)
    for side, weights_column, rows in (("", WEIGHTS_ID, ~of_pair),
                                       ("_a", PAIR_WEIGHTS_IDS[0], of_pair), ("_b", PAIR_WEIGHTS_IDS[1], of_pair)):
        if not rows.any():
            continue
        models = _texts(frame, f"trial_key{side}").to_numpy(dtype=object, copy=True)
        unnamed = rows & (models == "")
        if side and unnamed.any() and pairs is not None and {"pair_key", f"trial_key{side}"} <= set(frame) & set(pairs):
            named = dict(zip(pairs["pair_key"], pairs[f"trial_key{side}"]))
            models[unnamed] = [named.get(key, "") for key in frame["pair_key"].to_numpy()[unnamed]]
        models = pd.Series(models, index=frame.index)
        current = models.map(weights).eq(_texts(frame, weights_column)).to_numpy()
        keep &= ~rows | (models == "").to_numpy() | current
    return keep


def _texts(frame: pd.DataFrame, column: str) -> pd.Series:
    """A text column with "" for a missing value, or all "" where there is no such column."""
    if column not in frame:
        return pd.Series("", index=frame.index, dtype=object)
    return frame[column].fillna("")


_NOUNS = {MEASURES: "measure", PAIRS: "pair", CURVES: "curve"}


def describe_stale(left_out: dict[str, int]) -> str:
    """One line on the derived records left out as not current ("" if none), e.g. "left
    out 2 measures and 1 pair computed from weights that no longer exist (...)"."""
    parts = [f"{n} {_NOUNS[table]}{'' if n == 1 else 's'}" for table, n in left_out.items() if n]
    if not parts:
        return ""
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return (f"left out {listed} computed from weights that no longer exist (their model was trained again "
            "since, or has no trials record); the next run of the sweep recomputes them")


def _join_measures(trials: pd.DataFrame, measures: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Put each model's metric scalars (`<metric>_<name>` columns) on its trials row.

    A model with two or more measures of one metric (under other settings: read with
    `--all`, or a folder written before spec ids; a spec names one measure per metric
    and model) gets NaN in that metric's columns, and the returned line names how many
    models per metric ("" if none): taking one of them would show a number measured
    under settings nobody chose, with nothing to say so. `measures` keeps every row with
    its `settings`; the metric's columns of the other models, and other metrics, stay.
    """
    if trials.empty or measures.empty:
        return trials, ""
    metrics = sorted(measures["metric"].dropna().unique(), key=len, reverse=True)  # the longest prefix owns
    owner = {c: next((m for m in metrics if c.startswith(f"{m}_")), None)
             for c in measures.columns if c not in trials.columns}
    joined, conflicts = trials, []
    for metric, rows in measures.groupby("metric", sort=True):
        columns = [c for c, m in owner.items() if m == metric]
        twice = rows["trial_key"].duplicated(keep=False)
        if twice.any():
            conflicts.append(f"{metric} on {rows.loc[twice, 'trial_key'].nunique()} model(s)")
        if columns:
            joined = joined.merge(rows.loc[~twice, ["trial_key", *columns]], on="trial_key", how="left")
    if not conflicts:
        return joined, ""
    return joined, (f"measured under more than one setting: {', '.join(conflicts)}; their columns of that "
                    "metric in `trials` are NaN rather than one value picked (`measures` holds every row, "
                    "with its `settings`)")


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
    derived = (TRIALS, MEASURES, PAIRS)
    others = describe_others(lens, {t: frames[t][1] for t in derived}, {t: frames[t][0] for t in derived},
                             spec.get("values", {}))
    sweep = Sweep(storage.uri, spec, frames[TRIALS][0], frames[PAIRS][0], frames[MEASURES][0], frames[FAILURES][0],
                  lens=lens, others=others, weights=model_weights(reads[TRIALS].data))
    _report(list(reads.values()), sweep)
    if sweep.others:
        print(f"note: {sweep.others}", file=sys.stderr)
    current = sweep.leave_out_stale({table: (frames[table][0], frames[table][2]) for table in (MEASURES, PAIRS)})
    sweep.measures, sweep.pairs = current[MEASURES], current[PAIRS]
    sweep.trials, sweep.conflicts = _join_measures(sweep.trials, sweep.measures)
    if sweep.conflicts:
        print(f"warning: {sweep.conflicts}", file=sys.stderr)
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


def _through(lens: Lens | None, read: TableRead) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """The rows of `read` that belong to the lens's spec, the others, and the record
    name of each row kept. Lineage columns are text: "" where a record written before
    lineage lacks them (pyarrow's permissive concatenation makes those null)."""
    frame = read.data.to_pandas()
    for column in LINEAGE_COLUMNS:
        if column in frame:
            frame[column] = frame[column].fillna("")
    names = read.row_names()
    if lens is None or frame.empty:
        return frame, frame.iloc[0:0], names
    keep = lens.mask(read.table, names)
    return frame[keep].reset_index(drop=True), frame[~keep].reset_index(drop=True), names[keep]
