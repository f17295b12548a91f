"""Terminal progress: one line per finished model and pair instead of Tune's status
tables, and a progress line with counts, models per hour and the ETA.

A pack job (several models trained as one network, then their seed pairs) ends with a
line for each of its models and pairs, numbered like those of solo jobs. The progress
line counts the same units (`analysis.eta`, shared with `python -m analysis status`):
on a terminal it is redrawn in place, elsewhere (CI, a Slurm log) printed as a plain
line now and then.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from ray import tune

from analysis.eta import Durations, Progress, Shape, eta_seconds, per_hour, shape
from sweeps.run.spec import describe
from workers.core.records import FAILED

# Result fields worth a glance, in the order printed when present.
SHOWN = ("train_loss", "test_acc", "mc", "cka_softmax", "l2_distance")
REDRAW_EVERY_S = 1.0  # the progress line on a terminal
PLAIN_EVERY_S = 60.0  # the progress line as a plain line (not a terminal), besides the last one


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


def job_shapes(config: dict[str, Any]) -> list[Shape]:
    """The class (`analysis.eta.shape`) of each model and pair a job finishes."""
    if config["kind"] == "pair":
        return [shape("pair", config["a"])]
    if config["kind"] == "pack":
        return [shape("train", m) for m in config["members"]] + [shape("pair", p["a"]) for p in config["pairs"]]
    return [shape("train", config["trial"])]


def job_size(config: dict[str, Any]) -> int:
    """How many models and pairs a job finishes (the lines it prints)."""
    return len(job_shapes(config))


def _parts(config: dict[str, Any], result: dict[str, Any], axes: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(label, result) of every model and pair a finished job recorded."""
    if config["kind"] != "pack":
        return [(job_label(config, axes), result)]
    size = f" (pack of {len(config['members'])})"
    models = [(describe(flat, axes) + size, row)
              for flat, row in zip(config["members"], result.get("members", {}).values())]
    pairs = [(pair_label(p["a"], p["b"], axes) + size, row)
             for p, row in zip(config["pairs"], result.get("pairs", {}).values())]
    return models + pairs


def failed_for_good(result: dict[str, Any]) -> bool:
    """Whether a job's result says it failed and will not be tried again."""
    return result.get("status") == FAILED and "members" not in result


def format_lines(done: int, total: int, config: dict[str, Any], result: dict[str, Any],
                 axes: list[str]) -> list[str]:
    """`[done/total] label status figures time host` for each model and pair of a
    finished job; `done` counts those finished before it. A job that failed for good
    gets one line: what failed and its failure record in the sweep folder."""
    if failed_for_good(result):
        return [f"[{done + job_size(config)}/{total}] {job_label(config, axes)}  FAILED: {result['error']}"
                + (f" (see {result['failure']})" if result.get("failure") else "")]
    lines = []
    for i, (label, row) in enumerate(_parts(config, result, axes), done + 1):
        figures = " ".join(f"{k}={row[k]:.4g}" for k in SHOWN
                           if isinstance(row.get(k), float) and not math.isnan(row[k]))
        lines.append(f"[{i}/{total}] {label}  {row.get('status', 'ok')}  {figures}  "
                     f"{row.get('time_total_s', float('nan')):.1f}s on {row.get('host', '?')}")
    return lines


class Tally:
    """The units (models and pairs) of this run: done, failed, running and pending, the
    time each class took (`analysis.eta`), and from them the progress line's figures."""

    def __init__(self, configs: Iterable[dict[str, Any]] = ()) -> None:
        self.started = time.monotonic()
        self.pending: Counter[Shape] = Counter()
        self.running: dict[str, tuple[list[Shape], float]] = {}  # job id -> its units, its start
        self.durations = Durations()
        self.done = self.failed = self.models = 0
        self.add(configs)

    def add(self, configs: Iterable[dict[str, Any]]) -> None:
        """More jobs to run (a refined sweep's next cells)."""
        for config in configs:
            self.pending.update(job_shapes(config))

    def start(self, job: str, config: dict[str, Any]) -> None:
        if job not in self.running:  # a retried job keeps its first start
            self.pending.subtract(job_shapes(config))
            self.running[job] = (job_shapes(config), time.monotonic())

    def end(self, job: str, config: dict[str, Any], ok: bool) -> None:
        """A job finished (`ok`) or failed for good; its seconds are shared by its units."""
        self.start(job, config)
        units, began = self.running.pop(job)
        if not ok:
            self.failed += len(units)
            return
        for unit in units:
            self.durations.add(unit, (time.monotonic() - began) / len(units))
        self.done += len(units)
        self.models += sum(unit[0] == "train" for unit in units)

    def progress(self) -> Progress:
        now = time.monotonic()
        running = [(units, now - began) for units, began in self.running.values()]
        pending = +self.pending  # the classes still pending
        return Progress(self.done, sum(len(u) for u, _ in running), sum(pending.values()), self.failed,
                        per_hour(self.models, now - self.started),
                        eta_seconds(self.durations, pending, running, len(running)))


