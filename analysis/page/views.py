"""The diagrams a page holds: one per choice of the other axes' selectors.

An axis that is neither drawn nor fixed with `--fix` gets a selector on the page: each
of its values (that slice, as `--fix axis=value` gives it) or "pooled" (its models
averaged together per cell, as the report does by default). Every combination is
classified here with `analysis.diagram.classify_view`, the report's own path, so each
view is the diagram the report would draw with those `--fix` values; the page only
reclassifies when its thresholds move. A refined sweep's inferred cells carry what the
vote of `analysis.refine.infer` needs to run again in the browser (their ring, its
weights, and the ring's metrics interpolated at the cell), because the ring depends on
which cells were trained, never on the thresholds.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.diagram import classify_view
from analysis.load import Sweep
from analysis.phases import THRESHOLD_NAMES, Thresholds
from analysis.refine import (
    Grid,
    KnownCells,
    cell_of,
    finished_shares,
    interpolate,
    refined_grid,
    ring_weights,
    weighted_mean,
)
from workers.core.errors import ConfigError

POOLED = -1  # a selector's index for "pooled"
# Columns of a view's cells the page reads: the classifier's inputs (the same names as
# `analysis.phases._classify_row` reads), what the hover shows, the heatmaps, the result.
CELL_NUMBERS = (
    "models", "ok", "diverged", "pairs", "mc_pairs", "log_top_eigenvalue", "log_top_eigenvalue_std",
    "log_train_loss", "log_train_loss_std", "train_err_std", "mc_mean", "mc_std", "cka_softmax_mean",
    "cka_softmax_std", "hessian_top_eigenvalue_mean", "hessian_top_eigenvalue_std", "log_trace", "log_trace_std",
    "test_acc_mean", "test_acc_std", "train_loss_mean", "train_loss_std", "l2_distance_mean", "l2_distance_std",
    "confidence",
)
CELL_TEXTS = ("phase", "note")
CELL_FLAGS = ("uncertain", "inferred")


@dataclass(frozen=True)
class Selector:
    """An axis the page lets one slice or pool: its values in order, as record values."""

    axis: str
    values: list[Any]

    def labels(self) -> list[str]:
        return [label(v) for v in self.values]


def label(value: Any) -> str:
    """A value as the page and `--fix` write it (`0.1`, `128`, `sgd`, `True`)."""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}" if float(value) == float(f"{float(value):g}") else repr(float(value))
    return str(value.item() if isinstance(value, np.generic) else value)


def selectors(sweep: Sweep, trials: pd.DataFrame, x: str, y: str, fixed: dict[str, str]) -> list[Selector]:
    """One selector per axis of the sweep that is neither drawn nor fixed, with the
    values of `trials` (the models `--fix` keeps)."""
    return [Selector(axis, sorted(trials[axis].dropna().unique().tolist()))
            for axis in sweep.axes() if axis not in (x, y, *fixed)]


def numbers(column: pd.Series | None, rows: int) -> list[float | None]:
    """Floats for JSON: NaN (and a missing column) as null."""
    if column is None:
        return [None] * rows
    return [None if not math.isfinite(v) else float(v) for v in column.astype(float)]


def _cells_json(cells: pd.DataFrame, x: str, y: str, xs: list, ys: list) -> dict[str, list]:
    """A view's cells column by column (a row per cell; axes as indices into xs, ys)."""
    out: dict[str, list] = {"xi": [xs.index(v) for v in cells[x].tolist()], "yi": [ys.index(v) for v in cells[y].tolist()]}
    for column in CELL_NUMBERS:
        out[column] = numbers(cells[column] if column in cells else None, len(cells))
    for column in CELL_TEXTS:
        out[column] = cells[column].fillna("").astype(str).tolist() if column in cells else [""] * len(cells)
    for column in CELL_FLAGS:
        out[column] = cells[column].fillna(False).astype(bool).tolist() if column in cells else [False] * len(cells)
    return out


def _inference(grid: Grid, classified: pd.DataFrame) -> list[dict[str, Any] | None]:
    """Per row of `classified`: None for a trained cell; for an inferred one its ring (row
    numbers of trained cells, in `infer`'s order), their weights, the ring's metrics
    interpolated at the cell and its interpolated share of models that finished."""
    trained = classified[~classified["inferred"].astype(bool)]
    known = KnownCells(grid, trained)
    row_of = {grid.index(cell_of(row, grid)): i for i, (_, row) in enumerate(classified.iterrows())
              if not row["inferred"]}
    out: list[dict[str, Any] | None] = []
    for _, row in classified.iterrows():
        if not row["inferred"]:
            out.append(None)
            continue
        at = grid.index(cell_of(row, grid))
        _, ring = known.ring(at)
        rows, weights = [known.rows[p] for p in ring], ring_weights(at, ring)
        estimate = interpolate(at, rows, ring)
        out.append({"ring": [row_of[p] for p in ring], "weights": weights.tolist(),
                    "estimate": {k: (v if math.isfinite(v) else None) for k, v in estimate.items()},
                    "finished": _finished_share(rows, weights)})
    return out


def _finished_share(rows: list[pd.Series], weights: np.ndarray) -> float | None:
    share = weighted_mean(finished_shares(rows), weights)
    return share if math.isfinite(share) else None


def thresholds_json(thresholds: Thresholds) -> dict[str, Any]:
    return {"values": {n: getattr(thresholds, n) for n in THRESHOLD_NAMES},
            "sources": {n: thresholds.describe(n) for n in THRESHOLD_NAMES}}


def views(sweep: Sweep, x: str, y: str, fixed: dict[str, str], mode: str, overrides: dict[str, str],
          xs: list, ys: list, axes: list[Selector]) -> list[dict[str, Any]]:
    """Every combination of the selectors (each a value index or POOLED), classified."""
    grid = refined_grid(sweep.spec, x, y)
    out = []
    for choice in itertools.product(*[[POOLED, *range(len(s.values))] for s in axes]):
        chosen = {s.axis: label(s.values[i]) for s, i in zip(axes, choice) if i != POOLED}
        try:
            classified, thresholds = classify_view(sweep, x, y, {**fixed, **chosen}, mode, overrides)
        except ConfigError as exc:  # a combination no model was trained with (a partial grid)
            out.append({"choice": list(choice), "fix": chosen, "empty": str(exc)})
            continue
        view = {"choice": list(choice), "fix": chosen, "cells": _cells_json(classified, x, y, xs, ys),
                "thresholds": thresholds_json(thresholds)}
        if grid is not None:
            view["infer"] = _inference(grid, classified)
        out.append(view)
    return out
