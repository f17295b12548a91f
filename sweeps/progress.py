"""Terminal progress: one line per finished trial instead of Tune's status tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import tune

from sweeps.spec import describe


class OneLinePerTrial(tune.Callback):
    """Prints `[done/total] axes status losses time host` as each trial ends."""

    def __init__(self, total: int, axes: list[str], log: Callable[[str], Any]) -> None:
        self.total, self.axes, self.log = total, axes, log
        self.finished = 0

    def _axes(self, trial: Any) -> str:
        return describe(trial.config["trial"], self.axes)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        r = trial.last_result or {}
        self.log(
            f"[{self.finished}/{self.total}] {self._axes(trial)}  {r.get('status', '?')}  "
            f"train_loss={r.get('train_loss', float('nan')):.4f} "
            f"test_acc={r.get('test_acc', float('nan')):.3f}  "
            f"{r.get('time_total_s', float('nan')):.1f}s on {r.get('host', '?')}"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        self.log(f"[{self.finished}/{self.total}] {self._axes(trial)}  FAILED (see {trial.local_path})")
