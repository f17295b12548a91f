"""The Ray Tune function: unpack the job, run it, report its epochs and its outcome.

Ray ships only this function's reference to the worker; a job's configuration arrives
as plain values (`TrialConfig.to_flat()` dicts), so any node with the project installed
can run it. Three kinds of job: `train` (one model, `workers.jobs.trial`), `pack` (models
trained as one network, then their seed pairs, `workers.jobs.pack_job`) and `pair` (two
trained seeds of a cell, `workers.jobs.pair_trial`). `--in-process` runs the same `run_job`.
"""

from __future__ import annotations

import queue
import socket
import sys
import threading
import time
import traceback
from typing import Any

from workers import metrics, pair_metrics
from workers.catalog import TrialConfig
from workers.core.errors import is_transient
from workers.core.live import JobProgress, Report, Unit, unit_values
from workers.core.records import FAILED, FAILURES, pair_key, record_path, to_table
from workers.core.storage import Storage
from workers.jobs.pack_job import run_pack
from workers.jobs.pair_trial import run_pair
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial
from workers.packing.policy import pack_id


def reported_columns() -> tuple[str, ...]:
    """Scalars of a trials or pairs row reported to Tune at a job's end (and so to the
    driver's lines and trackers): the outcome, then what each metric and pair metric
    declares `live` on its registry entry (what places a model or a cell on the phase
    diagram, `analysis.phases`); the records hold the rest. Asked when needed, so a
    metric registered after this module was imported is reported too."""
    return ("status", "train_loss", "train_acc", "test_loss", "test_acc", *metrics.live_columns(),
            *pair_metrics.live_columns(), "epochs_done", "time_total_s", "host")


