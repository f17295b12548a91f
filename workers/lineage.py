"""Stale records: those derived from weights a model no longer has.

A measure, a seed pair and their curves name the weights they were computed from
(`workers.records`, lineage). When a model is trained again (its trials record was
damaged, its final checkpoint lost), its new weights differ, and so does its
`weights_id`: everything computed from the old weights no longer describes the model
its keys name. `quarantine_stale` moves such records to `_quarantine/` before a run
plans, so the run recomputes them exactly as if they had never been written; it is
also what makes a measure whose model has no trials record at all (the record was
damaged and set aside) wait for the model's new weights. Readers leave stale records
out the same way (`analysis.load`). Imports neither torch nor Ray.
"""

from __future__ import annotations

import pyarrow as pa

from workers.records import (
    CURVES,
    MEASURES,
    PAIR_WEIGHTS_IDS,
    PAIRS,
    TRIALS,
    WEIGHTS_ID,
    is_current,
    record_path,
)
from workers.storage import Storage
from workers.tables import TableRead, read_table


def _column(table: pa.Table, name: str) -> list[str]:
    """A text column as a list, "" where the record predates it (null or absent)."""
    if name not in table.column_names:
        return [""] * table.num_rows
    return table.column(name).cast(pa.string()).fill_null("").to_pylist()


def model_weights(trials: pa.Table) -> dict[str, str]:
    """Trial key -> the `weights_id` of its trials row ("" for a row written before
    lineage), over every trials row of the folder: a model's current weights do not
    depend on which spec is read."""
    return dict(zip(_column(trials, "trial_key"), _column(trials, WEIGHTS_ID)))


def stale_names(read: TableRead, models: dict[str, str]) -> list[str]:
    """Names of the stale records of the measures or pairs table as read: a measure not
    computed from its model's current weights, a pair not from both models' (a model
    with no trials row has no current weights)."""
    if not read.records:
        return []
    names, data = read.row_names(), read.data
    if read.table == MEASURES:
        lineage = [zip(_column(data, "trial_key"), _column(data, WEIGHTS_ID))]
    else:
        lineage = [zip(_column(data, f"trial_key_{side}"), _column(data, column))
                   for side, column in zip("ab", PAIR_WEIGHTS_IDS)]
    return sorted({name for name, *models_of_row in zip(names, *lineage)
                   if not all(is_current(models, key, weights) for key, weights in models_of_row)})


def quarantine_stale(storage: Storage) -> list[str]:
    """Move every stale measure and pair, with its curves, to `_quarantine/`; one line
    per record moved, naming it and why."""
    trials, measures, pairs = (read_table(storage, t) for t in (TRIALS, MEASURES, PAIRS))
    models = model_weights(trials.data)
    stale = [(read.table, name) for read in (measures, pairs) for name in stale_names(read, models)]
    if not stale:
        return []
    curves = storage.list_names(CURVES, ".parquet")
    lines = []
    for table, name in stale:
        storage.quarantine(record_path(table, name))
        for curve in (c for c in curves if c == name or c.startswith(name + ".")):
            storage.quarantine(record_path(CURVES, curve))
        lines.append(f"warning: {record_path(table, name)} was computed from weights its model no longer has "
                     "(trained again since); moved to _quarantine/, will be recomputed")
    return lines
