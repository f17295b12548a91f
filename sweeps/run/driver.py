"""Run a sweep: lock its folder, set aside damaged and stale records, plan, execute, account.

The Parquet records are the source of truth: a trial whose `trials` row and metric
rows exist is done, so rerunning a command runs only what is missing and an extended
grid adds only its new points. A record that cannot be read, or that was computed from
weights its model no longer has (`workers.core.lineage`), goes to `_quarantine/` first and is
recomputed. The plan (`sweeps.run.plan`) is a pure function of the grid and the records;
either executor (`sweeps.run.execute`: Ray Tune, or `--in-process`) runs it under one
contract, and what failed is counted from the records, the same way for both. Tune's
own experiment folder is bookkeeping, kept under `<sweep>/_tune` (the underscore hides
it from Parquet discovery) for local storage.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from analysis.lens import spec_path
from sweeps.preflight.feasibility import LOCAL_ADDRESSES, wait_for_capacity
from sweeps.run.execute import InProcess, WithTune, init_ray
from sweeps.run.interrupt import Interrupted, stop_on_signals, stop_trials
from sweeps.run.options import RunOptions
from sweeps.run.pairs import plan_pairs
from sweeps.run.plan import (
    Holdings,
    Job,
    Plan,
    pending_pairs,
    pending_trials,
    plan_run,
    spec_id,
    spec_records,
)
from sweeps.run.spec import SweepSpec, collector_paused
from workers.catalog import TrialConfig
from workers.core import live
from workers.core.errors import ConfigError, StorageError, StorageFull
from workers.core.lineage import CheckpointFiles, checkpoint_files, resumable_packs, set_aside_stale
from workers.core.records import MEASURES, PAIRS, TRIALS
from workers.core.storage import FileStamp, Storage
from workers.core.tables import Listings, compact_after_run, list_tables, quarantine_damaged
from workers.jobs.runtime import RunContext
from workers.packing.policy import PackPolicy, plan_packs

Log = Callable[[str], None]
# A refined sweep's further models, given those planned so far (sweeps.run.growth.Refiner.grow).
Grow = Callable[[list[TrialConfig]], list[TrialConfig]]


def code_version() -> str:
    """Git commit of the project (with -dirty if modified), for every record."""
    root = Path(__file__).resolve().parents[2]  # the checkout: sweeps/run/driver.py
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def holdings(storage: Storage, listings: Listings | None = None, files: CheckpointFiles | None = None) -> Holdings:
    """The done-records the sweep folder holds now, and the packs a kill left to resume
    (from the given listings, else listed now)."""
    listings = listings or list_tables(storage, (TRIALS, MEASURES, PAIRS))
    return Holdings.listed(listings.__getitem__, resumable_packs(storage, files))


class Settled(NamedTuple):
    lines: list[str]  # one per record moved, naming it and why
    held: Holdings  # what the folder then holds
    trials: dict[str, FileStamp]  # the trials records then, with their stamps


def settle(storage: Storage) -> Settled:
    """Set aside damaged records, then stale ones (`workers.core.lineage`), before planning.
    The folder is listed once for every step (a 10,000-model folder holds 55,000
    records), and again only after a step moved something."""
    listings, files = list_tables(storage), checkpoint_files(storage)
    lines = quarantine_damaged(storage, listings)
    if lines:
        listings = list_tables(storage)
    stale = set_aside_stale(storage, listings, files)
    if stale:
        listings, files = list_tables(storage), checkpoint_files(storage)
    return Settled(lines + stale, holdings(storage, listings, files), listings[TRIALS])


def settle_again(storage: Storage, before: Settled, rounds: Rounds, say: Log) -> tuple[Plan, Settled] | None:
    """After the jobs, the plan of what they left stale, if any, and the folder it was
    planned from (what the next pass compares with). A job that finds a model's final
    weights damaged (bit rot that start-up cannot see) trains it again, with other
    weights: the records derived earlier from the old ones (the model's other pairs)
    are then stale, and a run must not report success with them. Only a trials record
    that changed since `before` (a listing's stamps) calls for this."""
    now = storage.list_files(TRIALS, ".parquet")
    if all(now.get(key) == stamp for key, stamp in before.trials.items()):
        return None
    settled = settle(storage)
    for line in settled.lines:
        say(line)
    plan = plan_run(rounds.planned, settled.held, rounds.packer, rounds.context)
    if not plan.jobs:
        return None
    owed = [f"{n} {what if n > 1 else what[:-1]}" for n, what in ((len(plan.todo), "models"),
                                                                   (len(plan.pairs), "seed pairs")) if n]
    say(f"{' and '.join(owed)} to run again: models trained again during this run left them stale")
    rounds.held = settled.held
    rounds.plans.append(plan)
    return plan, settled


def unrecorded(configs: list[TrialConfig], storage: Storage) -> int:
    """Models and seed pairs of `configs` with no record yet (a pack's job owes several)."""
    held = Holdings.listed(lambda table: storage.list_names(table, ".parquet"))
    return len(pending_trials(configs, held)) + len(pending_pairs(configs, held))


REPAIRS = 2  # passes of `settle_again` after the jobs: each runs what the previous left stale

PROBE_BYTES = 64 * 1024  # an empty file still fits on a full disk; a record or a checkpoint does not


def check_still_writable(storage: Storage, owed: list[TrialConfig]) -> None:
    """After the jobs: raise StorageFull, saying what was recorded, if the storage no
    longer takes a write (a full disk fails every job the same way, and their failures
    could not be recorded either: the workers printed them)."""
    probe = f".probe-{os.getpid()}"
    try:
        storage.write_bytes(probe, bytes(PROBE_BYTES))
    except StorageError as exc:
        left, total = unrecorded(owed, storage), len(owed) + len(plan_pairs(owed))
        raise StorageFull(f"{storage.uri} stopped taking writes ({exc.__cause__ or exc}): {total - left} of "
                          f"{total} models and pairs recorded, {left} not; free space and rerun the same "
                          "command") from None
    storage.delete(probe)


def write_spec(storage: Storage, spec: SweepSpec, version: str, grid: list[TrialConfig]) -> None:
    """`spec.json`, the latest run's spec, and `specs/<spec_id>.json` with the record key
    of every model, metric and pair of its grid: what readers keep (`analysis.lens`).
    The id hashes those keys (`sweeps.run.plan.spec_id`); the key file is written on a
    spec's first run and again whenever it is missing or damaged."""
    records = spec_records(grid)
    body = {**spec.to_json(), "code_version": version, "spec_id": spec_id(records)}
    path = spec_path(body["spec_id"])
    if _stored_records(storage, path) != records:
        storage.write_bytes(path, json.dumps({**body, "records": records}).encode())
    storage.write_bytes("spec.json", json.dumps(body, indent=2).encode())


def _stored_records(storage: Storage, path: str) -> dict[str, list[str]] | None:
    """The record keys a spec's key file lists; None if it is missing or damaged."""
    try:
        return json.loads(storage.read_bytes(path))["records"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class RunSummary:
    path: str  # the sweep folder (local path or URI)
    total: int  # models in the grid
    skipped: int  # models (with all their metrics) already recorded
    ran: int  # trials and pairs run now
    failed: int
    seconds: float


def run(
    spec: SweepSpec, configs: list[TrialConfig], options: RunOptions, log: Log | None = None,
    grow: Grow | None = None,
) -> RunSummary:
    """Train and measure every missing model and pair of `configs` (the expanded `spec`):
    lock the folder, set aside damaged and stale records, plan, execute, account.

    `log` receives one line per event; None prints. (Tune pickles the progress callback,
    so it holds None rather than the builtin `print`, which pickles badly under capture.)
    `grow`, for a refined sweep, picks the models to run instead: those the records call
    for at the start, then more whenever the queue runs dry, until it has none.
    """
    start = time.perf_counter()
    say = log or print
    storage = Storage.open(spec.storage).child(spec.name)
    with sweep_lock(storage):
        with collector_paused():
            settled = settle(storage)
            version = code_version()
            axes = list(spec.axes())
            context = RunContext(storage=storage.uri, sweep=spec.name, code_version=version,
                                 threads=max(1, int(options.cpus_per_trial)), axes=tuple(axes))
            rounds = Rounds(configs, grow, storage, options.pack_policy(), asdict(context), settled.held)
            first = rounds.plans[0]
            write_spec(storage, spec, version, configs)
        for line in settled.lines:
            say(line)
        say(f"sweep {spec.name}: {len(rounds.planned)} models, {len(rounds.planned) - len(first.todo)} already done, "
            f"{len(first.todo)} to run ({first.packed} in {sum(len(p.members) > 1 for p in first.packs)} packs), "
            f"{len(first.pairs)} seed pairs to measure -> {storage.uri}")
        if first.jobs:
            _execute(first, rounds, options, context, storage, axes, log)
            baseline = settled
            for attempt in range(1, REPAIRS + 1):
                again = settle_again(storage, baseline, rounds, say)
                if again is None:
                    break
                repair, baseline = again
                _execute(repair, rounds, options, context, storage, axes, log, repair=attempt)
        failed = unrecorded(rounds.planned, storage)
        check_still_writable(storage, rounds.planned)
        for line in compact_after_run(storage):  # one file per table for readers (workers.core.tables)
            say(line)
    ran = sum(plan.owed for plan in rounds.plans)
    return RunSummary(storage.uri, len(rounds.planned), len(rounds.first_models) - len(first.todo), ran - failed,
                      failed, time.perf_counter() - start)


def _execute(plan: Plan, rounds: Rounds, options: RunOptions, context: RunContext, storage: Storage,
             axes: list[str], log: Log | None, repair: int = 0) -> None:
    """Run the plan (and a refined sweep's further rounds, but not in a `repair` pass,
    `settle_again`) with the executor `options` ask for; on Ctrl-C or SIGTERM, stop the
    trials and raise `Interrupted`."""
    from sweeps.watch.loggers import open_trackers

    tune_dir = storage.path("_tune") if storage.is_local else os.path.expanduser("~/ray_results")
    trackers = open_trackers(options.loggers, context.sweep, axes, tune_dir)  # --log, for either executor
    if options.in_process:
        executor: InProcess | WithTune = InProcess(options, axes, log, trackers)
    else:
        init_ray(options)  # first: Ray's own SIGTERM handler would replace the one installed next
        if options.address not in LOCAL_ADDRESSES:  # this machine was checked before the start
            wait_for_capacity(options.request(), options.wait_for_resources_s)
        name = context.sweep + (f"-repair{repair}" if repair else "")  # its own Tune experiment
        executor = WithTune(options, axes, log, tune_dir, name, trackers)
    live.start_run(storage, time.time())  # for `analysis status --watch`
    try:
        with stop_on_signals() as caught:
            grows = rounds.grow is not None and not repair
            executor.run(list(plan.jobs), set(rounds.held.trained), rounds.extend if grows else None,
                         rounds.most_jobs if grows else 0)
    except KeyboardInterrupt:
        stop_trials()  # before the lock is released: no worker writes after it
        left = unrecorded(rounds.planned, storage)
        raise Interrupted(caught.signum, f"interrupted: {len(rounds.planned) + len(plan_pairs(rounds.planned)) - left} "
                          f"done, {left} not run; rerun the same command to continue") from None
    finally:
        live.clear(storage)


class Rounds:
    """The models a run covers and the plan of each round: the grid at once, or a
    refined sweep's rounds as `grow` adds cells (asked again whenever the executor's
    queue runs dry, `extend`)."""

    def __init__(self, grid: list[TrialConfig], grow: Grow | None, storage: Storage, policy: PackPolicy,
                 context: dict, held: Holdings) -> None:
        self.grow, self.storage, self.context = grow, storage, context
        self.packer = functools.partial(plan_packs, policy=policy)
        self.first_models = list(grid) if grow is None else grow([])
        self.planned = list(self.first_models)  # every model planned so far
        self.most_jobs = len(grid) + len(plan_pairs(grid))  # each job trains a model or measures a pair
        self.held = held  # what the folder holds at the start
        self.plans = [plan_run(self.planned, self.held, self.packer, context)]

    def extend(self) -> tuple[list[Job], set[str]]:
        """The jobs of the models `grow` adds, and the keys of the models trained so far."""
        new = self.grow(self.planned)
        self.planned += new
        self.held = holdings(self.storage)
        self.plans.append(plan_run(new, self.held, self.packer, self.context))
        return list(self.plans[-1].jobs), set(self.held.trained)


@contextlib.contextmanager
def sweep_lock(storage: Storage) -> Iterator[None]:
    """One driver per sweep folder: a second one refuses at once with a clear message.

    Only local (and network-mounted) folders are locked; on an object store two drivers
    would both run, and the keyed whole-file records still keep one row per trial.
    """
    if not storage.is_local:
        yield
        return
    from filelock import FileLock, Timeout

    storage.fs.create_dir(storage.root, recursive=True)
    lock = FileLock(storage.path(".driver.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError("--name", f"sweep {storage.root} is being run by another driver "
                          f"(lock {storage.path('.driver.lock')}); wait for it or pick another --name") from None
    try:
        yield
    finally:
        lock.release()


def exit_code(summary: RunSummary) -> int:
    return 1 if summary.failed else 0
