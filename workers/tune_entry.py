"""The Ray Tune function: unpack the job, run it, report one result.

Ray ships only this function's reference to the worker; a job's configuration arrives
as plain values (`TrialConfig.to_flat()` dicts), so any node with the project installed
can run it. Three kinds of job: `train` (one model, `workers.trial`), `pack` (models
trained as one network, then their seed pairs, `workers.packing.job`) and `pair` (two
trained seeds of a cell, `workers.pair_trial`). `--in-process` runs the same `run_job`.
"""

from __future__ import annotations

import socket
import time
import traceback
from typing import Any

from workers.config import TrialConfig
from workers.records import to_table
from workers.storage import Storage
from workers.trial import RunContext, run_trial

# Scalars reported to Tune (and so to the driver's progress line); records hold the rest.
REPORTED = ("status", "train_loss", "train_acc", "test_loss", "test_acc", "mc_train_error",
            "cka_softmax", "l2_distance", "time_total_s", "host")


def job_key(config: dict[str, Any]) -> str:
    if config["kind"] == "pack":
        from workers.packing.plan import pack_id

        return pack_id([TrialConfig.from_flat(flat).trial_key for flat in config["members"]])
    if config["kind"] == "pair":
        from workers.pair_trial import pair_key

        return pair_key(TrialConfig.from_flat(config["a"]), TrialConfig.from_flat(config["b"]),
                        config["with_mc"])
    return TrialConfig.from_flat(config["trial"]).trial_key


def run_job(config: dict[str, Any]) -> dict[str, Any]:
    """Run one job described by plain values; returns the row it recorded."""
    context = RunContext(**config["context"])
    if config["kind"] == "pair":
        from workers.pair_trial import run_pair

        a, b = TrialConfig.from_flat(config["a"]), TrialConfig.from_flat(config["b"])
        return run_pair(a, b, config["with_mc"], context)
    if config["kind"] == "pack":
        from workers.packing.job import run_pack

        members = [TrialConfig.from_flat(flat) for flat in config["members"]]
        pairs = [(TrialConfig.from_flat(p["a"]), TrialConfig.from_flat(p["b"]), p["with_mc"])
                 for p in config["pairs"]]
        return summarize_pack(run_pack(members, pairs, context), len(members))
    assert config["kind"] == "train", f"unknown job kind {config['kind']!r}"
    return run_trial(TrialConfig.from_flat(config["trial"]), context, config.get("solo_reason", ""))


def summarize_pack(rows: list[dict[str, Any]], members: int) -> dict[str, Any]:
    """One result for a pack job: its members' outcomes (mean figures over those that
    trained to the end), for Tune and the progress line; the records hold each row."""
    models, pairs = rows[:members], rows[members:]
    ok = [r for r in models if r["status"] == "ok"]
    diverged = len(models) - len(ok)
    summary: dict[str, Any] = {
        "status": "ok" if not diverged else f"{diverged} of {members} diverged",
        "pack_size": members, "pairs": len(pairs),
        "time_total_s": max(r["time_total_s"] for r in models), "host": models[0]["host"],
    }
    for name in REPORTED:
        values = [r[name] for r in ok if isinstance(r.get(name), float)]
        if values and name not in summary:
            summary[name] = sum(values) / len(values)
    return summary


def record_failure(config: dict[str, Any], exc: BaseException) -> None:
    """Write `failures/<key>.<time>.parquet` (one file per failed attempt) for `status`."""
    key = job_key(config)
    row = {"key": key, "kind": config["kind"], "error": f"{type(exc).__name__}: {exc}",
           "traceback": traceback.format_exc(), "host": socket.gethostname(),
           "failed_at": time.time()}
    Storage.open(config["context"]["storage"]).write_table("failures", f"{key}.{time.time_ns()}", to_table([row]))


def tune_job(config: dict[str, Any]) -> None:
    from ray import tune

    try:
        row = run_job(config)
    except Exception as exc:  # record why, then let Ray retry or mark the trial failed
        try:
            record_failure(config, exc)
        except OSError:
            pass  # the storage itself is what failed; Ray still has the traceback
        raise
    tune.report({k: row[k] for k in REPORTED if k in row})
