"""Ray Tune's MLflow logger (`--log mlflow`), adapted to a sweep's jobs.

Two changes to `MLflowLoggerCallback`, both where it runs in the driver's loop:
- a run's params are the job's place on the grid (`sweeps.loggers.job_params`), and its
  tags the sweep, the job's kind and each model's label by trial key; the run is named
  by the job's label;
- a result is one `log_batch` (one transaction) instead of a lookup and a write per
  figure: against the SQLite store that is ~17 ms a figure, seconds for a pack's epoch.
MLflow 3 refuses its plain-file store unless told otherwise, hence SQLite by default
(`sweeps.loggers`).
"""

from __future__ import annotations

import time
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.result import TIMESTEPS_TOTAL, TRAINING_ITERATION
from ray.tune.utils import flatten_dict

from sweeps.loggers import job_params
from sweeps.progress import job_label


class SweepMLflow(MLflowLoggerCallback):
    """One MLflow run per job, in the experiment named after the sweep."""

    def __init__(self, sweep: str, axes: list[str], tracking_uri: str, artifacts: str) -> None:
        super().__init__(tracking_uri, experiment_name=sweep, tags={"sweep": sweep})
        self.axes, self.artifacts = axes, artifacts

    def setup(self, *args: Any, **kwargs: Any) -> None:
        # Created here first, so that its artifact folder is under `_tune/`, not `./mlruns`.
        self.mlflow_util.setup_mlflow(tracking_uri=self.tracking_uri, experiment_name=self.experiment_name,
                                      artifact_location=self.artifacts)
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial: Any) -> None:
        if trial in self._trial_runs:  # a retried job keeps its run
            return
        params, members = job_params(trial.config, self.axes)
        tags = {**self.tags, "trial_name": str(trial), "kind": trial.config["kind"],
                **{f"members/{key}": label for key, label in members.items()}}
        run_id = self.mlflow_util.start_run(run_name=job_label(trial.config, self.axes), tags=tags).info.run_id
        self._trial_runs[trial] = run_id
        MlflowClient().log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        step = result.get(TIMESTEPS_TOTAL) or result[TRAINING_ITERATION]
        now = int(time.time() * 1000)
        figures = flatten_dict({k: v for k, v in result.items() if k != "config"}, delimiter="/")
        metrics = [Metric(k, float(v), now, step) for k, v in figures.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        MlflowClient().log_batch(self._trial_runs[trial], metrics=metrics)

