"""The Ray Tune function: unpack the job, run it, report one result.

Ray ships only this function's reference to the worker; a job's configuration arrives
as plain values (`TrialConfig.to_flat()` dicts), so any node with the project installed
can run it. Three kinds of job: `train` (one model, `workers.trial`), `pack` (models
trained as one network, then their seed pairs, `workers.packing.job`) and `pair` (two
trained seeds of a cell, `workers.pair_trial`). `--in-process` runs the same `run_job`.
"""

from __future__ import annotations

import socket
import sys
import time
import traceback
from typing import Any

from workers.catalog import TrialConfig
from workers.packing.job import run_pack
from workers.pair_trial import run_pair
from workers.records import FAILURES, pair_key, to_table
from workers.runtime import RunContext
from workers.storage import Storage
from workers.trial import run_trial

# Scalars reported to Tune (and so to the driver's progress line); records hold the rest.
REPORTED = ("status", "train_loss", "train_acc", "test_loss", "test_acc", "mc_train_error",
            "cka_softmax", "l2_distance", "time_total_s", "host")


def job_records(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(record key, kind) of everything a job records: its model or pair, or a pack's
    models and the pairs it measures. A failed job is filed under each of them, so
    `analysis status` lists what is missing and clears each once it is recorded."""
    if config["kind"] == "pair":
        return [(pair_key(TrialConfig.from_flat(config["a"]), TrialConfig.from_flat(config["b"]),
                          config["with_mc"]), "pair")]
    if config["kind"] == "pack":
        models = [(TrialConfig.from_flat(flat).trial_key, "train") for flat in config["members"]]
        return models + [(pair_key(TrialConfig.from_flat(p["a"]), TrialConfig.from_flat(p["b"]), p["with_mc"]),
                          "pair") for p in config["pairs"]]
    return [(TrialConfig.from_flat(config["trial"]).trial_key, "train")]


def run_job(config: dict[str, Any]) -> dict[str, Any]:
    """Run one job described by plain values; returns the row it recorded."""
    context = RunContext(**config["context"])
    if config["kind"] == "pair":
        a, b = TrialConfig.from_flat(config["a"]), TrialConfig.from_flat(config["b"])
        return run_pair(a, b, config["with_mc"], context)
    if config["kind"] == "pack":
        members = [TrialConfig.from_flat(flat) for flat in config["members"]]
        pairs = [(TrialConfig.from_flat(p["a"]), TrialConfig.from_flat(p["b"]), p["with_mc"])
                 for p in config["pairs"]]
        return summarize_pack(run_pack(members, pairs, context), len(members))
    assert config["kind"] == "train", f"unknown job kind {config['kind']!r}"
    return run_trial(TrialConfig.from_flat(config["trial"]), context, config.get("solo_reason", ""))


def summarize_pack(rows: list[dict[str, Any]], members: int) -> dict[str, Any]:
    """One result for a pack job: its status, and each model's and pair's reported
    scalars (for the progress lines); the records hold every row in full."""
    models, pairs = rows[:members], rows[members:]
    diverged = sum(r["status"] != "ok" for r in models)
    return {"status": "ok" if not diverged else f"{diverged} of {members} diverged", "pack_size": members,
            "time_total_s": max(r["time_total_s"] for r in rows), "host": models[0]["host"],
            "members": [reported(r) for r in models], "pairs": [reported(r) for r in pairs]}


def reported(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in REPORTED if k in row}


def record_failure(config: dict[str, Any], exc: BaseException) -> None:
    """Write `failures/<key>.<time>.parquet` (one file per failed attempt and record
    the job owes) for `status`."""
    storage = Storage.open(config["context"]["storage"])
    where = f" (in a pack of {len(config['members'])})" if config["kind"] == "pack" else ""
    for key, kind in job_records(config):
        row = {"key": key, "kind": kind, "error": f"{type(exc).__name__}: {exc}{where}",
               "traceback": traceback.format_exc(), "host": socket.gethostname(), "failed_at": time.time()}
        storage.write_table(FAILURES, f"{key}.{time.time_ns()}", to_table([row]))


def tune_job(config: dict[str, Any]) -> None:
    from ray import tune

    try:
        row = run_job(config)
    except Exception as exc:  # record why, then let Ray retry or mark the trial failed
        try:
            record_failure(config, exc)
        except OSError as lost:  # the storage itself failed: say it here, the driver's terminal shows it
            print(f"error: could not record the failure of {', '.join(k for k, _ in job_records(config))} "
                  f"({lost}); the failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    tune.report(row if config["kind"] == "pack" else reported(row))
