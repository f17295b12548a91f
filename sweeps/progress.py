"""Terminal progress: one line per finished model and pair instead of Tune's status tables.

A pack job (several models trained as one network, then their seed pairs) ends with a
line for each of its models and pairs, numbered like those of solo jobs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ray import tune

from sweeps.spec import describe

# Result fields worth a glance, in the order printed when present.
SHOWN = ("train_loss", "test_acc", "mc_train_error", "cka_softmax", "l2_distance")


def pair_label(a: dict[str, Any], b: dict[str, Any], axes: list[str]) -> str:
    """`pair width=8 batch_size=32 seeds 0,1`."""
    return f"pair {describe(a, [x for x in axes if x != 'seed'])} seeds {a['seed']},{b['seed']}"


def job_label(config: dict[str, Any], axes: list[str]) -> str:
    """`width=8 batch_size=32 seed=0`, `pack of 2 width=8 batch_size=32 seed=0,1` (the
    members' values of each axis) or `pair width=8 batch_size=32 seeds 0,1`."""
    if config["kind"] == "pair":
        return pair_label(config["a"], config["b"], axes)
    if config["kind"] == "pack":
        members = config["members"]
        values = {a: ",".join(dict.fromkeys(str(m[a]) for m in members)) for a in axes}
        pairs = f" + {len(config['pairs'])} pairs" if config["pairs"] else ""
        return f"pack of {len(members)}{pairs} {describe(values, axes)}"
    return describe(config["trial"], axes)


def job_size(config: dict[str, Any]) -> int:
    """How many models and pairs a job finishes (the lines it prints)."""
    return len(config["members"]) + len(config["pairs"]) if config.get("kind") == "pack" else 1


def _parts(config: dict[str, Any], result: dict[str, Any], axes: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(label, result) of every model and pair a finished job recorded."""
    if config["kind"] != "pack":
        return [(job_label(config, axes), result)]
    size = f" (pack of {len(config['members'])})"
    models = [(describe(flat, axes) + size, row) for flat, row in zip(config["members"], result.get("members", []))]
    pairs = [(pair_label(p["a"], p["b"], axes) + size, row)
             for p, row in zip(config["pairs"], result.get("pairs", []))]
    return models + pairs


def format_lines(done: int, total: int, config: dict[str, Any], result: dict[str, Any],
                 axes: list[str]) -> list[str]:
    """`[done/total] label status figures time host` for each model and pair of a
    finished job; `done` counts those finished before it."""
    lines = []
    for i, (label, row) in enumerate(_parts(config, result, axes), done + 1):
        figures = " ".join(f"{k}={row[k]:.4g}" for k in SHOWN
                           if isinstance(row.get(k), float) and not math.isnan(row[k]))
        lines.append(f"[{i}/{total}] {label}  {row.get('status', 'ok')}  {figures}  "
                     f"{row.get('time_total_s', float('nan')):.1f}s on {row.get('host', '?')}")
    return lines


class OneLinePerTrial(tune.Callback):
    """Prints a line for each model and pair as its job ends (see `format_lines`)."""

    def __init__(self, total: int, axes: list[str], log: Callable[[str], Any] | None) -> None:
        self.total, self.axes, self.log = total, axes, log
        self.finished = 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for line in format_lines(self.finished, self.total, trial.config, trial.last_result or {}, self.axes):
            (self.log or print)(line)
        self.finished += job_size(trial.config)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += job_size(trial.config)
        (self.log or print)(f"[{self.finished}/{self.total}] {job_label(trial.config, self.axes)}  "
                            f"FAILED (see {trial.local_path})")
