"""`--log`: one tracker run per model and per seed pair, whatever job trained it.

A Tune trial is a job, and since packing a job is usually several models; a tracker's
run is what users overlay, filter and group by a model's grid values. So the driver
splits every result a job reports (`workers.jobs.tune_entry`: each epoch's history rows by
trial key, then the outcome of each model and pair) into runs of its own (`ModelRun`),
named by the model's label on the grid, with its config values as params, its history
against the epoch and its outcome at the end; a seed pair is a run of kind `pair` with
its mode connectivity, CKA and L2, grouped with its cell's models.

Both executors feed the same `Trackers` (`sweeps.run.execute`): Tune through
`TrackerCallback`, `--in-process` directly, so the trackers' clients live in the
driver only and a job runs the same with or without them.

Runs outlive their jobs. Each run's folder (`_tune/runs/<label>-<hash>/`, also where
TensorBoard, CSV and W&B write) keeps `logged.json`: the last epoch given to the
trackers and whether the outcome was. A retried or resumed model (a killed worker,
a killed driver rerun) reopens its run and skips the epochs it logged already; a model
recorded before the run started (`Trackers.skip`) or whose outcome was logged is never
logged again. The ledger is written before the trackers, so a driver killed in between
can leave an epoch out of a run, but never in it twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ray import tune

from sweeps.run.spec import describe
from sweeps.watch.terminal import failed_for_good, pair_label
from workers.catalog import TrialConfig
from workers.jobs.tune_entry import job_parts, job_units, reported
from workers.packing.policy import PER_MEMBER, pack_id

# Config values a model's run holds as params besides the sweep's axes: what places it in
# the study (a run is compared across sweeps too) and what tells the models of one pack
# apart (`PER_MEMBER`). The records hold the rest.
PARAMS = ("dataset", "model", "width", "batch_size", "optimizer", "epochs", *PER_MEMBER)
LEDGER = "logged.json"


@dataclass(frozen=True)
class ModelRun:
    """A model's or a seed pair's run, the same in every tracker."""

    key: str  # trial key or pair key: the name every record of it carries
    kind: str  # "train" or "pair"
    name: str  # its label on the grid: `width=2 seed=0`, `pair width=2 seeds 0,1`
    group: str  # its cell's label: a cell's models and its pair share it
    folder: str  # `_tune/runs/<label>-<hash>`: TensorBoard, CSV, W&B and the ledger
    params: dict[str, Any]  # scalar config values (`PARAMS` and the axes)
    tags: dict[str, str]  # sweep, kind, trial_key or pair_key, cell_key, pack_id, pack_size

    @property
    def key_name(self) -> str:
        return "trial_key" if self.kind == "train" else "pair_key"


class Tracker(Protocol):
    """One tracking library's side of `ModelRun`s (`sweeps.watch.trackers.files`, `.mlflow_runs`,
    `.wandb_runs`). `open` resumes a run that exists (`resumed`: its ledger says so)."""

    def open(self, run: ModelRun, resumed: bool) -> None: ...

    def epoch(self, run: ModelRun, epoch: int, figures: dict[str, float]) -> None: ...

    def end(self, run: ModelRun, outcome: dict[str, Any], step: int) -> None: ...

    def stop(self, run: ModelRun, status: str) -> None:
        """Close a run that did not end: "FAILED" (its job failed) or "KILLED" (the sweep
        stopped first). A later run of the sweep may open it again."""


@dataclass
class Logged:
    """A run's ledger (`LEDGER` in its folder)."""

    epoch: int = 0  # the last epoch given to every tracker
    ended: bool = False  # its outcome was logged

    @classmethod
    def read(cls, folder: str) -> Logged | None:
        try:
            with open(os.path.join(folder, LEDGER)) as f:
                return cls(**json.load(f))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, folder: str) -> None:
        """Replace the ledger whole (a kill leaves the old one or the new one)."""
        path = os.path.join(folder, LEDGER)
        with open(f"{path}.tmp", "w") as f:
            json.dump(asdict(self), f)
        os.replace(f"{path}.tmp", path)


def scalar(value: Any) -> Any:
    """A config value as a tracker param: numbers, strings and booleans as they are,
    anything else (a list of milestones) as its text."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def job_runs(config: dict[str, Any], sweep: str, axes: list[str], root: str) -> list[ModelRun]:
    """The runs of a job's models and pairs, in the order of `job_units`."""
    units = job_units(config, tuple(axes))
    models, pairs = job_parts(config)
    cell_axes = [a for a in axes if a != "seed"]
    pack = ({"pack_id": pack_id([u.key for u in units[:len(models)]]), "pack_size": str(len(models))}
            if config["kind"] == "pack" else {})

    def params(flat: dict[str, Any]) -> dict[str, Any]:
        return {k: scalar(flat[k]) for k in dict.fromkeys((*PARAMS, *axes)) if flat.get(k) is not None}

    def run(key: str, kind: str, name: str, flat: dict[str, Any], extra: dict[str, Any],
            tags: dict[str, str]) -> ModelRun:
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        folder = os.path.join(root, "runs", f"{'_'.join(name.split()) or kind}-{digest}")
        cell = TrialConfig.from_flat(flat).cell_key
        return ModelRun(key, kind, name or key, describe(flat, cell_axes) or cell, folder, {**params(flat), **extra},
                        {"sweep": sweep, "kind": kind, "cell_key": cell, **tags})

    runs = [run(unit.key, "train", describe(flat, axes), flat, {}, {"trial_key": unit.key, **pack})
            for unit, flat in zip(units, models)]
    for unit, spec in zip(units[len(models):], pairs):
        a, b = spec["a"], spec["b"]
        seeds = {"seed_a": a["seed"], "seed_b": b["seed"], "with_mc": bool(spec["with_mc"])}
        common = {k: v for k, v in a.items() if k != "seed"}
        runs.append(run(unit.key, "pair", pair_label(a, b, axes), common, seeds, {"pair_key": unit.key}))
    return runs


