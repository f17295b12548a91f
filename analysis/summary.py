"""One row per grid cell: the axes, number of seeds, and mean ± std of the outcomes."""

from __future__ import annotations

import pandas as pd

from analysis.load import Sweep, status_counts

OUTCOMES = ("train_loss", "train_acc", "test_acc")


def cell_table(sweep: Sweep, metrics: tuple[str, ...] = OUTCOMES) -> pd.DataFrame:
    """Aggregate models over seeds: `<metric>_mean`, `<metric>_std`, `seeds`, `diverged`."""
    trials = sweep.trials
    if trials.empty:
        return pd.DataFrame()
    axes = sweep.axes()
    ok = trials["status"] == "ok"
    keys = axes or ["cell_key"]
    table = status_counts(trials, keys)[["models", "diverged"]].rename(columns={"models": "seeds"})
    present = [m for m in metrics if m in trials.columns]
    stats = trials[ok].groupby(keys, dropna=False)[present].agg(["mean", "std"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    return table.join(stats).reset_index()


def format_cells(table: pd.DataFrame, metrics: tuple[str, ...] = OUTCOMES) -> str:
    """The cell table as aligned text with `mean ± std` columns."""
    if table.empty:
        return "no trials recorded yet"
    shown = table[[c for c in table.columns if not c.endswith(("_mean", "_std"))]].copy()
    for m in metrics:
        if f"{m}_mean" in table:
            shown[m] = [f"{mu:.4f} ± {sd:.4f}" if pd.notna(sd) else f"{mu:.4f}"
                        for mu, sd in zip(table[f"{m}_mean"], table[f"{m}_std"])]
    return shown.to_string(index=False)
