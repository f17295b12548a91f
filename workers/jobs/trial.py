"""One trial: train a model (or find it already trained), measure it, write its records.

`run_trial` needs no Ray: tests and `--in-process` runs call it directly; the Tune
function in `workers.jobs.tune_entry` is a thin wrapper around it.

Protocol (every step idempotent, so a rerun or a retry after a crash does only what is
missing):
1. `trials/<key>.parquet` exists -> the model is trained; load `final` if a metric is
   missing, and check it is the weights the row names (`weights_id`). Otherwise train,
   resuming from the `last` epoch checkpoint if there is one, then write `history` and,
   last, the `trials` row (the row marks the model as done) with the content hash of
   the final weights. Measures left from other weights of the model go to `_quarantine/`
   first: a model trained again gets other weights, and what was measured on the old
   ones must not pass for measures of the new (lineage, `workers.core.records`).
2. For each metric in the spec whose record is missing, measure the final model and
   write its curves, then its `measures` row (again: the row marks it done), both with
   the model's `weights_id`. A metric that cannot be computed on this model (it raises
   something that is not `transient`) is recorded too, `failed` with the reason and no
   scalars: it would fail the same way again, and the model's other metrics (and a
   pack's other members) go on.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.base import checkpoints
from workers.base.data import Splits, prepare
from workers.base.models import load_start, n_parameters, norm_layer
from workers.catalog import TrialConfig
from workers.core.errors import is_transient
from workers.core.lineage import forget_measures, forget_training
from workers.core.live import JobProgress
from workers.core.records import (
    CURVES,
    FAILED,
    HISTORY,
    MEASURES,
    TRIALS,
    WEIGHTS_ID,
    config_columns,
    measure_key,
    pending_metrics,
    provenance,
    record_path,
    to_table,
)
from workers.core.storage import Storage
from workers.jobs.runtime import RunContext, new_model, open_job, seed_everything
from workers.metrics import METRICS, Measurement, MetricContext
from workers.training.augment import Augment
from workers.training.fast_path import PLAIN, FastPath
from workers.training.late_phase import LatePhase
from workers.training.optim import LrSchedule, build_optimizer, lr_factor
from workers.training.swa import Swa
from workers.training.train import EpochStats, Hook, Update, divergence_reason, evaluate, finish, fit

NAN = float("nan")


@dataclass
class TrainingHooks:
    """The training variants of a trial, by role; iterating gives them in the order
    `fit` calls them (and resume checkpoints store their states)."""

    update: Update  # the minibatch update: plain or late-phase, forward passes through the fast path
    schedule: LrSchedule
    swa: Swa | None = None

    def __iter__(self) -> Iterator[Hook]:
        yield self.update
        yield self.schedule
        if self.swa is not None:
            yield self.swa


def training_hooks(cfg: TrialConfig, model: torch.nn.Module, fast: FastPath = PLAIN) -> TrainingHooks:
    """The update rule, the lr schedule and SWA if configured, for `model`."""
    optimizer = build_optimizer(model.parameters(), cfg)
    if cfg.late_phase.k:
        update: Update = LatePhase(model, optimizer, lambda params: build_optimizer(params, cfg),
                                   cfg.late_phase, seed=cfg.train.seed, fast=fast)
    else:
        update = Update(model, optimizer, fast=fast)
    swa = Swa(model, cfg.swa.start, cfg.train.batch_size) if cfg.swa.start else None
    return TrainingHooks(update, LrSchedule(lr_factor(cfg), update.param_groups), swa)


def run_trial(
    cfg: TrialConfig, ctx: RunContext, solo_reason: str = "", progress: JobProgress | None = None,
) -> dict[str, Any]:
    """Train and measure one model as needed; returns its trials row plus metric scalars.

    `solo_reason` (why this trial did not train in a pack) goes into its trials row;
    `progress` hears of every epoch trained.
    """
    started = time.perf_counter()
    job = open_job(ctx)
    storage, key = job.storage, cfg.trial_key
    row = storage.read_table(TRIALS, key).to_pylist()[0] if storage.exists(record_path(TRIALS, key)) else None
    todo = pending_metrics(cfg, set(storage.list_names(MEASURES, ".parquet")))
    if row is not None and row["status"] != "ok":
        for metric in todo:
            _record_unmeasured(cfg, ctx, storage, metric, row)
        return row
    if row is not None and not todo:
        return row  # nothing to do: no data, no model (a pack job asks this of every member)

    seed_everything(cfg.train.seed)
    splits = prepare(cfg.data, job.device)
    model = new_model(cfg, splits, job.device)  # initialised from the seed alone
    weights = _stored_weights(storage, row, key, job.device) if row is not None else None
    if row is not None and weights is None:  # recorded, but its weights are gone: train it again
        forget_training(storage, key)
        row = None
    if row is None:
        inject_error(key, "train")
        trained = _train(cfg, ctx.sweep, storage, splits, model, job.device, solo_columns(solo_reason), progress)
        row = record_trained(cfg, ctx, storage, splits, trained, started)
        weights = (None, checkpoints.load(storage, key, "init", job.device))
        todo = list(cfg.measure.metrics)  # measures of other weights went with `record_trained`
    else:
        model.load_state_dict(weights[0]["model"])

    for metric in todo:
        if row["status"] != "ok":
            _record_unmeasured(cfg, ctx, storage, metric, row)
            continue
        row.update(_measure(cfg, ctx, storage, metric, model, splits, weights[1]["model"], job.device,
                            row.get(WEIGHTS_ID, "")))
    return row


def _stored_weights(
    storage: Storage, row: dict[str, Any], key: str, device: str,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The `final` and `init` checkpoints a trained model's metrics need, or None (named
    on stderr) when either is missing or damaged, or `final` is not the weights its
    trials row names: measuring other weights instead would record a wrong number as
    valid. (A row written before lineage names no weights: its `final` is taken.)"""
    final = checkpoints.load_or_quarantine(storage, key, "final", device)
    init = checkpoints.load_or_quarantine(storage, key, "init", device)
    if final is None or init is None:
        lost = " and ".join(name for name, state in (("final", final), ("init", init)) if state is None)
        print(f"warning: model {key} is recorded as trained but its {lost} checkpoint is missing or damaged; "
              "training it again", file=sys.stderr)
        return None
    recorded = row.get(WEIGHTS_ID, "")
    if recorded and checkpoints.weights_id(final["model"]) != recorded:
        print(f"warning: model {key}'s final checkpoint is not the weights its trials record names "
              f"({recorded}); training it again", file=sys.stderr)
        storage.quarantine(checkpoints.path(key, "final"))
        return None
    return final, init


