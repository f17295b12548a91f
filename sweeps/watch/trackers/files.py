"""TensorBoard and CSV: a run is a folder (`ModelRun.folder`, under the sweep's `_tune/runs/`).

TensorBoard: `tensorboard --logdir <sweep>/_tune/runs` lists one run per model and pair,
`history/<figure>` against the epoch, the outcome's numbers at the last epoch, and the
params in the HParams dashboard (written when the run is created; a resumed run adds an
event file beside the first, which TensorBoard reads as one run). CSV: `params.csv`,
`progress.csv` (one row per epoch) and `outcome.csv` in the same folder.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any

from sweeps.watch.trackers import ModelRun
from workers.core.live import FIGURES
from workers.jobs.tune_entry import reported_columns


def numbers(outcome: dict[str, Any]) -> dict[str, float]:
    """The outcome's figures a chart can draw (not its status or host, nor a NaN)."""
    return {k: float(v) for k, v in outcome.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)}


class TensorBoardRuns:
    def __init__(self) -> None:
        self.writers: dict[str, Any] = {}

    def open(self, run: ModelRun, resumed: bool) -> None:
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams

        writer = self.writers[run.key] = SummaryWriter(run.folder)
        if not resumed:  # the HParams dashboard's row: params, and the outcome's names as its columns
            for summary in hparams({**run.params, **run.tags}, {name: 0.0 for name in reported_columns()}):
                writer.file_writer.add_summary(summary)

    def epoch(self, run: ModelRun, epoch: int, figures: dict[str, float]) -> None:
        writer = self.writers[run.key]
        for name, value in figures.items():
            writer.add_scalar(f"history/{name}", value, epoch)
        writer.flush()  # a driver killed later loses nothing logged

    def end(self, run: ModelRun, outcome: dict[str, Any], step: int) -> None:
        writer = self.writers.pop(run.key)
        for name, value in numbers(outcome).items():
            writer.add_scalar(name, value, step)
        writer.close()

    def stop(self, run: ModelRun, status: str) -> None:
        self.writers.pop(run.key).close()


class CsvRuns:
    """Plain files, opened and closed per write: nothing to keep between them."""

    def open(self, run: ModelRun, resumed: bool) -> None:
        if not os.path.exists(os.path.join(run.folder, "params.csv")):
            write_row(os.path.join(run.folder, "params.csv"), {**run.params, **run.tags}, mode="w")

    def epoch(self, run: ModelRun, epoch: int, figures: dict[str, float]) -> None:
        write_row(os.path.join(run.folder, "progress.csv"), {"epoch": epoch, **{k: figures.get(k) for k in FIGURES}})

    def end(self, run: ModelRun, outcome: dict[str, Any], step: int) -> None:
        write_row(os.path.join(run.folder, "outcome.csv"), outcome, mode="w")

    def stop(self, run: ModelRun, status: str) -> None:
        pass


def write_row(path: str, row: dict[str, Any], mode: str = "a") -> None:
    """Append `row` (or write it alone, `mode="w"`), with the header if the file is new."""
    new = mode == "w" or not os.path.exists(path)
    with open(path, mode, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
