"""`--log tensorboard,csv,mlflow,wandb`: which trackers a sweep logs to, checked before anything runs.

The trackers themselves (`sweeps.watch.trackers`) keep one run per model and per seed pair:
TensorBoard, CSV and W&B files in each run's folder under the sweep's `_tune/runs/`
(another folder for an object store, see `sweeps.run.driver`), MLflow's store
`_tune/mlflow.db` unless `MLFLOW_TRACKING_URI` names a server. The experiment (MLflow)
or project (W&B) is the sweep's name. An unknown name, or one whose package is
missing, is bad input naming `--log` (exit code 2).
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

from workers.core.errors import ConfigError

if TYPE_CHECKING:
    from sweeps.watch.trackers import Trackers

# Each logger with the modules it needs; its install command is the extra of the same name.
LOGGERS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboardX",),
    "csv": (),
    "mlflow": ("mlflow", "sqlalchemy", "alembic"),  # the default store is SQLite (sqlalchemy, alembic)
    "wandb": ("wandb",),
}


def parse_loggers(text: str) -> tuple[str, ...]:
    """`"tensorboard,csv"` -> ("tensorboard", "csv"), each known and installed."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    for name in names:
        if name not in LOGGERS:
            raise ConfigError("--log", f"unknown logger {name!r}; allowed: {', '.join(LOGGERS)} "
                              "(any of them, comma-separated)")
        missing = [module for module in LOGGERS[name] if importlib.util.find_spec(module) is None]
        if missing:
            raise ConfigError("--log", f"{name} is not installed (no module {', '.join(missing)}): "
                              f"pip install -e \".[{name}]\"")
    return names


def open_trackers(names: tuple[str, ...], sweep: str, axes: list[str], tune_dir: str) -> Trackers:
    """The trackers of `names` (from `parse_loggers`) for a sweep's run; with no names,
    one that logs nothing."""
    from sweeps.watch.trackers import Trackers
    from sweeps.watch.trackers.files import CsvRuns, TensorBoardRuns

    if names:
        os.makedirs(tune_dir, exist_ok=True)  # MLflow's SQLite store is created in it
    trackers: list = []
    if "tensorboard" in names:
        trackers.append(TensorBoardRuns())
    if "csv" in names:
        trackers.append(CsvRuns())
    if "mlflow" in names:
        from sweeps.watch.trackers.mlflow_runs import MLflowRuns

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{tune_dir}/mlflow.db"
        trackers.append(MLflowRuns(sweep, uri, artifacts=f"{tune_dir}/mlartifacts"))
    if "wandb" in names:
        from sweeps.watch.trackers.wandb_runs import WandbRuns

        trackers.append(WandbRuns(sweep))
    return Trackers(trackers, sweep, axes, tune_dir)
