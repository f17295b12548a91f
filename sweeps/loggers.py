"""`--log tensorboard,csv,mlflow,wandb`: Ray Tune's own logger callbacks, set up for a sweep.

Every job reports each epoch as it trains and its outcome at the end
(`workers.tune_entry`), so Tune's loggers draw live curves: `history/<figure>` per
epoch (`history/<trial key>/<figure>` for each model of a pack), then the trials row's
outcome and phase scalars (`members/<trial key>/...` for a pack), against the epoch.

Their files stay with Tune's own under the sweep's `_tune/` (another folder for an
object store, see `sweeps.driver`): TensorBoard events and `progress.csv` in each
trial's folder, W&B's run folders there too, and MLflow's store `_tune/mlflow.db`
unless `MLFLOW_TRACKING_URI` names a server. The experiment (MLflow) or project (W&B)
is the sweep's name. Each is checked before anything runs: an unknown name, or one
whose package is missing, is bad input naming `--log` (exit code 2).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from workers.errors import ConfigError
from workers.tune_entry import job_units

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


def logger_callbacks(names: tuple[str, ...], sweep: str, axes: list[str], tune_dir: str) -> list[Any]:
    """The Tune callbacks of `names` (from `parse_loggers`) for a sweep's run."""
    callbacks: list[Any] = []
    if "tensorboard" in names:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
    if "csv" in names:
        from ray.tune.logger import CSVLoggerCallback

        callbacks.append(CSVLoggerCallback())
    if "mlflow" in names:
        from sweeps.log_mlflow import SweepMLflow

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{tune_dir}/mlflow.db"
        callbacks.append(SweepMLflow(sweep, axes, uri, artifacts=f"{tune_dir}/mlartifacts"))
    if "wandb" in names:
        from sweeps.log_wandb import SweepWandb

        callbacks.append(SweepWandb(sweep, axes))
    return callbacks


def job_params(config: dict[str, Any], axes: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """What a tracker's params (MLflow) or config (W&B) hold for a job instead of its
    whole config: its place on the grid, each axis's value (in a pack, its models'
    values, comma-separated, as in its label), its kind and how many models it trains;
    and the label of each model by trial key, the name its curves carry.

    A pack's job config holds every member's full config (thousands of values, some
    past MLflow's 6,000-character limit), and a solo one a hundred values that do
    not vary across the sweep; the records hold all of them.
    """
    units = job_units(config, tuple(axes))
    models = [u for u in units if u.kind == "train"]
    named = models or units  # a pair job: the pair
    params: dict[str, Any] = {axis: ",".join(dict.fromkeys(str(u.values[axis]) for u in named)) for axis in axes}
    params.update(kind=config["kind"], models=len(models))
    return params, {u.key: " ".join(f"{a}={u.values[a]}" for a in axes) for u in models}
