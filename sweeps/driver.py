"""Run a sweep: expand the spec, skip what is done, fan the rest out with Ray Tune.

The Parquet records are the source of truth: a trial whose `trials` row and metric
rows exist is done, so rerunning a command runs only what is missing and an extended
grid adds only its new points. Tune's own experiment folder is bookkeeping, kept under
`<sweep>/_tune` (the underscore hides it from Parquet discovery) for local storage.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sweeps.spec import SweepSpec, describe
from workers.config import TrialConfig
from workers.storage import Storage
from workers.trial import RunContext, missing_metrics, run_trial


@dataclass(frozen=True)
class RunOptions:
    """How to run, not what: never part of a trial's identity."""

    address: str | None = None  # existing Ray cluster; None starts an embedded local Ray
    max_concurrent: int = 0  # 0: as many as resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    in_process: bool = False  # run trials one by one in this process (debugging)


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


def pending_trials(configs: list[TrialConfig], storage: Storage) -> list[TrialConfig]:
    """Configs whose model or any of whose metrics has no record yet (two listings)."""
    trained = set(storage.list_names("trials", ".parquet"))
    measured = set(storage.list_names("measures", ".parquet"))
    return [c for c in configs if c.trial_key not in trained or missing_metrics(c, measured)]


def write_spec(storage: Storage, spec: SweepSpec, version: str) -> None:
    body = {**spec.to_json(), "code_version": version}
    storage.write_bytes("spec.json", json.dumps(body, indent=2).encode())


@dataclass
class RunSummary:
    total: int
    skipped: int
    ran: int
    failed: int
    seconds: float


def run(spec: SweepSpec, configs: list[TrialConfig], options: RunOptions, log=print) -> RunSummary:
    """Run every missing trial of `configs` (the expanded `spec`); returns counts."""
    start = time.perf_counter()
    storage = Storage.open(spec.storage).child(spec.name)
    todo = pending_trials(configs, storage)
    version = code_version()
    write_spec(storage, spec, version)
    log(f"sweep {spec.name}: {len(configs)} trials, {len(configs) - len(todo)} already done, "
        f"{len(todo)} to run -> {storage.uri}")
    if not todo:
        return RunSummary(len(configs), len(configs), 0, 0, time.perf_counter() - start)
    context = RunContext(storage=storage.uri, sweep=spec.name, code_version=version,
                         threads=max(1, int(options.cpus_per_trial)))
    axes = list(spec.axes())
    if options.in_process:
        failed = 0
        for i, cfg in enumerate(todo, 1):
            row = run_trial(cfg, context)
            log(f"[{i}/{len(todo)}] {describe(cfg.to_flat(), axes)}  {row['status']}")
        return RunSummary(len(configs), len(configs) - len(todo), len(todo), failed,
                          time.perf_counter() - start)
    failed = _run_with_tune(todo, context, options, storage, axes, log)
    return RunSummary(len(configs), len(configs) - len(todo), len(todo) - failed, failed,
                      time.perf_counter() - start)


def _run_with_tune(
    todo: list[TrialConfig], context: RunContext, options: RunOptions, storage: Storage,
    axes: list[str], log,
) -> int:
    """Fan the pending trials out as one Tune grid; returns the number that failed."""
    import ray
    from ray import tune

    from sweeps.progress import OneLinePerTrial
    from workers.tune_entry import tune_trial

    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, logging_level="WARNING",
                 configure_logging=True, log_to_driver=True)
    resources = {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}
    trainable = tune.with_resources(tune_trial, resources)
    tune_dir = storage.path("_tune") if storage.is_local else os.path.expanduser("~/ray_results")
    tuner = tune.Tuner(
        trainable,
        param_space={
            "trial": tune.grid_search([c.to_flat() for c in todo]),
            "context": asdict(context),
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=options.max_concurrent or None,
            reuse_actors=True,
            trial_dirname_creator=lambda trial: TrialConfig.from_flat(trial.config["trial"]).trial_key,
        ),
        run_config=tune.RunConfig(
            name=f"{context.sweep}-{int(time.time())}",
            storage_path=tune_dir,
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=0,
            callbacks=[OneLinePerTrial(len(todo), axes, log)],
        ),
    )
    results = tuner.fit()
    return sum(1 for r in results if r.error is not None)


def exit_code(summary: RunSummary) -> int:
    return 1 if summary.failed else 0
