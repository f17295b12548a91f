"""W&B: one run per model and pair, grouped by cell (a cell's seeds and their pair).

The project is the sweep's name unless `WANDB_PROJECT` says otherwise; `WANDB_MODE`
(offline, say) is read by W&B itself. The run's id is a hash of its folder (the sweep
folder and the model's key), so a retried, resumed or rerun model reopens its run
(`resume="allow"`) instead of starting another. Its config holds the model's config
values and keys (parallel coordinates, grouping by any of them), its history
`history/<figure>` at step = epoch, its summary the outcome. The runs live in this
driver (`reinit="create_new"`: several at once), silent and without console capture,
so W&B prints nothing on the sweep's terminal; files under the run's folder.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from sweeps.watch.trackers import ModelRun


class WandbRuns:
    def __init__(self, sweep: str) -> None:
        self.sweep = sweep
        self.project = os.environ.get("WANDB_PROJECT") or sweep
        self.runs: dict[str, Any] = {}  # run key -> wandb.Run

    def open(self, run: ModelRun, resumed: bool) -> None:
        import wandb

        self.runs[run.key] = wandb.init(
            project=self.project, id=hashlib.sha256(run.folder.encode()).hexdigest()[:16], name=run.name,
            group=run.group, job_type=run.kind, tags=[self.sweep], config={**run.params, **run.tags},
            dir=run.folder, resume="allow", reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, save_code=False))

    def epoch(self, run: ModelRun, epoch: int, figures: dict[str, float]) -> None:
        self.runs[run.key].log({f"history/{k}": v for k, v in figures.items()}, step=epoch)

    def end(self, run: ModelRun, outcome: dict[str, Any], step: int) -> None:
        handle = self.runs.pop(run.key)
        handle.summary.update(outcome)
        handle.finish(exit_code=0)

    def stop(self, run: ModelRun, status: str) -> None:
        self.runs.pop(run.key).finish(exit_code=1)