class Terminal:
    """Where the driver's lines go: each line as it comes, and the progress line drawn in
    place (`\\r`) on a terminal, or printed as a plain line at most every `PLAIN_EVERY_S`
    seconds elsewhere, since a log file keeps every line. With `log` (a caller that
    collects lines), everything goes to it as plain lines.

    Tune pickles its callbacks with the experiment; the stream stays out of the pickle.
    """

    def __init__(self, log: Callable[[str], Any] | None = None, stream: TextIO | None = None) -> None:
        self.log = log
        self.stream = stream if stream is not None else sys.stdout
        self.tty = log is None and self.stream.isatty()
        self.drawn = ""  # the progress line on screen (a terminal only)
        self.last = -math.inf  # time.monotonic() it was last shown

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "stream": None}

    def line(self, text: str) -> None:
        if self.log is not None:
            self.log(text)
        elif self.tty and self.drawn:  # the line above, the progress line below it again
            self._write(f"\r\x1b[K{text}\n{self.drawn}")
        else:
            self._write(text + "\n")

    def progress(self, progress: Callable[[], Progress], last: bool = False) -> None:
        """Show the progress line if it is due (`last`: it is, and it ends the display);
        `progress` makes it, only then (Tune's loop calls this many times a second)."""
        due = time.monotonic() - self.last >= (REDRAW_EVERY_S if self.tty else PLAIN_EVERY_S)
        if not (due or last):
            return
        self.last = time.monotonic()
        text = f"progress: {progress().line()}"
        if not self.tty:
            self.line(text)
            return
        self._write(f"\r\x1b[K{text}" + ("\n" if last else ""))
        self.drawn = "" if last else text

    def _write(self, text: str) -> None:
        if self.stream is not None:  # None in an unpickled copy, which Tune never runs
            self.stream.write(text)
            self.stream.flush()


class OneLinePerTrial(tune.Callback):
    """Prints a line for each model and pair as its job ends (see `format_lines`), and
    keeps the progress line (`Terminal`) current."""

    def __init__(self, configs: list[dict[str, Any]], axes: list[str], terminal: Terminal) -> None:
        self.axes, self.terminal = axes, terminal
        self.tally = Tally(configs)
        self.total = sum(job_size(c) for c in configs)

    def add(self, configs: list[dict[str, Any]]) -> None:
        """More jobs (a refined sweep's), counted in the lines' totals."""
        self.tally.add(configs)
        self.total += sum(job_size(c) for c in configs)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tally.start(trial.trial_id, trial.config)
        self.terminal.progress(self.tally.progress)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.terminal.progress(self.tally.progress)  # the ETA ticks between events

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = self.tally.done + self.tally.failed
        result = trial.last_result or {}
        for line in format_lines(done, self.total, trial.config, result, self.axes):
            self.terminal.line(line)
        self.tally.end(trial.trial_id, trial.config, ok=not failed_for_good(result))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tally.end(trial.trial_id, trial.config, ok=False)
        self.terminal.line(f"[{self.tally.done + self.tally.failed}/{self.total}] "
                           f"{job_label(trial.config, self.axes)}  FAILED (see {kept_error(trial)})")


def kept_error(trial: Any) -> str:
    """Where a failed trial's error is told: Tune writes it into Ray's session folder
    (`/tmp/ray/session_*`, gone with the session), so it is copied into the trial's
    folder under the sweep's `_tune/`; that folder if Tune wrote none, Ray's own file if
    the copy cannot be written (a full disk: the line must still be printed)."""
    if not trial.error_file or not os.path.exists(trial.error_file):
        return trial.path
    kept = os.path.join(trial.path, os.path.basename(trial.error_file))
    try:
        os.makedirs(trial.path, exist_ok=True)
        shutil.copyfile(trial.error_file, kept)
    except OSError:
        return trial.error_file
    return kept

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.terminal.progress(self.tally.progress, last=True)
