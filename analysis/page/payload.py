"""What a click on a cell shows: its models and seed pairs, and their curves, packed for
the page.

Every model's and pair's scalars go into the page's data (about ten numbers each). The
curves (training history per epoch, interpolation paths, Bezier curves) are the bulk of
a sweep (at 10,000 models, nine tenths of the page), so they are packed per grid cell
(`cell_key`) into JSON blocks that the browser parses only when one of that cell's
models is shown: the page's load time is that of the diagram, not of every curve (see
`bench/report_page.py`). Numbers are rounded to four significant digits (a curve drawn
a few hundred pixels high shows no fifth), and a history longer than `HISTORY_POINTS`
epochs is sampled evenly, its first and last epochs kept; the panel says so.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd

from analysis.page.views import Selector, numbers
from analysis.phases import unique_pairs

HISTORY_POINTS = 100  # the paper trains 100 epochs: its histories are drawn whole
MODEL_NUMBERS = ("train_loss", "train_acc", "test_loss", "test_acc", "hessian_top_eigenvalue", "hessian_trace")
PAIR_NUMBERS = ("mc", "cka_softmax", "l2_distance")
INTERPOLATION_KINDS = ("interp_full", "interp_group", "interp_group_mirror")  # workers.metrics.paths
BEZIER = "bezier"  # the pair metric's curve kind (workers.pair_metrics.bezier, analysis.yang2021)


def rounded(values: Any) -> list[float | None]:
    """Four significant digits; NaN as null."""
    return [float(f"{v:.4g}") if math.isfinite(v) else None for v in np.asarray(values, dtype=float).tolist()]


def _positions(column: pd.Series, values: list) -> list[int]:
    """Index of each entry of `column` in `values` (-1 where it has none)."""
    return pd.Index(values).get_indexer(column).tolist()


def _placed(frame: pd.DataFrame, x: str, y: str, xs: list, ys: list, axes: list[Selector],
            blob_of: dict[str, int]) -> dict[str, list]:
    """Where each row sits: diagram indices, a value index per selector, its curve block."""
    out = {"xi": _positions(_column(frame, x), xs), "yi": _positions(_column(frame, y), ys),
           "sel": [_positions(_column(frame, s.axis), s.values) for s in axes],
           "blob": [blob_of.get(key, -1) for key in _texts(frame, "cell_key")]}
    return out


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A column, or NaN where the table has none (no pairs at all: no columns either)."""
    return frame[name] if name in frame else pd.Series(np.nan, index=frame.index)


def models_json(trials: pd.DataFrame, x: str, y: str, xs: list, ys: list, axes: list[Selector],
                blob_of: dict[str, int]) -> dict[str, list]:
    out = _placed(trials, x, y, xs, ys, axes, blob_of)
    out["seed"] = trials["seed"].astype(int).tolist() if "seed" in trials else [0] * len(trials)
    out["status"] = trials["status"].fillna("").astype(str).tolist()
    for column in MODEL_NUMBERS:
        out[column] = numbers(trials[column] if column in trials else None, len(trials))
    return out


def pairs_json(pairs: pd.DataFrame, x: str, y: str, xs: list, ys: list, axes: list[Selector],
               blob_of: dict[str, int]) -> dict[str, list]:
    out = _placed(pairs, x, y, xs, ys, axes, blob_of)
    out["seed_a"], out["seed_b"] = (_column(pairs, side).astype(int).tolist() for side in ("seed_a", "seed_b"))
    out["status"] = _texts(pairs, "status").tolist()
    for column in PAIR_NUMBERS:
        out[column] = numbers(pairs[column] if column in pairs else None, len(pairs))
    return out


def shown_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per seed pair of a cell, the one the classifier counts (`unique_pairs`)."""
    return unique_pairs(pairs).reset_index(drop=True) if not pairs.empty else pairs


def _sampled(n: int) -> np.ndarray:
    """Row positions of a history of `n` epochs, at most HISTORY_POINTS, ends kept."""
    return np.arange(n) if n <= HISTORY_POINTS else np.unique(np.linspace(0, n - 1, HISTORY_POINTS).round().astype(int))


def _texts(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].fillna("").astype(str) if column in frame else pd.Series("", index=frame.index)


def curve_blocks(history: pd.DataFrame, curves: pd.DataFrame, trials: pd.DataFrame,
                 pairs: pd.DataFrame) -> tuple[list[str], dict[str, int]]:
    """The curves of each cell as one JSON text, and the block number of each cell_key.

    A block is {"h": {model: [epochs, train loss, train acc]}, "i": {model: [[kind, group,
    split, t, loss], ...]}, "b": {pair: [[split, t, loss, err], ...]}}, with models and
    pairs numbered as in `models_json` and `pairs_json`.
    """
    model_of = {key: i for i, key in enumerate(trials["trial_key"])}
    pair_of = {key: i for i, key in enumerate(_texts(pairs, "pair_key")) if key}
    cell_of_model = dict(zip(trials["trial_key"], trials["cell_key"]))
    cell_of_pair = dict(zip(_texts(pairs, "pair_key"), pairs["cell_key"] if "cell_key" in pairs else []))
    blocks: dict[str, dict[str, dict]] = defaultdict(lambda: {"h": {}, "i": {}, "b": {}})
    if not history.empty:
        rows = history[history["trial_key"].isin(model_of)].sort_values(["trial_key", "epoch"], kind="stable")
        for key, part in rows.groupby("trial_key", sort=False):
            keep = _sampled(len(part))
            blocks[cell_of_model[key]]["h"][model_of[key]] = [
                part["epoch"].to_numpy()[keep].astype(int).tolist(), rounded(part["train_loss"].to_numpy()[keep]),
                rounded(part["train_acc"].to_numpy()[keep]) if "train_acc" in part else []]
    if not curves.empty:
        kinds = _texts(curves, "kind")
        interp = curves[kinds.isin(INTERPOLATION_KINDS) & _texts(curves, "trial_key").isin(model_of)]
        for (key, kind, group, split), part in interp.groupby(
                [_texts(interp, column) for column in ("trial_key", "kind", "group", "split")], sort=True):
            part = part.sort_values("t", kind="stable")
            blocks[cell_of_model[key]]["i"].setdefault(model_of[key], []).append(
                [kind, group, split, rounded(part["t"]), rounded(part["loss"])])
        bezier = curves[(kinds == BEZIER) & _texts(curves, "pair_key").isin(pair_of)]
        for (key, split), part in bezier.groupby([_texts(bezier, "pair_key"), _texts(bezier, "split")], sort=True):
            part = part.sort_values("t", kind="stable")
            err = part["err"] if "err" in part else 100.0 * (1.0 - part["acc"]) if "acc" in part else part["t"] * np.nan
            blocks[cell_of_pair[key]]["b"].setdefault(pair_of[key], []).append(
                [split, rounded(part["t"]), rounded(part["loss"]), rounded(err)])
    order = sorted(blocks)
    texts = [json.dumps(blocks[cell], separators=(",", ":"), allow_nan=False) for cell in order]
    return texts, {cell: i for i, cell in enumerate(order)}
