"""The spec is the lens: which records of a sweep folder belong to the spec being read.

A sweep folder may hold records of several specs: extending a grid is a feature, and a
rerun with a changed option (more epochs, other Hessian settings) writes new records
beside the old ones. Pooling them would count one cell's two trainings as two seeds, or
pick one of two Hessian measures by file name. So each run of the driver writes, next to
`spec.json`, `specs/<spec_id>.json`: the spec and the record key of every model, metric
and pair its grid calls for (the folder keeps one file per spec ever run). Readers keep
the rows of those records and count the others, named in one line; `--all` reads every
record, as folders written before spec ids did.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from workers.records import DONE_TABLES, FAILURES, PAIRS, TRIALS, owning_record
from workers.storage import Storage

SPECS = "specs"  # the folder of `<spec_id>.json` files


def spec_path(spec_id: str) -> str:
    return f"{SPECS}/{spec_id}.json"


@dataclass(frozen=True)
class Lens:
    spec_id: str
    done: dict[str, frozenset[str]]  # trials / measures / pairs -> the spec's record names

    def mask(self, table: str, names: Iterable[str]) -> np.ndarray:
        """Which records of `table` (by name, one per row) belong to the spec."""
        return np.fromiter((self.owns(table, name) for name in names), dtype=bool)

    def owns(self, table: str, name: str) -> bool:
        if table in self.done:
            return name in self.done[table]
        if table == FAILURES:  # `<record key>.<time_ns>`: a model's or a pair's failure
            key = name.rpartition(".")[0]
            return key in self.done[TRIALS] or key in self.done[PAIRS]
        owner = owning_record(table, name)
        return owner is not None and owner[1] in self.done[owner[0]]


def read_lens(storage: Storage, spec: dict[str, Any]) -> Lens | None:
    """The lens of `spec` (the latest `spec.json`); None for a folder written before spec
    ids, or when the spec's key file is missing or damaged (named: its records are then
    read unfiltered, as with `--all`)."""
    spec_id = spec.get("spec_id")
    if not spec_id:
        return None
    try:
        body = json.loads(storage.read_bytes(spec_path(spec_id)))
        return Lens(spec_id, {table: frozenset(body["records"][table]) for table in DONE_TABLES})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"warning: {storage.path(spec_path(spec_id))} cannot be read ({exc}); reading every record of "
              "the folder, whatever spec wrote it", file=sys.stderr)
        return None


def describe_others(others: pd.DataFrame, values: dict[str, list]) -> str:
    """One line on the models of other specs: how many, and how their config differs
    from the spec's values (e.g. "epochs 3 instead of 12")."""
    if others.empty:
        return ""
    differences = []
    for key, allowed in values.items():
        column = key.replace(".", "_")
        if column not in others.columns:
            continue
        theirs = sorted({_text(v) for v in others[column]} - {_text(v) for v in allowed})
        if theirs:
            differences.append(f"{key} {', '.join(theirs)} instead of {', '.join(_text(v) for v in allowed)}")
    how = "; ".join(differences[:3]) or "options outside the spec's values"
    return (f"this folder also holds {len(others)} model(s) of another spec: {how}; "
            "`--all` to include them")


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)
