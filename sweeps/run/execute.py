"""Executors: run a plan's jobs to the end, through Ray Tune or in this process.

Both run the same jobs (`sweeps.run.plan`) through the same job function
(`workers.jobs.tune_entry.run_job`) under one contract, so `--in-process` is the Tune run
without Ray, not a different program:
- a job whose failure would repeat (`workers.core.errors.is_transient` says no) ends at once,
  recorded and named on its line; a transient failure (storage, memory, a lost node) is
  tried again, up to `--max-retries` more times;
- a pair runs once both its models are trained; one whose model failed is not run;
- a refined sweep's further jobs (`extend`) are asked for whenever the queue runs dry,
  until there are none;
- one line per model and pair as its job ends, and the progress line (`sweeps.watch.terminal`);
- every result a job reports goes to the trackers of `--log` (`sweeps.watch.trackers`), which
  keep one run per model and pair, so `--in-process` logs as the Tune run does.
Neither counts failures: the driver counts what the records lack once the executor
returns, the same way for both. Ctrl-C reaches both as KeyboardInterrupt (the driver's
`stop_on_signals`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from sweeps.run.plan import Extend, Job
from sweeps.run.ray_output import ray_output_to, route_ray_logging, route_worker_output
from workers.core.records import FAILED

if TYPE_CHECKING:
    from sweeps.run.options import RunOptions
    from sweeps.watch.trackers import Trackers

Log = Callable[[str], None]


class InProcess:
    """The debug executor: one job after another in this process, no Ray."""

    def __init__(self, options: RunOptions, axes: list[str], log: Log | None, trackers: Trackers) -> None:
        self.options, self.axes, self.log, self.trackers = options, axes, log, trackers

    def run(self, jobs: list[Job], finished: set[str], extend: Extend | None = None, max_jobs: int = 0) -> None:
        from sweeps.watch.terminal import Tally, Terminal, failed_for_good, format_lines, job_size

        tally, terminal = Tally(job.config for job in jobs), Terminal(self.log)
        total = sum(job_size(job.config) for job in jobs)
        models = set(finished)  # trial keys of the models that exist
        self.trackers.skip(set(finished))
        queue = list(jobs)
        try:
            while queue:
                for job in queue:
                    tally.start(job.key, job.config)
                    terminal.progress(tally.progress)
                    result = self._attempts(job, models)
                    self.trackers.result(job.key, job.config, result)
                    for line in format_lines(tally.done + tally.failed, total, job.config, result, self.axes):
                        terminal.line(line)
                    failed = failed_for_good(result)
                    tally.end(job.key, job.config, ok=not failed)
                    if not failed:
                        models.update(job.trained)
                queue, more = extend() if extend else ([], set())
                models |= more
                tally.add(job.config for job in queue)
                total += sum(job_size(job.config) for job in queue)
        finally:
            self.trackers.close()
        terminal.progress(tally.progress, last=True)

    def _attempts(self, job: Job, models: set[str]) -> dict[str, Any]:
        """The job's result after at most 1 + max_retries attempts (transient failures
        only); each epoch goes to the trackers as it ends, as Tune's results do."""
        from workers.jobs.tune_entry import run_job

        missing = [k for k in job.needs if k not in models]
        if missing:
            return {"status": FAILED, "error": f"model(s) {', '.join(missing)} of this pair did not train",
                    "failure": ""}
        for attempt in range(self.options.max_retries + 1):
            try:
                return run_job(job.config, lambda result: self.trackers.result(job.key, job.config, result))
            except Exception as exc:  # transient (run_job returns the others): try again
                error = f"{type(exc).__name__}: {exc} (after {attempt + 1} attempts)"
        return {"status": FAILED, "error": error, "failure": ""}


class WithTune:
    """The Ray Tune executor: jobs as Tune trials on the embedded Ray or a cluster."""

    def __init__(self, options: RunOptions, axes: list[str], log: Log | None, tune_dir: str, name: str,
                 trackers: Trackers) -> None:
        self.options, self.axes, self.log = options, axes, log
        self.tune_dir, self.name, self.trackers = tune_dir, name, trackers

    def run(self, jobs: list[Job], finished: set[str], extend: Extend | None = None, max_jobs: int = 0) -> None:
        from sweeps.watch.terminal import OneLinePerTrial, Terminal
        from sweeps.watch.trackers import TrackerCallback

        progress = OneLinePerTrial([j.config for j in jobs], self.axes, Terminal(self.log))
        self.trackers.skip(set(finished))

        def counted() -> tuple[list[Job], set[str]]:  # more jobs, counted in the progress lines
            more, trained = extend()
            progress.add([j.config for j in more])
            return more, trained

        try:
            run_jobs(jobs, finished=finished, options=self.options, tune_dir=self.tune_dir, name=self.name,
                     callbacks=[progress, TrackerCallback(self.trackers)], extend=counted if extend else None,
                     max_jobs=max_jobs)
        finally:
            self.trackers.close()


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
    """Run jobs through Tune with the project's settings (actor reuse, retries of
    transient failures, pair-aware searcher, per-job GPU share, experiments of at most
    about `shard_size` jobs); returns the number of Tune trials that errored (a job that
    failed for good returns a result instead, `workers.jobs.tune_entry.run_job`).
    `trainable` defaults to the real job function. With `extend` (a refined sweep, whose
    jobs grow as it runs, to at most `max_jobs`) all jobs run in one experiment."""
    from ray import tune

    from sweeps.preflight.resources import job_gpus
    from sweeps.run.interrupt import TUNE_SIGINT_ENV
    from sweeps.run.searcher import SweepSearcher
    from workers.jobs.tune_entry import tune_job

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


def init_ray(options: RunOptions) -> None:
    """Connect to `--address`, or start an embedded Ray, unless already connected, and send
    Ray's own output to the sweep's log (`sweeps.run.ray_output`). The embedded one is always
    new ("local"): `ray.init()` without an address would join a Ray someone started on
    this machine with `ray start`, and the sweep with it."""
    import ray

    route_ray_logging()  # first: what Ray says as it starts goes to the log too
    if not ray.is_initialized():
        ray.init(address=options.address or "local", include_dashboard=False, logging_level="WARNING")
    route_worker_output()
