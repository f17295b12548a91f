"""Run a sweep: expand the spec, skip what is done, fan the rest out with Ray Tune.

The Parquet records are the source of truth: a trial whose `trials` row and metric
rows exist is done, so rerunning a command runs only what is missing and an extended
grid adds only its new points. Tune's own experiment folder is bookkeeping, kept under
`<sweep>/_tune` (the underscore hides it from Parquet discovery) for local storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from analysis.lens import spec_path
from sweeps.feasibility import LOCAL_ADDRESSES, Request, wait_for_capacity
from sweeps.interrupt import TUNE_SIGINT_ENV, Interrupted, stop_on_signals, stop_trials
from sweeps.pairs import PairPlan, plan_pairs
from sweeps.searcher import Extend, Job, SweepSearcher
from sweeps.spec import SweepSpec
from workers import live
from workers.catalog import TrialConfig
from workers.errors import ConfigError, StorageError, StorageFull
from workers.packing.plan import PackPlan, PackPolicy, plan_packs
from workers.records import MEASURES, PAIRS, TRIALS, measure_key, pending
from workers.runtime import RunContext
from workers.storage import Storage
from workers.tables import compact_after_run, quarantine_damaged

Log = Callable[[str], None]
# A refined sweep's further models, given those planned so far (sweeps.refine.Refiner.grow).
Grow = Callable[[list[TrialConfig]], list[TrialConfig]]


@dataclass(frozen=True)
class RunOptions:
    """How to run, not what: never part of a trial's identity."""

    address: str | None = None  # existing Ray cluster; None starts an embedded local Ray
    max_concurrent: int = 0  # 0: as many as resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | str = 0.0  # or "auto": each trial's share from its width (sweeps.resources)
    in_process: bool = False  # run trials one by one in this process (debugging)
    max_retries: int = 2  # attempts after the first for a failing job (e.g. a lost node)
    pack: str = "auto"  # "auto", "off" or a pack size: see workers.packing.plan
    wait_for_resources_s: float = 300.0  # on a cluster: how long a trial may find no node that fits
    loggers: tuple[str, ...] = ()  # Ray Tune logger callbacks to attach (`--log`, sweeps.loggers)

    def request(self) -> Request:
        """What one trial asks of a node (`auto`: up to a whole GPU, sweeps.resources)."""
        return Request(self.cpus_per_trial, 1.0 if self.gpus_per_trial == "auto" else float(self.gpus_per_trial))

    def training_device(self) -> str:
        """Where trials train, for `--pack auto`: a GPU when the jobs ask for one (or,
        in process, when this machine has one), else the CPU."""
        if self.in_process:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return "cuda" if self.gpus_per_trial == "auto" or float(self.gpus_per_trial) > 0 else "cpu"

    def pack_policy(self) -> PackPolicy:
        return PackPolicy.parse(self.pack, self.training_device())


