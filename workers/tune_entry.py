"""The Ray Tune function: unpack the config, run the trial, report one result.

Ray ships only this function's reference to the worker; the trial's configuration
arrives as plain values (`config["trial"]` is `TrialConfig.to_flat()`), so any node
with the project installed can run it.
"""

from __future__ import annotations

from typing import Any

from workers.config import TrialConfig
from workers.trial import RunContext, run_trial

# Scalars reported to Tune (and so to the driver's progress line); records hold the rest.
REPORTED = ("status", "train_loss", "train_acc", "test_loss", "test_acc", "time_total_s", "host")


def tune_trial(config: dict[str, Any]) -> None:
    from ray import tune

    cfg = TrialConfig.from_flat(config["trial"])
    row = run_trial(cfg, RunContext(**config["context"]))
    tune.report({"trial_key": cfg.trial_key, **{k: row[k] for k in REPORTED if k in row}})
