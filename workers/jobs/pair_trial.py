"""One pair job: two trained models of the same cell, measured by the pair metrics.

`run_pair` needs no Ray (the scheduler wraps it like `run_trial`). It reads both models'
`final` checkpoints from the sweep storage, runs every pair metric the pair calls for
(`workers.pair_metrics`) and writes, in this order,

    curves/<pair_key>.<metric>.parquet   a metric's curve (the Bezier curve): one row per (t, split)
    pairs/<pair_key>.parquet             one row: every metric's scalars and time (marks the pair done)

A pair whose `pairs` row exists is skipped; a metric whose curve was written before a
crash gets it back instead of refitting, if that curve was fitted on the same weights.
Every row carries the `weights_id` of both models (lineage, `workers.core.records`), taken
from their trials rows after checking that each `final` checkpoint holds those weights.
A metric that cannot be computed on this pair (a non-transient error) leaves its
scalars NaN and names the error; the pair's other metrics still run. Which pairs to run (every unordered seed pair
of a cell; the first `pairs.mc_pairs` of them with mode connectivity) is the scheduler's
business (`sweeps.run.pairs`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

import torch

from workers.base import checkpoints
from workers.base.data import Splits, prepare
from workers.catalog import TrialConfig
from workers.core.errors import is_transient
from workers.core.lineage import forget_training
from workers.core.records import (
    CURVES,
    FAILED,
    PAIR_WEIGHTS_IDS,
    PAIRS,
    TRIALS,
    WEIGHTS_ID,
    config_columns,
    ordered_pair,
    pair_key,
    provenance,
    record_path,
    to_table,
)
from workers.core.storage import Storage
from workers.jobs.runtime import OpenedJob, RunContext, open_job, seed_everything, trained_model
from workers.jobs.trial import run_trial
from workers.pair_metrics import PAIR_METRICS, PairContext, pair_metrics

NAN = float("nan")


def run_pair(cfg_a: TrialConfig, cfg_b: TrialConfig, with_mc: bool, ctx: RunContext) -> dict[str, Any]:
    """Measure one pair of trained models (or find it measured); returns its pairs row.

    Raises FileNotFoundError if either model has no `trials` row yet. A pair with a
    diverged model (or a diverged measurement) is recorded with status "diverged" and
    NaN metrics, so it is not retried.
    """
    cfg_a, cfg_b = ordered_pair(cfg_a, cfg_b)
    key = pair_key(cfg_a, cfg_b, with_mc)
    job = open_job(ctx)
    if job.storage.exists(record_path(PAIRS, key)):
        return job.storage.read_table(PAIRS, key).to_pylist()[0]
    started = time.perf_counter()
    rows = [_trials_row(job.storage, c) for c in (cfg_a, cfg_b)]
    failed = [str(c.train.seed) for c, r in zip((cfg_a, cfg_b), rows) if r["status"] != "ok"]
    if failed:
        base = _base_columns(cfg_a, cfg_b, with_mc, key, ctx.sweep, [r.get(WEIGHTS_ID, "") for r in rows])
        row = {**base, "status": "diverged", **_unmeasured(), "curve_reused": False,
               "error": f"model(s) of seed {', '.join(failed)} did not train to the end"}
    else:
        seed_everything(1_000 * cfg_a.train.seed + cfg_b.train.seed)
        splits = prepare(cfg_a.data, job.device)
        (model_a, id_a), (model_b, id_b) = (_trained(c, r, ctx, splits, job) for c, r in zip((cfg_a, cfg_b), rows))
        base = _base_columns(cfg_a, cfg_b, with_mc, key, ctx.sweep, [id_a, id_b])
        row = {**base, "status": "ok", "error": "", **_unmeasured(), "curve_reused": False}
        context = PairContext(cfg_a, splits, (cfg_a.train.seed, cfg_b.train.seed))
        for name in pair_metrics(with_mc):  # a diverged or failed measurement marks the row; the others still run
            _mark(row, _measure(name, model_a, model_b, context, job.storage, base))
    row["time_total_s"] = time.perf_counter() - started
    row.update(provenance(job.device, ctx.code_version))
    job.storage.write_table(PAIRS, key, to_table([row]))
    return row


def _trained(
    cfg: TrialConfig, row: dict[str, Any], ctx: RunContext, splits: Splits, job: OpenedJob,
) -> tuple[torch.nn.Module, str]:
    """A model of the pair from its `final` checkpoint, with its `weights_id`; if that
    checkpoint is lost or holds other weights than its trials row names, the model (and
    its metrics) is trained again first, never replaced by fresh weights."""
    model = trained_model(job.storage, cfg, splits, job.device)
    recorded = row.get(WEIGHTS_ID, "")
    if model is not None and recorded and checkpoints.weights_id(model.state_dict()) != recorded:
        job.storage.quarantine(checkpoints.path(cfg.trial_key, "final"))
        model = None
    if model is None:
        print(f"warning: model {cfg.trial_key} of this pair has lost the final weights its trials record names; "
              "training it again", file=sys.stderr)
        forget_training(job.storage, cfg.trial_key)
        row = run_trial(cfg, ctx, solo_reason="trained again by a seed pair that found its final weights lost")
        model = trained_model(job.storage, cfg, splits, job.device)
        assert model is not None, f"model {cfg.trial_key} was trained again but wrote no final checkpoint"
    return model, row.get(WEIGHTS_ID, "")


def _mark(row: dict[str, Any], measured: dict[str, Any]) -> None:
    """Add one metric's columns to the pair's row; its error (a diverged or failed
    measurement) joins the row's, and the first one sets the row's status."""
    error, status = measured.pop("error", ""), measured.pop("status", "")
    row.update(measured)
    if error:
        row["error"] = f"{row['error']}; {error}" if row["error"] else error
        row["status"] = status if row["status"] == "ok" else row["status"]


def _unmeasured() -> dict[str, float]:
    """Every pair metric's scalars and time as NaN: the columns of a row it did not fill."""
    columns: dict[str, float] = {}
    for name in PAIR_METRICS.registered():
        columns.update(dict.fromkeys(PAIR_METRICS.meta(name)["scalars"], NAN))
        columns[f"time_{name}_s"] = NAN
    return columns