def outcomes(config: dict[str, Any], result: dict[str, Any], runs: list[ModelRun]) -> dict[str, dict[str, Any]]:
    """Each model's and pair's reported row of a job's final result, by key (a solo
    job's result also holds what Tune adds to every result)."""
    if config["kind"] == "pack":
        return {**result.get("members", {}), **result.get("pairs", {})}
    return {runs[0].key: reported(result)}


class Trackers:
    """The runs of a sweep's models and pairs in every tracker of `--log` (module docstring)."""

    def __init__(self, trackers: list[Tracker], sweep: str, axes: list[str], root: str) -> None:
        self.trackers, self.sweep, self.axes, self.root = trackers, sweep, axes, root
        self.done: set[str] = set()  # keys never to log again: recorded before, or ended
        self.jobs: dict[str, list[ModelRun]] = {}  # job id -> its runs
        self.open: dict[str, tuple[ModelRun, Logged]] = {}  # run key -> the run, its ledger

    def skip(self, keys: set[str]) -> None:
        """Models recorded before this run: a job that trains them again (a pack resumed
        whole) or measures them does not log them."""
        self.done |= keys

    def result(self, job: str, config: dict[str, Any], result: dict[str, Any]) -> None:
        """A result of job `job`: an epoch's history by trial key, or the job's outcome."""
        if not self.trackers:
            return
        if job not in self.jobs:  # once per job: its runs' keys hash every member's config
            self.jobs[job] = job_runs(config, self.sweep, self.axes, self.root)
        runs = self.jobs[job]
        if "history" in result:
            for run in runs:
                if run.key in result["history"]:
                    self._epoch(run, result["epoch"], result["history"][run.key])
        elif failed_for_good(result):
            self.failed(job)
        else:
            rows = outcomes(config, result, runs)
            for run in runs:
                if run.key in rows:
                    self._end(run, rows[run.key])

    def failed(self, job: str) -> None:
        """Job `job` failed for good: its open runs stop as failed."""
        for run in self.jobs.get(job, []):
            self._stop(run.key, "FAILED")

    def close(self) -> None:
        """The sweep's run is over (or stopped): runs still open were cut short."""
        for key in list(self.open):
            self._stop(key, "KILLED")

    def _opened(self, run: ModelRun) -> Logged | None:
        """The run's ledger, opening the run in every tracker first; None if it is not to
        be logged (done before, or ended)."""
        if run.key in self.done:
            return None
        if run.key not in self.open:
            logged = Logged.read(run.folder)
            if logged is not None and logged.ended:
                self.done.add(run.key)
                return None
            os.makedirs(run.folder, exist_ok=True)
            for tracker in self.trackers:
                tracker.open(run, resumed=logged is not None)
            logged = logged or Logged()
            logged.save(run.folder)
            self.open[run.key] = (run, logged)
        return self.open[run.key][1]

    def _epoch(self, run: ModelRun, epoch: int, figures: dict[str, float]) -> None:
        logged = self._opened(run)
        if logged is None or epoch <= logged.epoch:  # logged before a retry or a resume
            return
        logged.epoch = epoch
        logged.save(run.folder)  # first: a kill between the two loses an epoch, never repeats one
        for tracker in self.trackers:
            tracker.epoch(run, epoch, figures)

    def _end(self, run: ModelRun, outcome: dict[str, Any]) -> None:
        logged = self._opened(run)
        if logged is None:
            return
        logged.ended = True
        logged.save(run.folder)
        for tracker in self.trackers:
            tracker.end(run, outcome, int(outcome.get("epochs_done") or logged.epoch))
        del self.open[run.key]
        self.done.add(run.key)

    def _stop(self, key: str, status: str) -> None:
        if key in self.open:
            run, _ = self.open.pop(key)
            for tracker in self.trackers:
                tracker.stop(run, status)


class TrackerCallback(tune.Callback):
    """Tune's side of `Trackers`: every result of a trial, and its failure."""

    def __init__(self, trackers: Trackers) -> None:
        self.trackers = trackers

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment; the trackers' clients stay out
        # (a copy is never run).
        return {"trackers": None}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any) -> None:
        self.trackers.result(trial.trial_id, trial.config, result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.trackers.failed(trial.trial_id)
