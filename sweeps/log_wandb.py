"""Ray Tune's W&B logger (`--log wandb`), adapted to a sweep's jobs.

`WandbLoggerCallback` starts one W&B run per Tune trial, in a logging actor of its own;
here the run is named by the job's label and its config is the job's place on the grid
(`sweeps.loggers.job_params`) with each model's label by trial key, instead of the
job's whole config. The project is the sweep's name unless `WANDB_PROJECT` says
otherwise; `WANDB_MODE=offline` (in the driver's environment) keeps the runs in each
trial's folder under `_tune/`.
"""

from __future__ import annotations

import os
from typing import Any

from ray.air.integrations.wandb import WandbLoggerCallback

from sweeps.loggers import job_params
from sweeps.progress import job_label


class SweepWandb(WandbLoggerCallback):
    """One W&B run per job, tagged with the sweep's name."""

    def __init__(self, sweep: str, axes: list[str]) -> None:
        # The logging actors take their environment from the cluster, not from this
        # driver: its WANDB_MODE (offline, say) goes along as an argument.
        mode = {"mode": os.environ["WANDB_MODE"]} if "WANDB_MODE" in os.environ else {}
        super().__init__(project=os.environ.get("WANDB_PROJECT") or sweep, tags=[sweep], **mode)
        self.axes = axes

    def _start_logging_actor(self, trial: Any, exclude_results: list[str], **init: Any) -> None:
        # The one place the base class gathers `wandb.init`'s arguments for a trial.
        params, members = job_params(trial.config, self.axes)
        init.update(config={**params, "members": members}, name=job_label(trial.config, self.axes))
        super()._start_logging_actor(trial, exclude_results, **init)
