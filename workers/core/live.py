"""What a job tells while it runs, for the people watching the sweep; never a record.

Two readers want a job's epochs as they happen: the driver (Ray Tune's results, which
its trackers of `--log`, `sweeps.watch.trackers`, turn into one TensorBoard, CSV, MLflow or W&B
run per model) and `python -m analysis status --watch`, from any machine that sees the storage. A job holds one `JobProgress`
(`workers.jobs.tune_entry.run_job` opens it); the epoch callbacks of training
(`workers.jobs.trial.EpochLog`, `workers.jobs.pack_job.PackLog`) hand it each epoch's history
rows, and it

- passes their figures to `report`, a callable injected by whoever runs the job (Tune's
  report when Tune does; none in process), so nothing here imports Ray;
- keeps `_progress/jobs/<job>.json` up to date: written whole with the storage's atomic
  write (one PUT on an object store), at most every `WRITE_EVERY_S` seconds so a fast
  epoch costs a dictionary and a clock read, and removed when the job ends.

The driver writes `_progress/run.json` while a run is on (when it started: the readers'
models per hour) and clears the folder before and after a run, so a job killed with its
worker leaves nothing behind for long. The underscore keeps the folder out of every
Parquet reader's way. The records (`workers.core.records`) are untouched by all of this.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from workers.core.errors import StorageError
from workers.core.storage import Storage

PROGRESS = "_progress"
JOBS = f"{PROGRESS}/jobs"
RUN = f"{PROGRESS}/run.json"
WRITE_EVERY_S = 5.0  # the progress file's refresh; `status --watch` polls at about this pace
# The history columns a watcher wants per epoch (`workers.jobs.trial.history_row`).
FIGURES = ("lr", "train_loss", "train_acc", "epoch_time_s", "step_size", "step_size_unclipped")

Report = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Unit:
    """A model a job trains (`train`) or a seed pair it measures (`pair`): the units the
    driver's progress line and `status` count, as the `failures` table names them."""

    key: str  # trial_key or pair_key
    kind: str  # "train" or "pair"
    values: dict[str, Any]  # width, batch_size and the sweep's axes: its label and its ETA class


def unit_values(flat: dict[str, Any], axes: tuple[str, ...]) -> dict[str, Any]:
    """The values that name a model on the grid (`axes`) and class its duration
    (width, batch size), from its flat config."""
    return {k: flat[k] for k in dict.fromkeys(("width", "batch_size", *axes)) if k in flat}


def figures(row: dict[str, Any]) -> dict[str, float]:
    """An epoch's figures from its history row; NaN marks a figure the training variant
    does not have (step sizes outside ALI-G) and is left out."""
    return {k: float(row[k]) for k in FIGURES if k in row and not math.isnan(row[k])}


@dataclass
class JobProgress:
    """A running job's epochs, to `report` and to its progress file (module docstring)."""

    storage: Storage  # the sweep folder
    job: str  # trial key, pack id or pair key: the progress file's name
    kind: str  # the job's kind: train, pack or pair
    units: list[Unit]
    epochs: int  # epochs the job trains (0 for a pair)
    report: Report | None = None
    started_at: float = field(default_factory=time.time)
    epoch: int = 0  # the last epoch finished
    last: dict[str, dict[str, float]] = field(default_factory=dict)  # its figures per trial key
    _written: float = -math.inf  # time.monotonic() of the last write
    _failed: bool = False  # a write failed (named once on stderr)

    @property
    def relpath(self) -> str:
        return f"{JOBS}/{self.job}.json"

    def start(self) -> JobProgress:
        """Announce the job (before its first epoch, so a pair or a long data load shows too)."""
        self._write()
        return self

    def end_epoch(self, epoch: int, rows: dict[str, dict[str, Any]]) -> None:
        """`rows`: this epoch's history row of every model still training, by trial key.

        `report` gets `history/<trial key>/<figure>` for a solo job and a pack alike: the
        driver's trackers (`sweeps.watch.trackers`) split it into one run per model, and the trial
        key is the name every record of that model carries.
        """
        self.epoch, self.last = epoch, {key: figures(row) for key, row in rows.items()}
        if epoch >= self.epochs or time.monotonic() - self._written >= WRITE_EVERY_S:
            self._write()
        if self.report is not None:
            self.report({"epoch": epoch, "timesteps_total": epoch, "history": self.last})

    def finish(self) -> None:
        """The job is over (recorded, or failed and filed): its file goes. Called on the
        way out of a failing job too, so it never raises over the job's own error (the
        driver clears what is left when the run ends)."""
        try:
            self.storage.delete(self.relpath)
        except OSError:
            pass

    def _write(self) -> None:
        """Replace the progress file. A storage error here is named once and training
        goes on: the file only informs a watcher, and the records are what counts."""
        body = {"job": self.job, "kind": self.kind, "host": socket.gethostname(), "pid": os.getpid(),
                "started_at": self.started_at, "updated_at": time.time(), "epoch": self.epoch,
                "epochs": self.epochs, "units": [asdict(u) for u in self.units], "figures": self.last}
        self._written = time.monotonic()
        try:
            self.storage.write_bytes(self.relpath, json.dumps(body).encode())
        except StorageError as exc:
            if not self._failed:
                print(f"warning: progress of job {self.job} not written (status --watch will not show it): "
                      f"{exc}", file=sys.stderr)
            self._failed = True


def running_jobs(storage: Storage) -> list[dict[str, Any]]:
    """The progress files of the jobs running now (as `JobProgress` writes them), oldest
    first; one that vanished between listing and reading (its job ended) is skipped."""
    jobs = []
    for name in storage.list_names(JOBS, ".json"):
        try:
            jobs.append(json.loads(storage.read_bytes(f"{JOBS}/{name}.json")))
        except (OSError, pa.ArrowException, ValueError):
            continue
    return sorted(jobs, key=lambda job: job.get("started_at", 0.0))


def start_run(storage: Storage, started_at: float) -> None:
    """A driver's run begins: stale progress of a killed one goes, and `run.json` says when."""
    clear(storage)
    storage.write_bytes(RUN, json.dumps({"started_at": started_at, "host": socket.gethostname()}).encode())


def run_started(storage: Storage) -> float | None:
    """When the run now on began (time.time()), or None when no driver runs this sweep."""
    try:
        return float(json.loads(storage.read_bytes(RUN))["started_at"])
    except (OSError, pa.ArrowException, ValueError, KeyError, TypeError):
        return None


def clear(storage: Storage) -> None:
    """Remove `_progress/` (the run ended; its jobs ended with it or were killed). Best
    effort: it runs on the way out of a failing run too, and the next run clears again."""
    try:
        if storage.fs.get_file_info(storage.path(PROGRESS)).type != pafs.FileType.NotFound:
            storage.fs.delete_dir(storage.path(PROGRESS))
    except OSError:
        pass
