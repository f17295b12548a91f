"""The spec is the lens: which records of a sweep folder belong to the spec being read.

A sweep folder may hold records of several specs: extending a grid is a feature, and a
rerun with a changed option (more epochs, other Hessian settings) writes new records
beside the old ones. Pooling them would count one cell's two trainings as two seeds, or
pick one of two Hessian measures by file name. So each run of the driver writes, next to
`spec.json`, `specs/<spec_id>.json`: the spec and the record key of every model, metric
and pair its grid calls for (the folder keeps one file per spec ever run). Readers keep
the rows of those records and name the others of every table (models, measures, pairs)
in one line; `--all` reads every record, as folders written before spec ids did.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from workers.core.records import DONE_TABLES, FAILURES, MEASURES, PAIRS, TRIALS, owning_record
from workers.core.storage import Storage

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


def describe_others(lens: Lens | None, others: dict[str, pd.DataFrame], kept: dict[str, pd.DataFrame],
                    values: dict[str, list]) -> str:
    """One line on every record of another spec left out, table by table: models (how
    their config differs from the spec's values, e.g. "epochs 3 instead of 12"), measures
    (by metric and settings, e.g. "hessian.n_samples 32 instead of 256") and pairs. A
    reader that names only the models would drop a measure of the old Hessian settings on
    a model it shows without a word. `others` and `kept`: the rows of trials, measures
    and pairs outside and inside the lens; "" when nothing was left out."""
    if lens is None:
        return ""
    parts = []
    if not others[TRIALS].empty:
        parts.append(f"{len(others[TRIALS])} model(s) ({_config_differences(others[TRIALS], values)})")
    for table, noun in ((MEASURES, "measure(s)"), (PAIRS, "pair(s)")):
        if not others[table].empty:
            how = _derived_differences(table, others[table], kept[table], lens.done[TRIALS])
            parts.append(f"{len(others[table])} {noun} ({how})")
    if not parts:
        return ""
    return f"this folder also holds records of another spec: {', '.join(parts)}; `--all` to include them"


def _config_differences(models: pd.DataFrame, values: dict[str, list]) -> str:
    """How the config of `models` differs from the spec's values (first three keys)."""
    differences = []
    for key, allowed in values.items():
        column = key.replace(".", "_")
        if column not in models.columns:
            continue
        theirs = sorted({_text(v) for v in models[column]} - {_text(v) for v in allowed})
        if theirs:
            differences.append(f"{key} {', '.join(theirs)} instead of {', '.join(_text(v) for v in allowed)}")
    return "; ".join(differences[:3]) or "options outside the spec's values"


def _derived_differences(table: str, others: pd.DataFrame, kept: pd.DataFrame, models: frozenset[str]) -> str:
    """Why measures or pairs are another spec's: their models are not the spec's, or
    their settings differ from those of the spec's records of the same metric (pair
    kind), named by option (first three)."""
    ours = np.ones(len(others), dtype=bool)
    for column in ("trial_key",) if table == MEASURES else ("trial_key_a", "trial_key_b"):
        ours &= others[column].isin(models).to_numpy() if column in others else True
    reasons = [] if ours.all() else ["of models outside the spec"]
    for label, rows in others[ours].groupby(_group(table, others[ours]), sort=True):
        like = kept[_group(table, kept) == label] if not kept.empty else kept
        reasons += _settings_differences(label, rows, like) or [f"{label} with other settings"]
    return "; ".join(reasons[:3])


def _group(table: str, frame: pd.DataFrame) -> np.ndarray:
    """The group of each record, within which settings are compared: a measure's metric,
    a pair's kind (a similarity pair has fewer options than one with a curve)."""
    if table == MEASURES:
        return frame["metric"].fillna("").to_numpy()
    with_mc = frame["with_mc"].fillna(False).astype(bool) if "with_mc" in frame else np.zeros(len(frame), bool)
    return np.where(with_mc, "mc pairs", "sim pairs")


def _settings_differences(label: str, others: pd.DataFrame, kept: pd.DataFrame) -> list[str]:
    """Options (of the `settings` JSON) whose values in `others` the spec's records of
    the same group (`kept`) do not hold, e.g. "hessian.n_samples 32 instead of 256"."""
    if kept.empty or "settings" not in others or "settings" not in kept:
        return []
    theirs, ours = _options(others["settings"]), _options(kept["settings"])
    prefix = "pairs" if label.endswith("pairs") else label
    return [f"{prefix}.{key} {', '.join(sorted(theirs[key] - ours[key]))} instead of {', '.join(sorted(ours[key]))}"
            for key in sorted(theirs) if key in ours and theirs[key] - ours[key]]


def _options(settings: pd.Series) -> dict[str, set[str]]:
    """Each option of a column of `settings` JSON texts, with the values it takes."""
    options: dict[str, set[str]] = {}
    for text in settings.dropna().unique():
        try:
            parsed = json.loads(text)
        except ValueError:
            continue
        for key, value in parsed.items() if isinstance(parsed, dict) else ():
            options.setdefault(key, set()).add(_text(value))
    return options


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)
