"""One trial: train a model (or find it already trained), measure it, write its records.

`run_trial` needs no Ray: tests and `--in-process` runs call it directly; the Tune
function in `workers.tune_entry` is a thin wrapper around it.

Protocol (every step idempotent, so a rerun or a retry after a crash does only what is
missing):
1. `trials/<key>.parquet` exists -> the model is trained; load `final` if a metric is
   missing. Otherwise train, resuming from the `last` epoch checkpoint if there is one,
   then write `history` and, last, the `trials` row (the row marks the model as done).
2. For each metric in the spec whose record is missing, measure the final model and
   write its curves, then its `measures` row (again: the row marks it done).
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workers import checkpoints
from workers.augment import Augment
from workers.config import TrialConfig, settings_hash
from workers.data import DATASETS, Splits, prepare
from workers.fast_path import PLAIN, FastPath
from workers.late_phase import LatePhase
from workers.metrics import METRICS
from workers.models import build_model, load_start, n_parameters, norm_layer
from workers.optim import LrSchedule, build_optimizer, lr_factor
from workers.records import config_columns, provenance, to_table
from workers.storage import Storage
from workers.swa import Swa
from workers.train import EpochStats, Hook, Update, evaluate, finish, fit

NAN = float("nan")


@dataclass(frozen=True)
class RunContext:
    """Where and how a trial runs; not part of the trial's identity."""

    storage: str  # the sweep folder: local path or URI
    sweep: str
    code_version: str = "unknown"
    device: str = "auto"  # "auto": cuda if available, else cpu
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