def solo_columns(reason: str) -> dict[str, Any]:
    """The packing columns of a trial that trained alone (see workers.packing)."""
    return {"pack_size": 1, "pack_id": "", "unpacked_reason": reason}


@dataclass
class Trained:
    """What training left behind, for `record_trained` (a solo trial or a pack member)."""

    model: torch.nn.Module  # in the default layout
    history: list[dict[str, Any]]  # one row per epoch, from `history_row`
    start_epoch: int  # the epoch training resumed from (0: a fresh start)
    blown_up: int  # the epoch whose training loss diverged (`workers.training.train.loss_diverged`); 0: trained to the end
    extras: dict[str, Any]  # more entries for the final checkpoint (late-phase members)
    train_time: float  # seconds
    ran: dict[str, Any]  # how it ran: fast-path and packing columns of the trials row


def history_row(base: dict[str, Any], stats: EpochStats) -> dict[str, Any]:
    return {**base, "epoch": stats.epoch, "lr": stats.lr, "train_loss": stats.train_loss,
            "train_acc": stats.train_acc, "step_size": stats.step_size,
            "step_size_unclipped": stats.step_size_unclipped, "epoch_time_s": stats.time_s}


def _train(
    cfg: TrialConfig, sweep: str, storage: Storage, splits: Splits, model: torch.nn.Module, device: str,
    packing: dict[str, Any], progress: JobProgress | None,
) -> Trained:
    fast = FastPath.for_device(cfg.train, device)
    fast.model(model)  # before the optimizer holds the parameters
    hooks, log = _start(cfg, storage, model, fast, device, config_columns(cfg, sweep), progress)
    train_start = time.perf_counter()
    x_train = fast.inputs(splits.x_train)
    blown_up = fit(model, hooks.update, x_train, splits.y_train, hooks=hooks, batch_size=cfg.train.batch_size,
                   seed=cfg.train.seed, epochs=cfg.train.epochs, start_epoch=log.start_epoch,
                   augment=Augment.of(cfg.data), on_epoch=log)
    # SWA's averaged weights, late-phase's collapsed model; extras keep all members.
    extras = finish(list(hooks), x_train) if blown_up is None else {}
    fast.release(model)  # evaluation, checkpoint and metrics see the default layout
    return Trained(model, log.history, log.start_epoch, 0 if blown_up is None else blown_up.epoch, extras,
                   time.perf_counter() - train_start, {**fast.columns(), **packing})


