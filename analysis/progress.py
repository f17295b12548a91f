"""A running sweep seen from the storage: counts, models per hour, ETA and the jobs in
progress with their last epoch, for `python -m analysis status [--watch]` on any machine
that sees the sweep folder (an object store too).

The counts are in the driver's units (`analysis.eta`) over the whole grid of
`spec.json`: done from the records, failed from `failures` (as the status table),
running from the jobs' progress files (`workers.core.live`), pending the rest. Durations per
class come from the records (a packed model's time shared by its pack, plus its metrics'
times), the rate from the models recorded since the run's start (`_progress/run.json`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis.eta import Durations, Progress, Shape, clock, eta_seconds, per_hour, shape
from analysis.load import Sweep
from workers.core.live import run_started, running_jobs
from workers.core.storage import Storage


@dataclass(frozen=True)
class SweepProgress:
    progress: Progress
    running: list[dict[str, Any]]  # the progress files of the running jobs
    run_started: float | None  # time.time() the driver's run began; None: no run on


def expected_units(spec: dict[str, Any]) -> Counter[Shape]:
    """Models and seed pairs the grid of `spec.json` calls for, by class."""
    values = spec.get("values") or {}
    expected: Counter[Shape] = Counter()
    if not values:
        return expected
    per_cell = math.prod(len(v) for k, v in values.items() if k not in ("width", "batch_size", "seed"))
    seeds = len(values.get("seed", [0]))
    pairs = math.comb(seeds, 2) if values.get("measure_pairs", [False])[0] else 0
    for width in values.get("width", [0]):
        for batch_size in values.get("batch_size", [0]):
            cell = {"width": width, "batch_size": batch_size}
            expected[shape("train", cell)] += per_cell * seeds
            if pairs:
                expected[shape("pair", cell)] += per_cell * pairs
    return expected


def recorded_units(sweep: Sweep) -> tuple[Counter[Shape], Durations]:
    """Recorded models and pairs by class, and their worker-seconds."""
    done: Counter[Shape] = Counter()
    durations = Durations()
    for kind, rows in (("train", sweep.trials), ("pair", sweep.pairs)):
        if rows.empty:
            continue
        for row, seconds in zip(rows.to_dict("records"), _seconds(kind, rows)):
            done[shape(kind, row)] += 1
            if math.isfinite(seconds):
                durations.add(shape(kind, row), seconds)
    return done, durations


def _seconds(kind: str, rows: pd.DataFrame) -> pd.Series:
    """A model's time: its trials row's (a pack's, shared by its models) plus each
    metric's; a pair's: the sum of its metrics' times."""
    if kind == "pair":
        return rows[[c for c in rows.columns if c.startswith("time_") and c.endswith("_s")]].sum(axis=1)
    if "time_total_s" not in rows:  # imported records (`analysis.yang2021`) have no timings
        return pd.Series(math.nan, index=rows.index)
    pack_size = rows["pack_size"].fillna(1).clip(lower=1) if "pack_size" in rows else 1
    metrics = [c for c in rows.columns if c.endswith("_time_s") and not c.startswith("time_")]
    return rows["time_total_s"] / pack_size + rows[metrics].fillna(0).sum(axis=1)


def sweep_progress(sweep: Sweep, failed: int, now: float | None = None, known: bool = True) -> SweepProgress:
    """The progress of `sweep` (`failed`: units whose last attempt failed). `known`:
    whether the grid says what is pending (a refined sweep's driver decides it as it
    goes: pending and the ETA are then unknown)."""
    now = time.time() if now is None else now
    storage = Storage.open(sweep.path)
    jobs, started = running_jobs(storage), run_started(storage)
    done, durations = recorded_units(sweep)
    recorded = set(sweep.trials.get("trial_key", [])) | set(sweep.pairs.get("pair_key", []))
    running = [([shape(u["kind"], u["values"]) for u in job["units"] if u["key"] not in recorded],
                now - job["started_at"]) for job in jobs]  # a pack's recorded models count as done
    pending = expected_units(sweep.spec) - done - Counter(s for units, _ in running for s in units)
    n_pending = max(0, sum(pending.values()) - failed) if known else None
    models = 0
    if started is not None and "written_at" in sweep.trials:
        written = pd.to_datetime(sweep.trials["written_at"], utc=True, errors="coerce")
        models = int((written >= pd.Timestamp(math.floor(started), unit="s", tz="UTC")).sum())
    eta = eta_seconds(durations, pending, running, len(running)) if jobs and known else None
    progress = Progress(sum(done.values()), sum(len(units) for units, _ in running), n_pending, failed,
                        per_hour(models, now - started) if started is not None else None, eta)
    return SweepProgress(progress, jobs, started)


def format_running(jobs: list[dict[str, Any]], now: float | None = None) -> list[str]:
    """One line per running job: its models (or pair), epoch and figures, host, age.

    `pack of 2 width=2 batch_size=128 seed=0,1  epoch 7/12  train_loss=0.31,0.29  on vm, 41s, updated 3s ago`
    """
    now = time.time() if now is None else now
    lines = []
    for job in jobs:
        units = [u for u in job["units"] if u["kind"] == "train"] or job["units"]  # a pair job: its pair
        names = {k: ",".join(dict.fromkeys(str(u["values"][k]) for u in units if k in u["values"]))
                 for u in units for k in u["values"]}
        label = " ".join(f"{k}={v}" for k, v in names.items())
        if job["kind"] != "train":
            label = f"{'pair' if job['kind'] == 'pair' else f'pack of {len(units)}'} {label}"
        figures = job.get("figures") or {}
        losses = ",".join(f"{f['train_loss']:.4g}" for f in figures.values() if "train_loss" in f)
        epoch = f"  epoch {job['epoch']}/{job['epochs']}" if job.get("epochs") else ""
        lines.append(f"  {label}{epoch}" + (f"  train_loss={losses}" if losses else "")
                     + f"  on {job['host']}, {clock(now - job['started_at'])}, "
                       f"updated {clock(now - job['updated_at'])} ago")
    return lines