def job_parts(config: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The flat configs of the models a job trains and the pairs (`{"a", "b", "with_mc"}`)
    it measures, in the order of `job_units`."""
    if config["kind"] == "pair":
        return [], [config]
    if config["kind"] == "pack":
        return config["members"], config["pairs"]
    return [config["trial"]], []


def job_units(config: dict[str, Any], axes: tuple[str, ...] = ()) -> list[Unit]:
    """The models and pairs a job records: its model or pair, or a pack's models and the
    pairs it measures, with the values that label them on the grid (`axes`)."""
    def model(flat: dict[str, Any]) -> Unit:
        return Unit(TrialConfig.from_flat(flat).trial_key, "train", unit_values(flat, axes))

    def pair(spec: dict[str, Any]) -> Unit:
        a, b = spec["a"], spec["b"]
        key = pair_key(TrialConfig.from_flat(a), TrialConfig.from_flat(b), spec["with_mc"])
        return Unit(key, "pair", {**unit_values(a, axes), "seed": f"{a['seed']},{b['seed']}"})

    models, pairs = job_parts(config)
    return [model(flat) for flat in models] + [pair(spec) for spec in pairs]


def job_records(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(record key, kind) of everything a job records. A failed job is filed under each
    of them, so `analysis status` lists what is missing and clears each once it is recorded."""
    return [(unit.key, unit.kind) for unit in job_units(config)]


def job_progress(config: dict[str, Any], context: RunContext, report: Report | None) -> JobProgress:
    """The job's progress (`workers.core.live`), named by its model, pair or pack id."""
    units = job_units(config, tuple(context.axes))
    models = [u.key for u in units if u.kind == "train"]
    name = pack_id(models) if config["kind"] == "pack" else units[0].key
    return JobProgress(Storage.open(context.storage), name, config["kind"], units,
                       max((flat["epochs"] for flat in job_parts(config)[0]), default=0), report)


def run_job(config: dict[str, Any], report: Report | None = None) -> dict[str, Any]:
    """Run one job described by plain values; returns the row it recorded (a pack: its
    summary). `report` receives each epoch's figures (`workers.core.live.JobProgress`).

    A job that fails is filed (`file_failure`). A transient failure (`is_transient`: the
    storage, memory) raises, so the executor tries the job again; any other would repeat
    on every attempt, so the job returns `failed_result` instead and is not retried. The
    progress file goes last, once the job is recorded or filed."""
    context = RunContext(**config["context"])
    progress = job_progress(config, context, report).start()
    try:
        return _run(config, context, progress)
    except Exception as exc:
        filed = file_failure(config, exc)
        if is_transient(exc):
            raise
        return failed_result(exc, filed)
    finally:
        progress.finish()


def failed_result(exc: BaseException, filed: str) -> dict[str, Any]:
    """The result of a job that failed for good: what failed, and the record that says
    more (`failures/...` in the sweep folder, "" if it could not be written)."""
    return {"status": FAILED, "error": f"{type(exc).__name__}: {exc}", "failure": filed}


def _run(config: dict[str, Any], context: RunContext, progress: JobProgress) -> dict[str, Any]:
    if config["kind"] == "pair":
        a, b = TrialConfig.from_flat(config["a"]), TrialConfig.from_flat(config["b"])
        return run_pair(a, b, config["with_mc"], context)
    if config["kind"] == "pack":
        members = [TrialConfig.from_flat(flat) for flat in config["members"]]
        pairs = [(TrialConfig.from_flat(p["a"]), TrialConfig.from_flat(p["b"]), p["with_mc"])
                 for p in config["pairs"]]
        return summarize_pack(run_pack(members, pairs, context, progress), len(members))
    assert config["kind"] == "train", f"unknown job kind {config['kind']!r}"
    return run_trial(TrialConfig.from_flat(config["trial"]), context, config.get("solo_reason", ""), progress)


def summarize_pack(rows: list[dict[str, Any]], members: int) -> dict[str, Any]:
    """One result for a pack job: its status, and each model's and pair's reported
    scalars by trial or pair key, in the job's order (the driver's lines zip them with
    its members and pairs, its trackers log each to its model's or pair's run); the
    records hold every row in full."""
    models, pairs = rows[:members], rows[members:]
    diverged = sum(r["status"] != "ok" for r in models)
    return {"status": "ok" if not diverged else f"{diverged} of {members} diverged", "pack_size": members,
            "time_total_s": max(r["time_total_s"] for r in rows), "host": models[0]["host"],
            "epochs_done": max(r["epochs_done"] for r in models),
            "members": {r["trial_key"]: reported(r) for r in models},
            "pairs": {r["pair_key"]: reported(r) for r in pairs}}


def reported(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in reported_columns() if k in row}


def file_failure(config: dict[str, Any], exc: BaseException) -> str:
    """Record why a job failed; returns the first record's path in the sweep folder. If
    the storage itself fails, say so on stderr (a worker's stderr reaches the driver's
    terminal) and return ""."""
    try:
        return record_failure(config, exc)
    except OSError as lost:
        print(f"error: could not record the failure of {', '.join(k for k, _ in job_records(config))} "
              f"({lost}); the failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return ""


def record_failure(config: dict[str, Any], exc: BaseException) -> str:
    """Write `failures/<key>.<time>.parquet` (one file per failed attempt and record
    the job owes) for `status`; returns the first one's path in the sweep folder."""
    storage = Storage.open(config["context"]["storage"])
    where = f" (in a pack of {len(config['members'])})" if config["kind"] == "pack" else ""
    written = []
    for key, kind in job_records(config):
        row = {"key": key, "kind": kind, "error": f"{type(exc).__name__}: {exc}{where}",
               "traceback": traceback.format_exc(), "host": socket.gethostname(), "failed_at": time.time()}
        name = f"{key}.{time.time_ns()}"
        storage.write_table(FAILURES, name, to_table([row]))
        written.append(record_path(FAILURES, name))
    return written[0]


def tune_job(config: dict[str, Any]) -> None:
    """The Tune function: each epoch's figures to `tune.report` as training goes, then
    the job's outcome (with the last epoch as `timesteps_total`); the driver's trackers
    (`sweeps.watch.trackers`) split both into the runs of the job's models and pairs."""
    from ray import tune

    with Background(tune.report) as report:
        row = run_job(config, report)
    result = row if config["kind"] == "pack" or row["status"] == FAILED else reported(row)
    tune.report({**result, "timesteps_total": result["epochs_done"]} if result.get("epochs_done") else result)


class Background:
    """Calls `report` on a thread of its own, in order. Tune's report blocks its caller
    until the driver has taken the result (its trackers included: an MLflow write is tens
    of milliseconds) and asked for the next; here training hands the result over and goes
    on. Leaving the block waits for every result to be delivered and raises the first
    error `report` raised."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._deliver, name="tune-report", daemon=True)

    def __enter__(self) -> Report:
        self._thread.start()
        return self._queue.put

    def __exit__(self, *exc_info: Any) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc_info[0] is None:
            raise self._error

    def _deliver(self) -> None:
        while (result := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._report(result)
                except BaseException as exc:  # raised in the job's thread by __exit__
                    self._error = exc
