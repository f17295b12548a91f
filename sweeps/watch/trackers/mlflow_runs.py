"""MLflow: one run per model and pair in the experiment named after the sweep.

A run is found again by its tag (`trial_key` or `pair_key`), so a retried, resumed or
rerun model continues the run it has (MLflow's own record, which a kill cannot leave
half written: a run is created with its tags in one transaction). Models of a pack are
sibling runs tagged with its `pack_id`. The params are the model's config values, the
outcome's numbers are metrics at the last epoch and its status and host are tags. Each
write is one `log_batch`, one transaction: against the SQLite store a write costs
~17 ms however many figures it holds.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from sweeps.watch.trackers import ModelRun
from sweeps.watch.trackers.files import numbers


class MLflowRuns:
    def __init__(self, sweep: str, tracking_uri: str, artifacts: str) -> None:
        # MLflow announces at INFO that it creates its SQLite tables: noise on a sweep's terminal.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(sweep)
        # Created with its artifact folder under `_tune/`, or MLflow would make `./mlruns`.
        self.experiment = found.experiment_id if found else self.client.create_experiment(
            sweep, artifact_location=artifacts)
        self.ids: dict[str, str] = {}  # run key -> MLflow run id

    def open(self, run: ModelRun, resumed: bool) -> None:
        found = self.client.search_runs([self.experiment], f"tags.{run.key_name} = '{run.key}'", max_results=1)
        if found:
            self.ids[run.key] = found[0].info.run_id
            self.client.update_run(found[0].info.run_id, status="RUNNING")
            return
        run_id = self.client.create_run(self.experiment, run_name=run.name, tags=run.tags).info.run_id
        self.ids[run.key] = run_id
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in run.params.items()])

    def epoch(self, run: ModelRun, epoch: int, figures: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.ids[run.key], metrics=[Metric(f"history/{k}", v, now, epoch)
                                                          for k, v in figures.items()])

    def end(self, run: ModelRun, outcome: dict[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        run_id = self.ids.pop(run.key)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in numbers(outcome).items()],
                              tags=[RunTag(k, v) for k, v in outcome.items() if isinstance(v, str)])
        self.client.set_terminated(run_id, "FINISHED")

    def stop(self, run: ModelRun, status: str) -> None:
        self.client.set_terminated(self.ids.pop(run.key), status)
