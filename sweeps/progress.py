"""Terminal progress: one line per finished job instead of Tune's status tables."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ray import tune

from sweeps.spec import describe

# Result fields worth a glance, in the order printed when present.
SHOWN = ("train_loss", "test_acc", "mc_train_error", "cka_softmax", "l2_distance")


def job_label(config: dict[str, Any], axes: list[str]) -> str:
    """`width=8 batch_size=32 seed=0`, `pack of 2 width=8 batch_size=32 seed=0,1` (the
    members' values of each axis) or `pair width=8 batch_size=32 seeds 0,1`."""
    if config["kind"] == "pair":
        plain = [a for a in axes if a != "seed"]
        return f"pair {describe(config['a'], plain)} seeds {config['a']['seed']},{config['b']['seed']}"
    if config["kind"] == "pack":
        members = config["members"]
        values = {a: ",".join(dict.fromkeys(str(m[a]) for m in members)) for a in axes}
        pairs = f" + {len(config['pairs'])} pairs" if config["pairs"] else ""
        return f"pack of {len(members)}{pairs} {describe(values, axes)}"
    return describe(config["trial"], axes)


def format_line(done: int, total: int, config: dict[str, Any], result: dict[str, Any], axes: list[str]) -> str:
    """`[done/total] label status figures time host` for one finished job."""
    figures = " ".join(f"{k}={result[k]:.4g}" for k in SHOWN
                       if isinstance(result.get(k), float) and not math.isnan(result[k]))
    return (f"[{done}/{total}] {job_label(config, axes)}  {result.get('status', 'ok')}  {figures}  "
            f"{result.get('time_total_s', float('nan')):.1f}s on {result.get('host', '?')}")


class OneLinePerTrial(tune.Callback):
    """Prints `[done/total] label status figures time host` as each job ends."""

    def __init__(self, total: int, axes: list[str], log: Callable[[str], Any] | None) -> None:
        self.total, self.axes, self.log = total, axes, log
        self.finished = 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        (self.log or print)(format_line(self.finished, self.total, trial.config, trial.last_result or {},
                                        self.axes))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        (self.log or print)(f"[{self.finished}/{self.total}] {job_label(trial.config, self.axes)}  "
                            f"FAILED (see {trial.local_path})")