def _start(
    cfg: TrialConfig, storage: Storage, model: torch.nn.Module, fast: FastPath, device: str, base: dict[str, Any],
    progress: JobProgress | None,
) -> tuple[TrainingHooks, EpochLog]:
    """The hooks on `model` and the epoch log, restored from the `last` checkpoint of a
    killed run if there is one; a fresh start saves `init` (theta_0) instead."""
    last = checkpoints.load_or_quarantine(storage, cfg.trial_key, "last", device)  # damaged: start over
    if last is None and cfg.model.init_from:
        load_start(model, cfg.model.init_from)
    hooks = training_hooks(cfg, model, fast)  # ALI-G projects the starting weights here
    log = EpochLog(cfg, storage, model, hooks, base, progress)
    if last is None:
        checkpoints.save(storage, cfg.trial_key, "init", {"model": model.state_dict()})
        return hooks, log
    checkpoints.restore_init(storage, cfg.trial_key, lambda: {"model": model.state_dict()})
    for hook, state in zip(hooks, last["hooks"]):
        hook.load_state_dict(state)  # late-phase rebuilds its members before the weights load
    model.load_state_dict(last["model"])
    log.history, log.start_epoch = last["history"], last["epoch"]
    return hooks, log


@dataclass
class EpochLog:
    """`fit`'s end-of-epoch callback: the history row, then every `checkpoint_every`
    epochs the `last` checkpoint a killed run resumes from (not after the final epoch:
    the records follow at once), then the epoch to the job's progress (once it is safe),
    then the fault switch of the reliability tests."""

    cfg: TrialConfig
    storage: Storage
    model: torch.nn.Module
    hooks: TrainingHooks
    base: dict[str, Any]  # the config columns of every history row
    progress: JobProgress | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0  # where this run starts: 0, or the epoch of the `last` checkpoint

    def __call__(self, stats: EpochStats) -> None:
        self.history.append(history_row(self.base, stats))
        train = self.cfg.train
        if stats.epoch % train.checkpoint_every == 0 and stats.epoch < train.epochs:
            checkpoints.save(self.storage, self.cfg.trial_key, "last", {
                "model": self.model.state_dict(), "hooks": [h.state_dict() for h in self.hooks],
                "history": self.history, "epoch": stats.epoch,
            })
        if self.progress is not None:
            self.progress.end_epoch(stats.epoch, {self.cfg.trial_key: self.history[-1]})
        inject_fault(self.cfg.trial_key, stats.epoch)


def record_trained(
    cfg: TrialConfig, ctx: RunContext, storage: Storage, splits: Splits, trained: Trained, started: float,
) -> dict[str, Any]:
    """Evaluate a trained model and write its records: `final` checkpoint, `history`, and
    last the `trials` row, which marks the model as done; the `last` checkpoint goes."""
    key, model, history = cfg.trial_key, trained.model, trained.history
    forget_measures(storage, key)
    eval_start = time.perf_counter()
    if not trained.blown_up:
        outcome = {"status": "ok", "error": "", **_losses(model, splits, cfg.measure.eval_batch_size)}
        checkpoints.save(storage, key, "final", {"model": model.state_dict(), **trained.extras})
    else:
        outcome = {"status": "diverged", "error": divergence_reason(trained.blown_up),
                   **dict.fromkeys(("train_loss", "train_acc", "test_loss", "test_acc"), NAN)}
    row = {
        **config_columns(cfg, ctx.sweep), **outcome,
        "epochs_done": history[-1]["epoch"] if history else 0, "resumed_from_epoch": trained.start_epoch,
        "n_params": n_parameters(model), "norm_layer": norm_layer(cfg.model.model, cfg.model.batchnorm),
        "n_train": len(splits.y_train), "n_test": len(splits.y_test), "n_noisy_labels": splits.n_noisy,
        "time_train_s": trained.train_time, "time_eval_s": time.perf_counter() - eval_start,
        "time_total_s": time.perf_counter() - started, WEIGHTS_ID: checkpoints.weights_id(model.state_dict()),
        **trained.ran, **provenance(ctx.resolved_device(), ctx.code_version),
    }
    if history:
        storage.write_table(HISTORY, key, to_table(history))
    storage.write_table(TRIALS, key, to_table([row]))
    checkpoints.remove(storage, key, "last")
    return row