def code_version() -> str:
    """Git commit of the project (with -dirty if modified), for every record."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pending_trials(configs: list[TrialConfig], storage: Storage) -> tuple[list[TrialConfig], set[str]]:
    """Configs whose model or any of whose metrics has no record yet, and the keys of
    the trained models (two listings)."""
    trained = set(storage.list_names(TRIALS, ".parquet"))
    return pending(configs, trained, set(storage.list_names(MEASURES, ".parquet"))), trained


def unrecorded(configs: list[TrialConfig], storage: Storage) -> int:
    """Models and seed pairs of `configs` with no record yet (a pack's job owes several)."""
    return len(pending_trials(configs, storage)[0]) + len(pending_pairs(configs, storage))


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


def pending_pairs(configs: list[TrialConfig], storage: Storage) -> list[PairPlan]:
    done = set(storage.list_names(PAIRS, ".parquet"))
    return [p for p in plan_pairs(configs) if p.key not in done]


def write_spec(storage: Storage, spec: SweepSpec, version: str, grid: list[TrialConfig]) -> None:
    """`spec.json`, the latest run's spec, and on a spec's first run `specs/<spec_id>.json`
    with the record key of every model, metric and pair of its grid: what readers keep
    (`analysis.lens`). The id hashes the grid's values, which determine those keys."""
    body = {**spec.to_json(), "code_version": version}
    body["spec_id"] = hashlib.sha256(json.dumps(body["values"], sort_keys=True).encode()).hexdigest()[:16]
    if not storage.exists(spec_path(body["spec_id"])):
        records = {TRIALS: sorted(c.trial_key for c in grid),
                   MEASURES: sorted(measure_key(c, m) for c in grid for m in c.measure.metrics),
                   PAIRS: sorted(p.key for p in plan_pairs(grid))}
        storage.write_bytes(spec_path(body["spec_id"]), json.dumps({**body, "records": records}).encode())
    storage.write_bytes("spec.json", json.dumps(body, indent=2).encode())


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
    """Train and measure every missing model and pair of `configs` (the expanded `spec`).

    `log` receives one line per event; None prints. (Tune pickles the progress callback,
    so it holds None rather than the builtin `print`, which pickles badly under capture.)
    `grow`, for a refined sweep, picks the models to run instead: those the records call
    for at the start, then more whenever the queue runs dry, until it has none.
    """
    start = time.perf_counter()
    say = log or print
    storage = Storage.open(spec.storage).child(spec.name)
    with sweep_lock(storage):
        for line in quarantine_damaged(storage):
            say(line)
        grid, configs = configs, (configs if grow is None else grow([]))
        todo, trained = pending_trials(configs, storage)
        pairs = pending_pairs(configs, storage)
        packs = plan_jobs_to_train(todo, trained, options.pack_policy())
        version = code_version()
        write_spec(storage, spec, version, grid)
        packed = sum(len(p.members) for p in packs if len(p.members) > 1)
        say(f"sweep {spec.name}: {len(configs)} models, {len(configs) - len(todo)} already done, "
            f"{len(todo)} to run ({packed} in {sum(len(p.members) > 1 for p in packs)} packs), "
            f"{len(pairs)} seed pairs to measure -> {storage.uri}")
        axes = list(spec.axes())
        context = RunContext(storage=storage.uri, sweep=spec.name, code_version=version,
                             threads=max(1, int(options.cpus_per_trial)), axes=tuple(axes))
        jobs = plan_jobs(packs, pairs, context)
        growth = _Growth(grow, grid, configs, storage, options.pack_policy(), context) if grow else None
        owed = growth.configs if growth else configs  # grows while a refined sweep runs
        if jobs and not options.in_process:
            init_ray(options)  # first: Ray's own SIGTERM handler would replace the one installed next
            if options.address not in LOCAL_ADDRESSES:  # this machine was checked before the start
                wait_for_capacity(options.request(), options.wait_for_resources_s)
        if jobs:
            live.start_run(storage, time.time())  # for `analysis status --watch`
        try:
            with stop_on_signals() as caught:
                if not jobs:
                    failed = 0
                elif options.in_process:
                    failed = sum(_run_in_process(batch, axes, log) for batch in _batches(jobs, growth))
                else:
                    failed_jobs = _run_with_tune(jobs, configs, todo, context, options, storage, axes, log, growth)
                    failed = unrecorded(owed, storage) if failed_jobs else 0
        except KeyboardInterrupt:
            stop_trials()  # before the lock is released: no worker writes after it
            left = unrecorded(owed, storage)
            raise Interrupted(caught.signum, f"interrupted: {len(owed) + len(plan_pairs(owed)) - left} done, "
                              f"{left} not run; rerun the same command to continue") from None
        finally:
            live.clear(storage)
        check_still_writable(storage, owed)
        for line in compact_after_run(storage):  # one file per table for readers (workers.tables)
            say(line)
    ran = len(todo) + len(pairs) + (growth.added if growth else 0)
    total = len(growth.configs) if growth else len(configs)
    return RunSummary(storage.uri, total, len(configs) - len(todo), ran - failed, failed,
                      time.perf_counter() - start)


class _Growth:
    """A refined sweep's further jobs, from `grow`; it keeps what it planned for the summary."""

    def __init__(self, grow: Grow, grid: list[TrialConfig], configs: list[TrialConfig], storage: Storage,
                 policy: PackPolicy, context: RunContext) -> None:
        self.grow, self.storage, self.policy, self.context = grow, storage, policy, context
        self.configs = list(configs)  # every model planned so far
        self.added = 0  # models and pairs added to run
        self.most_jobs = len(grid) + len(plan_pairs(grid))  # each job trains a model or measures a pair

    def __call__(self) -> tuple[list[Job], set[str]]:
        """Jobs of the models `grow` adds, and the keys of the models already trained."""
        new = self.grow(self.configs)
        self.configs += new
        todo, trained = pending_trials(new, self.storage)
        pairs = pending_pairs(new, self.storage)
        self.added += len(todo) + len(pairs)
        return plan_jobs(plan_jobs_to_train(todo, trained, self.policy), pairs, self.context), trained


def _batches(jobs: list[Job], growth: _Growth | None) -> Iterator[list[Job]]:
    """The jobs, then each batch a refined sweep adds once they are done, until none."""
    while jobs:
        yield jobs
        jobs = growth()[0] if growth else []


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


def plan_jobs_to_train(todo: list[TrialConfig], trained: set[str], policy: PackPolicy) -> list[PackPlan]:
    """Packs of the trials that have no model yet; a trained model that misses only a
    metric is measured by a solo job (it trains nothing, so it gains nothing in a pack)."""
    untrained = [c for c in todo if c.trial_key not in trained]
    measured_only = [PackPlan((c,), "trained already") for c in todo if c.trial_key in trained]
    return measured_only + plan_packs(untrained, policy)


def plan_jobs(packs: list[PackPlan], pairs: list[PairPlan], context: RunContext) -> list[Job]:
    """Tune jobs: one per solo trial or pack, then the pairs no pack measures itself.

    A pack measures each seed pair of its cells right after training (same worker, no
    queueing) when the pair's other model is in the pack too or was trained before.
    """
    ctx = asdict(context)
    pending = {c.trial_key for plan in packs for c in plan.members}
    jobs, folded = [], set()
    for plan in packs:
        if len(plan.members) == 1:
            cfg = plan.members[0]
            jobs.append(Job(cfg.trial_key, {"kind": "train", "trial": cfg.to_flat(), "context": ctx,
                                            "solo_reason": plan.solo_reason}))
            continue
        keys = {c.trial_key for c in plan.members}
        own = [p for p in pairs if _pack_measures(p, keys, pending)]
        folded.update(p.key for p in own)
        jobs.append(Job(plan.key, {
            "kind": "pack", "members": [c.to_flat() for c in plan.members], "context": ctx,
            "pairs": [{"a": p.a.to_flat(), "b": p.b.to_flat(), "with_mc": p.with_mc} for p in own],
        }, trains=tuple(sorted(keys))))
    jobs += [Job(p.key, {"kind": "pair", "a": p.a.to_flat(), "b": p.b.to_flat(), "with_mc": p.with_mc,
                         "context": ctx}, needs=(p.a.trial_key, p.b.trial_key))
             for p in pairs if p.key not in folded]
    return jobs


def _pack_measures(pair: PairPlan, pack: set[str], pending: set[str]) -> bool:
    """Whether the pack training `pack` measures `pair`: one model of the pair is in it,
    and the other too or trained already (not pending in this run)."""
    models = (pair.a.trial_key, pair.b.trial_key)
    return any(k in pack for k in models) and all(k in pack or k not in pending for k in models)


def _run_in_process(jobs: list[Job], axes: list[str], log: Log | None) -> int:
    """The debug executor: the same jobs through the same `run_job` as Tune's trainable,
    one after another (every job a pair needs comes before it), no Ray."""
    from sweeps.progress import Tally, Terminal, format_lines, job_size
    from workers.tune_entry import run_job

    tally, terminal = Tally(job.config for job in jobs), Terminal(log)
    total = sum(job_size(job.config) for job in jobs)
    for job in jobs:
        tally.start(job.key, job.config)
        terminal.progress(tally.progress)
        result = run_job(job.config)
        for line in format_lines(tally.done, total, job.config, result, axes):
            terminal.line(line)
        tally.end(job.key, job.config, ok=True)
    terminal.progress(tally.progress, last=True)
    return 0


def _run_with_tune(
    jobs: list[Job], configs: list[TrialConfig], todo: list[TrialConfig], context: RunContext,
    options: RunOptions, storage: Storage, axes: list[str], log: Log | None, growth: _Growth | None = None,
) -> int:
    """Fan the sweep's jobs out through Tune; returns the number that failed after retries."""
    from sweeps.loggers import logger_callbacks
    from sweeps.progress import OneLinePerTrial, Terminal

    pending = {c.trial_key for c in todo}
    tune_dir = storage.path("_tune") if storage.is_local else os.path.expanduser("~/ray_results")
    progress = OneLinePerTrial([j.config for j in jobs], axes, Terminal(log))

    def extend() -> tuple[list[Job], set[str]]:  # more jobs, counted in the progress lines
        more, trained = growth()
        progress.add([j.config for j in more])
        return more, trained

    loggers = logger_callbacks(options.loggers, context.sweep, axes, tune_dir)
    return run_jobs(jobs, finished={c.trial_key for c in configs if c.trial_key not in pending},
                    options=options, tune_dir=tune_dir, name=context.sweep, callbacks=[progress, *loggers],
                    extend=extend if growth else None, max_jobs=growth.most_jobs if growth else 0)


# Jobs per Tune experiment. Tune's controller keeps every trial of an experiment in
# memory and rewrites the whole experiment state as it goes, so its cost per trial grows
# with the experiment's size; experiments of this many jobs keep it flat (bench/scale.py).
SHARD_SIZE = 2500
# Trials Tune may hold pending (resources requested ahead of a free slot). With a custom
# searcher Tune's default is 1: trials start one at a time and the autoscaler sees a
# demand of one trial at a time. `--max-concurrent`, when given, is used instead.
MAX_PENDING_TRIALS = 16
PENDING_ENV = "TUNE_MAX_PENDING_TRIALS_PG"  # Tune reads these two when an experiment starts
# Tune's per-trial JSON/CSV/TensorBoard result files: the Parquet records already hold
# every result, and at thousands of trials these files cost time and driver memory.
NO_TRIAL_LOGS_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


def shard_jobs(jobs: list[Job], size: int = SHARD_SIZE) -> list[list[Job]]:
    """Consecutive groups of about `size` training jobs, each with the pair jobs whose
    models it trains. A cut never falls between two members of one pair, so every pair
    runs in the shard that trains its models (pairs whose models were trained before this
    run go to the first shard), and each shard's searcher works on its own."""
    train = [j for j in jobs if not j.needs]
    position = {key: i for i, j in enumerate(train) for key in j.trained}
    spans = [[position[k] for k in j.needs if k in position] for j in jobs if j.needs]
    open_pairs = [0] * (len(train) + 1)  # pairs spanning the boundary after each index
    for span in filter(None, spans):
        open_pairs[min(span)] += 1
        open_pairs[max(span)] -= 1
    shards: list[list[Job]] = [[]]
    shard_of: dict[str, int] = {}
    spanning = 0
    for i, job in enumerate(train):
        shards[-1].append(job)
        shard_of[job.key] = len(shards) - 1
        spanning += open_pairs[i]
        if len(shards[-1]) >= size and spanning == 0 and i + 1 < len(train):
            shards.append([])
    for job, span in zip([j for j in jobs if j.needs], spans):
        shards[shard_of[train[max(span)].key] if span else 0].append(job)
    return [shard for shard in shards if shard]


@contextlib.contextmanager
def _env_default(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for the block unless the user set it already."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        del os.environ[name]


def run_jobs(
    jobs: list[Job], *, finished: set[str], options: RunOptions, tune_dir: str, name: str,
    callbacks: list | None = None, trainable=None, shard_size: int = SHARD_SIZE, extend: Extend | None = None,
    max_jobs: int = 0,
) -> int:
    """Run jobs through Tune with the project's settings (actor reuse, retries, pair-aware
    searcher, per-job GPU share, experiments of at most about `shard_size` jobs); returns
    the number that failed. `trainable` defaults to the real trial function. With `extend`
    (a refined sweep, whose jobs grow as it runs, to at most `max_jobs`) all jobs run in
    one experiment."""
    from ray import tune

    from sweeps.resources import job_gpus
    from workers.tune_entry import tune_job

    init_ray(options)
    # Tune's result grid looks for the per-trial logs turned off below and warns once per
    # trial; the Parquet records are what we read, so that warning is noise.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    cpus, gpus = options.cpus_per_trial, options.gpus_per_trial
    function = tune.with_resources(trainable or tune_job,
                                   lambda config: {"cpu": cpus, "gpu": job_gpus(config, gpus)})
    shards = [jobs] if extend else shard_jobs(jobs, shard_size)
    stamp = int(time.time())
    failed = 0
    with (_env_default(PENDING_ENV, str(options.max_concurrent or MAX_PENDING_TRIALS)),
          _env_default(NO_TRIAL_LOGS_ENV, "1"), _env_default(TUNE_SIGINT_ENV, "1")):
        for i, shard in enumerate(shards):
            experiment = f"{name}-{stamp}" + (f"-{i + 1}of{len(shards)}" if len(shards) > 1 else "")
            tuner = tune.Tuner(
                function,
                tune_config=tune.TuneConfig(
                    search_alg=SweepSearcher(shard, finished, extend),
                    num_samples=max_jobs if extend else len(shard),
                    max_concurrent_trials=options.max_concurrent or None,
                    reuse_actors=True,
                    trial_dirname_creator=lambda trial: trial.trial_id,
                ),
                run_config=tune.RunConfig(
                    name=experiment,
                    storage_path=tune_dir,
                    failure_config=tune.FailureConfig(max_failures=options.max_retries),
                    verbose=0,
                    callbacks=list(callbacks or []),  # a fresh list: Tune appends its own to it
                ),
            )
            try:
                with ray_output_to(os.path.join(tune_dir, experiment, "output.log")):
                    results = tuner.fit()
                failed += sum(1 for r in results if r.error is not None)
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                # Tune's own files (under _tune/) could not be written or read back, e.g. on a
                # full disk: count the whole shard as failed; the driver recounts from the records.
                logging.getLogger(__name__).warning("Ray Tune's bookkeeping failed (%s: %s)", type(exc).__name__, exc)
                failed += len(shard)
    return failed


@contextlib.contextmanager
def ray_output_to(path: str) -> Iterator[None]:
    """Send what Tune prints while it runs (its banner table, "View detailed results
    here", the workers' forwarded stdout) to `path`, leaving the terminal to the driver's
    own lines, which hold their stream from before (`sweeps.progress.Terminal`).
    Tune's warnings go through logging to stderr, as before."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as out, contextlib.redirect_stdout(out):
        yield


def init_ray(options: RunOptions) -> None:
    """Connect to `--address`, or start an embedded Ray, unless already connected. The
    embedded one is always new ("local"): `ray.init()` without an address would join a
    Ray someone started on this machine with `ray start`, and the sweep with it."""
    import ray

    if not ray.is_initialized():
        ray.init(address=options.address or "local", include_dashboard=False, logging_level="WARNING")


def exit_code(summary: RunSummary) -> int:
    return 1 if summary.failed else 0