def seed_everything(seed: int) -> None:
    """Seed every generator a trial touches, so a reused worker process leaks nothing."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_model(cfg: TrialConfig, splits: Splits, device: str) -> torch.nn.Module:
    shape = DATASETS.meta(cfg.data.dataset)["shape"]
    m = cfg.model
    return build_model(m.model, m.width, shape, splits.num_classes, batchnorm=m.batchnorm,
                       init_scale=m.init_scale).to(device)


def training_hooks(cfg: TrialConfig, model: torch.nn.Module, fast: FastPath = PLAIN) -> list[Hook]:
    """The training variants of a trial, in the order `fit` calls them: the update rule
    (plain or late-phase, forward passes through `fast`), the lr schedule, then SWA if
    configured."""
    optimizer = build_optimizer(model.parameters(), cfg)
    if cfg.late_phase.k:
        update: Update = LatePhase(model, optimizer, lambda params: build_optimizer(params, cfg),
                                   cfg.late_phase, seed=cfg.train.seed, fast=fast)
    else:
        update = Update(model, optimizer, fast=fast)
    hooks: list[Hook] = [update, LrSchedule(lr_factor(cfg), update.param_groups)]
    if cfg.swa.start:
        hooks.append(Swa(model, cfg.swa.start, cfg.train.batch_size))
    return hooks


def measure_key(cfg: TrialConfig, metric: str) -> str:
    """Record name of one metric on one model: trial key, metric, hash of its options."""
    return f"{cfg.trial_key}.{metric}-{settings_hash(cfg.sections[metric])}"


def missing_metrics(cfg: TrialConfig, done_measures: set[str]) -> list[str]:
    return [m for m in cfg.measure.metrics if measure_key(cfg, m) not in done_measures]


def run_trial(cfg: TrialConfig, ctx: RunContext, solo_reason: str = "") -> dict[str, Any]:
    """Train and measure one model as needed; returns its trials row plus metric scalars.

    `solo_reason` (why this trial did not train in a pack) goes into its trials row.
    """
    storage = Storage.open(ctx.storage)
    device = ctx.resolved_device()
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    key = cfg.trial_key
    started = time.perf_counter()
    recorded = storage.exists(f"trials/{key}.parquet")
    row = storage.read_table("trials", key).to_pylist()[0] if recorded else None
    todo = missing_metrics(cfg, set(storage.list_names("measures", ".parquet")))
    if row is not None and (row["status"] != "ok" or not todo):
        return row  # nothing to do: no data, no model (a pack job asks this of every member)

    seed_everything(cfg.train.seed)
    splits = prepare(cfg.data, device)
    model = new_model(cfg, splits, device)  # initialised from the seed alone
    if row is not None:
        final = checkpoints.load(storage, key, "final", device)
        if final is not None:
            model.load_state_dict(final["model"])
    else:
        trained = _train(cfg, ctx.sweep, storage, splits, model, device, solo_columns(solo_reason))
        row = record_trained(cfg, ctx, storage, splits, trained, started)

    if row["status"] == "ok" and todo:
        init = checkpoints.load(storage, key, "init", device)
        for metric in todo:
            row.update(_measure(cfg, ctx, storage, metric, model, splits, init["model"], device))
    return row


def solo_columns(reason: str) -> dict[str, Any]:
    """The packing columns of a trial that trained alone (see workers.packing)."""
    return {"pack_size": 1, "pack_id": "", "unpacked_reason": reason}


@dataclass
class Trained:
    """What training left behind, for `record_trained` (a solo trial or a pack member)."""

    model: torch.nn.Module  # in the default layout
    history: list[dict[str, Any]]  # one row per epoch, from `history_row`
    start_epoch: int  # the epoch training resumed from (0: a fresh start)
    blown_up: int  # the epoch whose training loss was not finite; 0: trained to the end
    extras: dict[str, Any]  # more entries for the final checkpoint (late-phase members)
    train_time: float  # seconds
    ran: dict[str, Any]  # how it ran: fast-path and packing columns of the trials row


def history_row(base: dict[str, Any], stats: EpochStats) -> dict[str, Any]:
    return {**base, "epoch": stats.epoch, "lr": stats.lr, "train_loss": stats.train_loss,
            "train_acc": stats.train_acc, "step_size": stats.step_size,
            "step_size_unclipped": stats.step_size_unclipped, "epoch_time_s": stats.time_s}


def _train(
    cfg: TrialConfig, sweep: str, storage: Storage, splits: Splits, model: torch.nn.Module, device: str,
    packing: dict[str, Any],
) -> Trained:
    key = cfg.trial_key
    history: list[dict[str, Any]] = []
    start_epoch = 0
    last = checkpoints.load(storage, key, "last", device)
    fast = FastPath.for_device(cfg.train, device)
    fast.model(model)  # before the optimizer holds the parameters
    if last is None and cfg.model.init_from:
        load_start(model, cfg.model.init_from)
    hooks = training_hooks(cfg, model, fast)  # ALI-G projects the starting weights here
    update = hooks[0]
    if last is None:
        checkpoints.save(storage, key, "init", {"model": model.state_dict()})
    else:  # resume after a crash: the state of the last finished epoch
        for hook, state in zip(hooks, last["hooks"]):
            hook.load_state_dict(state)  # late-phase rebuilds its members before the weights load
        model.load_state_dict(last["model"])
        history, start_epoch = last["history"], last["epoch"]

    base = config_columns(cfg, sweep)

    def on_epoch(stats: EpochStats) -> None:
        history.append(history_row(base, stats))
        if stats.epoch % cfg.train.checkpoint_every == 0 and stats.epoch < cfg.train.epochs:
            checkpoints.save(storage, key, "last", {
                "model": model.state_dict(), "hooks": [h.state_dict() for h in hooks],
                "history": history, "epoch": stats.epoch,
            })
        inject_fault(key, stats.epoch)

    train_start = time.perf_counter()
    x_train = fast.inputs(splits.x_train)
    blown_up = fit(model, update, x_train, splits.y_train, hooks=hooks,
                   batch_size=cfg.train.batch_size, seed=cfg.train.seed, epochs=cfg.train.epochs,
                   start_epoch=start_epoch, augment=Augment.of(cfg.data), on_epoch=on_epoch)
    # SWA's averaged weights, late-phase's collapsed model; extras keep all members.
    extras = finish(hooks, x_train) if blown_up is None else {}
    fast.release(model)  # evaluation, checkpoint and metrics see the default layout
    return Trained(model, history, start_epoch, 0 if blown_up is None else blown_up.epoch, extras,
                   time.perf_counter() - train_start, {**fast.columns(), **packing})


def record_trained(
    cfg: TrialConfig, ctx: RunContext, storage: Storage, splits: Splits, trained: Trained, started: float,
) -> dict[str, Any]:
    """Evaluate a trained model and write its records: `final` checkpoint, `history`, and
    last the `trials` row, which marks the model as done; the `last` checkpoint goes."""
    key, model = cfg.trial_key, trained.model
    eval_start = time.perf_counter()
    if not trained.blown_up:
        status, error = "ok", ""
        chunk = cfg.measure.eval_batch_size
        train_loss, train_acc = evaluate(model, splits.x_train, splits.y_train, chunk)
        test_loss, test_acc = evaluate(model, splits.x_test, splits.y_test, chunk)
        checkpoints.save(storage, key, "final", {"model": model.state_dict(), **trained.extras})
    else:
        status, error = "diverged", f"non-finite training loss at epoch {trained.blown_up}"
        train_loss = train_acc = test_loss = test_acc = NAN
    history = trained.history
    row = {
        **config_columns(cfg, ctx.sweep),
        "status": status,
        "error": error,
        "epochs_done": history[-1]["epoch"] if history else 0,
        "resumed_from_epoch": trained.start_epoch,
        "n_params": n_parameters(model),
        "norm_layer": norm_layer(cfg.model.model, cfg.model.batchnorm),
        "n_train": len(splits.y_train),
        "n_test": len(splits.y_test),
        "n_noisy_labels": splits.n_noisy,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "time_train_s": trained.train_time,
        "time_eval_s": time.perf_counter() - eval_start,
        "time_total_s": time.perf_counter() - started,
        **trained.ran,
        **provenance(ctx.resolved_device(), ctx.code_version),
    }
    if history:
        storage.write_table("history", key, to_table(history))
    storage.write_table("trials", key, to_table([row]))
    checkpoints.remove(storage, key, "last")
    return row


def _measure(
    cfg: TrialConfig, ctx: RunContext, storage: Storage, metric: str,
    model: torch.nn.Module, splits: Splits, init_state: dict[str, Any], device: str,
) -> dict[str, Any]:
    """Run one metric on the trained model; write its curves, then its measures row."""
    from workers.metrics import MetricContext

    start = time.perf_counter()
    options = cfg.sections[metric]
    context = MetricContext(cfg=cfg, splits=splits, init_state=init_state,
                            new_model=lambda: new_model(cfg, splits, device), device=device)
    result = METRICS.get(metric)(model, options, context)
    scalars = {f"{metric}_{k}": v for k, v in result.scalars.items()}
    scalars[f"{metric}_time_s"] = time.perf_counter() - start
    record = measure_key(cfg, metric)
    base = config_columns(cfg, ctx.sweep)
    settings = json.dumps(options.identity(), sort_keys=True)
    if result.curves:
        storage.write_table("curves", record, to_table(
            [{**base, "metric": metric, "settings": settings, **point} for point in result.curves]
        ))
    storage.write_table("measures", record, to_table(
        [{**base, "metric": metric, "settings": settings, **scalars,
          **provenance(ctx.resolved_device(), ctx.code_version)}]
    ))
    return scalars


def inject_fault(trial_key: str, epoch: int) -> None:
    """Test hook: LANDSCAPE_FAULT_KILL="<trial_key prefix>:<epoch>" kills this process.

    The reliability tests use it to prove that a SIGKILLed worker resumes from its last
    epoch checkpoint; it is inert unless that variable is set.
    """
    target = os.environ.get("LANDSCAPE_FAULT_KILL", "")
    if not target:
        return
    prefix, _, at_epoch = target.partition(":")
    marker = os.environ.get("LANDSCAPE_FAULT_MARKER", "")
    if trial_key.startswith(prefix) and epoch == int(at_epoch) and not (marker and os.path.exists(marker)):
        if marker:  # kill only once, so the retry can finish
            open(marker, "w").close()
        os.kill(os.getpid(), 9)
