"""Adaptive phase diagrams on the published grid: models used and cells agreeing.

    python bench/refine.py [--quick]

Imports the published metrics of Yang et al. 2021 (tests/data/yang2021_results.tar.gz:
14 widths x 15 batch sizes x 5 seeds, 210 cells, 1,050 models) and replays `--refine`
on them (`analysis.replay`): where a sweep would train a cell, the cell is answered with
its published models and seed pairs. The refined diagram (trained cells classified,
the others inferred from their neighbours) is compared cell by cell with the full
grid's, with the same thresholds (paper). Target: >= 95% of the cells agree using <= 50%
of the models, with the default settings (budget=0.5, stride=2). Also: other budgets
and a coarser first round, and auto thresholds (each diagram its own). Offline, no Ray,
no torch; `--quick` skips the other settings. The last line reads
`refine: <A>% of cells agree using <U>% of the models`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

ARCHIVE = Path(__file__).resolve().parent.parent / "tests" / "data" / "yang2021_results.tar.gz"
AGREE_TARGET, MODELS_TARGET = 0.95, 0.50
DEFAULT = ""  # --refine's defaults: budget=0.5, stride=2
DEFAULT_KEY = "default (budget=0.5,stride=2), paper thresholds"
OTHERS = ("budget=0.4", "budget=0.6", "budget=1", "stride=4", "stride=4,budget=1")


def measure(source: str, out: str, refine: str, thresholds: str) -> dict[str, Any]:
    """Replay one setting; its cells, models, rounds, agreement and wall time."""
    from analysis import load_sweep
    from analysis.refine import RefineSettings
    from analysis.replay import agreement, full_grid_phases, refined_phases, replay

    start = time.perf_counter()
    result = replay(source, out, RefineSettings.parse(refine), thresholds)
    seconds = time.perf_counter() - start
    refined = refined_phases(result, thresholds)
    share, differ = agreement(full_grid_phases(load_sweep(source), result.grid, thresholds), refined, result.grid)
    return {
        "cells": f"{result.cells} of {len(result.grid.cells)}",
        "rounds": " + ".join(map(str, result.rounds)),
        "models_used_pct": round(100 * result.models / result.total_models, 1),
        "agree_pct": round(100 * share, 1),
        "differ": ", ".join(f"w{w}/b{b}" for w, b in differ) or "none",
        "replay_s": round(seconds, 1),
    }


def run(quick: bool = False) -> dict[str, Any]:
    from analysis.yang2021 import import_archive

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = str(Path(tmp) / "published")
        import_archive(str(ARCHIVE), source)
        default = measure(source, str(Path(tmp) / "default"), DEFAULT, "paper")
        figures[DEFAULT_KEY] = default
        for i, refine in enumerate(() if quick else OTHERS):
            figures[f"{refine}, paper thresholds"] = measure(source, str(Path(tmp) / f"other{i}"), refine, "paper")
        if not quick:
            figures["default, auto thresholds (each diagram its own)"] = measure(
                source, str(Path(tmp) / "auto"), DEFAULT, "auto")
    figures["target_met"] = (default["agree_pct"] >= 100 * AGREE_TARGET
                             and default["models_used_pct"] <= 100 * MODELS_TARGET)
    return figures


def summary(figures: dict[str, Any]) -> str:
    default = figures[DEFAULT_KEY]
    return f"refine: {default['agree_pct']:g}% of cells agree using {default['models_used_pct']:g}% of the models"


if __name__ == "__main__":
    from bench import main

    print(summary(main(run, __doc__)))
