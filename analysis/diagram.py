"""One phase diagram of a sweep: the cells of a view (some axes fixed, the rest pooled),
classified, with a refined sweep's untrained cells inferred from their neighbours.

The report's PNG and Markdown and the web page's every view come from `classify_view`,
so the page's diagrams are the report's, view for view; given the thresholds the page
shows (as `--threshold` overrides) it is also what the page's browser test holds the
page's live reclassification to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from analysis.load import Sweep
from analysis.phases import Thresholds, cell_metrics, classify, resolve_thresholds
from analysis.refine import refined_grid, with_inferred

# (column of the cell table, file stem, title) of each heatmap: the report's PNGs and the
# page's tabs.
HEATMAPS = (
    ("test_acc_mean", "test_accuracy", "test accuracy (mean over seeds)"),
    ("train_loss_mean", "train_loss", "training loss (mean over seeds)"),
    ("log_top_eigenvalue", "log_top_eigenvalue", "ln Hessian top eigenvalue (of the seed mean)"),
    ("log_trace", "log_trace", "ln Hessian trace (of the seed mean)"),
    ("mc_mean", "mode_connectivity", "mode connectivity mc (training error, points)"),
    ("cka_softmax_mean", "cka", "CKA of softmax outputs (mean over seed pairs)"),
    ("l2_distance_mean", "l2_distance", "L2 distance of parameters (mean over seed pairs)"),
)


@dataclass(frozen=True)
class ReportOptions:
    """What a report draws: the axes, the fixed values of the others, the thresholds."""

    x: str | None = None  # None: width if the sweep varies it, else its first axis
    y: str | None = None  # None: batch_size if varied, else its next axis
    fixed: dict[str, str] = field(default_factory=dict)
    thresholds: str = "paper"  # "paper" (calibrated defaults) or "auto"
    overrides: dict[str, str] = field(default_factory=dict)  # threshold name -> value
    all_specs: bool = False  # every record of the folder, not only the latest spec's (analysis.lens)


def classify_view(sweep: Sweep, x: str, y: str, fixed: dict[str, str], mode: str,
                  overrides: dict[str, str]) -> tuple[pd.DataFrame, Thresholds]:
    """The view's classified cells (with inferred ones) and the thresholds it was
    classified with (`mode` resolved on the view's own cells, as `--fix` does, then
    `overrides`)."""
    cells = cell_metrics(sweep, [x, y], fixed)
    thresholds = resolve_thresholds(cells, mode, overrides)
    classified = classify(cells, thresholds)
    grid = refined_grid(sweep.spec, x, y)  # a refined sweep's untrained cells: from their neighbours
    return (with_inferred(grid, classified, thresholds) if grid else classified.assign(inferred=False)), thresholds