def _measure(name: str, model_a: Any, model_b: Any, context: PairContext, storage: Storage,
             base: dict[str, Any]) -> dict[str, Any]:
    """Run one pair metric; write its curve (unless it reused the stored one)."""
    start = time.perf_counter()
    curve = f"{base['pair_key']}.{name}"
    stored = _stored_curve(storage, curve, base)
    try:
        result = PAIR_METRICS.get(name)(model_a, model_b, context.cfg.pairs,
                                        dataclasses.replace(context, stored_curve=stored))
    except Exception as exc:
        if is_transient(exc):
            raise
        print(f"warning: pair metric {name} could not be computed on pair {base['pair_key']}: "
              f"{type(exc).__name__}: {exc}; recorded as failed", file=sys.stderr)
        return {"status": FAILED, "error": f"{name}: {type(exc).__name__}: {exc}",
                f"time_{name}_s": time.perf_counter() - start}
    if result.curves:
        storage.write_table(CURVES, curve, to_table([{**base, "kind": name, **p} for p in result.curves]))
    failure = {"status": "diverged", "error": result.diverged} if result.diverged else {}
    return {**result.scalars, **failure, f"time_{name}_s": time.perf_counter() - start}


def _stored_curve(storage: Storage, curve: str, base: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The curve a crashed attempt of this pair wrote, if it was fitted on these same
    weights (its lineage columns equal the pair's); else None, and it is fitted anew."""
    if not storage.exists(record_path(CURVES, curve)):
        return None
    rows = storage.read_table(CURVES, curve).to_pylist()
    same = all(r.get(column, "") == base[column] for r in rows for column in PAIR_WEIGHTS_IDS)
    return rows if same else None


def _base_columns(
    cfg_a: TrialConfig, cfg_b: TrialConfig, with_mc: bool, key: str, sweep: str, weights_ids: list[str],
) -> dict[str, Any]:
    """The cell's config columns plus the pair's identity, lineage and options."""
    base = config_columns(cfg_a, sweep)
    del base["trial_key"], base["seed"]  # per model: the pair has _a and _b versions
    options = cfg_a.pairs
    return {
        **base,
        "pair_key": key,
        "seed_a": cfg_a.train.seed,
        "seed_b": cfg_b.train.seed,
        "trial_key_a": cfg_a.trial_key,
        "trial_key_b": cfg_b.trial_key,
        **dict(zip(PAIR_WEIGHTS_IDS, weights_ids)),
        "with_mc": with_mc,
        "settings": json.dumps(options.settings(with_mc), sort_keys=True),
        **{f"pairs_{k}": v for k, v in options.to_dict().items()},
    }


def _trials_row(storage: Storage, cfg: TrialConfig) -> dict[str, Any]:
    relpath = record_path(TRIALS, cfg.trial_key)
    if not storage.exists(relpath):
        raise FileNotFoundError(f"model {cfg.trial_key} (seed {cfg.train.seed}) is not trained yet: "
                                f"{storage.path(relpath)} is missing")
    return storage.read_table(TRIALS, cfg.trial_key).to_pylist()[0]