def _losses(model: torch.nn.Module, splits: Splits, chunk: int) -> dict[str, float]:
    train_loss, train_acc = evaluate(model, splits.x_train, splits.y_train, chunk)
    test_loss, test_acc = evaluate(model, splits.x_test, splits.y_test, chunk)
    return {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}


def _measure(
    cfg: TrialConfig, ctx: RunContext, storage: Storage, metric: str,
    model: torch.nn.Module, splits: Splits, init_state: dict[str, Any], device: str, weights_id: str,
) -> dict[str, Any]:
    """Run one metric on the trained model (whose weights hash to `weights_id`); write
    its curves, then its measures row. A metric that raises a non-transient error is
    recorded `failed` with the error and no scalars (see the module docstring)."""
    start = time.perf_counter()
    options = cfg.sections[metric]
    context = MetricContext(cfg=cfg, splits=splits, init_state=init_state,
                            new_model=lambda: new_model(cfg, splits, device), device=device)
    try:
        inject_error(cfg.trial_key, metric)
        result, outcome = METRICS.get(metric)(model, options, context), {"status": "ok", "error": ""}
    except Exception as exc:
        if is_transient(exc):
            raise
        result, outcome = Measurement({}), {"status": FAILED, "error": f"{type(exc).__name__}: {exc}"}
        print(f"warning: metric {metric} could not be computed on model {cfg.trial_key}: {outcome['error']}; "
              "recorded as failed", file=sys.stderr)
    scalars = {f"{metric}_{k}": v for k, v in result.scalars.items()}
    scalars[f"{metric}_time_s"] = time.perf_counter() - start
    record = measure_key(cfg, metric)
    base = _measure_columns(cfg, ctx.sweep, metric, weights_id)
    if result.curves:
        storage.write_table(CURVES, record, to_table([{**base, **point} for point in result.curves]))
    storage.write_table(MEASURES, record, to_table(
        [{**base, **outcome, **scalars, **provenance(ctx.resolved_device(), ctx.code_version)}]
    ))
    return scalars


def _record_unmeasured(cfg: TrialConfig, ctx: RunContext, storage: Storage, metric: str, row: dict[str, Any]) -> None:
    """A measures row saying that a diverged model was not measured (no scalars): the
    metric is done with, as the pair of a diverged model is, so reruns and `status` do
    not wait for it."""
    storage.write_table(MEASURES, measure_key(cfg, metric), to_table([{
        **_measure_columns(cfg, ctx.sweep, metric, row.get(WEIGHTS_ID, "")), "status": row["status"],
        "error": f"not measured: {row['error']}", **provenance(ctx.resolved_device(), ctx.code_version)}]))


def _measure_columns(cfg: TrialConfig, sweep: str, metric: str, weights_id: str) -> dict[str, Any]:
    """The columns every row of a measure (and its curve) leads with: config, metric,
    its options, and the weights it describes."""
    return {**config_columns(cfg, sweep), "metric": metric,
            "settings": json.dumps(cfg.sections[metric].identity(), sort_keys=True), WEIGHTS_ID: weights_id}


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


class InjectedError(RuntimeError):
    """The failure `inject_error` raises: one that repeats on every attempt."""


def inject_error(trial_key: str, where: str) -> None:
    """Test hook: LANDSCAPE_FAULT_RAISE="<trial_key prefix>:<where>" raises InjectedError
    when that model starts training (`where` = "train") or measuring a metric (its name).
    The reliability tests use it for failures that would repeat; inert unless set."""
    target = os.environ.get("LANDSCAPE_FAULT_RAISE", "")
    prefix, _, at = target.partition(":")
    if target and trial_key.startswith(prefix) and where == at:
        raise InjectedError(f"injected failure: {where} of model {trial_key}")
