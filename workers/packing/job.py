"""The pack job: train the missing members of a pack as one network, then record,
measure and pair each member exactly as a solo trial would.

Protocol (idempotent like `workers.trial`):
1. Members whose `trials` row exists are trained; the others train together. Each
   member starts from the weights its solo trial would (the solo builder, its own
   seed) and its `init` checkpoint is written per member. The pack's epoch checkpoint
   is `checkpoints/<pack_id>/last.pt`, `pack_id` being a hash of the members it trains,
   so a retried or rerun job resumes from the last finished epoch.
2. After training, each member is taken out of the pack as a standard model and
   recorded by `workers.trial.record_trained` under its own trial key (`final`,
   `history`, `trials` with `pack_size` and `pack_id`). A member whose loss stopped
   being finite is recorded `diverged` at that epoch; the others train on unharmed. A
   member whose records cannot be written fails the job only after the others are
   recorded; the pack's `last` checkpoint stays, so a retry of the job resumes the pack
   from it and records just the missing members.
3. Each member's metrics then run through `run_trial` on its own model (which trains
   nothing now), and the pack's seed pairs right after, in this same worker.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from workers import checkpoints
from workers.augment import Augment
from workers.config import TrialConfig
from workers.data import Splits, prepare
from workers.errors import StorageError
from workers.models import load_start
from workers.optim import lr_factor
from workers.packing.modules import member_state, pack
from workers.packing.optim import build_packed_optimizer
from workers.packing.plan import pack_id
from workers.packing.train import PackedUpdate, fit_packed, pack_fast_path
from workers.pair_trial import run_pair
from workers.records import config_columns
from workers.storage import Storage
from workers.train import EpochStats
from workers.trial import (
    RunContext,
    Trained,
    history_row,
    inject_fault,
    new_model,
    record_trained,
    run_trial,
    seed_everything,
)

PairSpec = tuple[TrialConfig, TrialConfig, bool]  # two seeds of a cell, with mode connectivity or not


def run_pack(cfgs: Sequence[TrialConfig], pairs: Sequence[PairSpec], ctx: RunContext) -> list[dict[str, Any]]:
    """Train, record and measure the members of a pack, then its pairs; returns each
    member's trials row (with metric scalars) followed by each pair's row.

    A retry of a pack killed while its members were being recorded resumes the whole
    pack from its checkpoint (the recorded members are not written again); otherwise
    only the members without a `trials` row train, alone if just one is left.
    """
    storage = Storage.open(ctx.storage)
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    key = pack_id([c.trial_key for c in cfgs])
    todo = [c for c in cfgs if not storage.exists(f"trials/{c.trial_key}.parquet")]
    if todo and checkpoints.exists(storage, key, "last"):
        train_pack(cfgs, ctx, storage)
    elif len(todo) == 1:
        run_trial(todo[0], ctx, solo_reason="the other members of its pack were trained already")
    elif todo:
        train_pack(todo, ctx, storage)
    checkpoints.remove(storage, key, "last")  # left by a kill after the last member was recorded
    rows = [run_trial(c, ctx) for c in cfgs]  # each member's missing metrics, on its own model
    return rows + [run_pair(a, b, with_mc, ctx) for a, b, with_mc in pairs]


def member_splits(cfgs: Sequence[TrialConfig], device: str) -> list[Splits]:
    """Each member's data on `device`, the images held once: members share the data
    subset (`workers.packing.plan`) and differ at most in their noisy labels."""
    first = prepare(cfgs[0].data, device)
    splits = []
    for cfg in cfgs:
        if cfg.data == cfgs[0].data:
            splits.append(first)
            continue
        own = prepare(cfg.data, "cpu")
        assert own.x_train.shape == first.x_train.shape, "pack members must share their training images"
        splits.append(dataclasses.replace(first, y_train=own.y_train.to(device), n_noisy=own.n_noisy))
    return splits


def train_pack(cfgs: Sequence[TrialConfig], ctx: RunContext, storage: Storage) -> None:
    """Train `cfgs` as one packed network and record every member not recorded yet."""
    started = time.perf_counter()
    device = ctx.resolved_device()
    members, key = len(cfgs), pack_id([c.trial_key for c in cfgs])
    splits = member_splits(cfgs, device)
    models = []
    for cfg, split in zip(cfgs, splits):
        seed_everything(cfg.train.seed)
        models.append(new_model(cfg, split, device))  # initialised as its solo trial's
        if cfg.model.init_from:
            load_start(models[-1], cfg.model.init_from)
    packed = pack(models)
    del models
    fast = pack_fast_path(cfgs[0].train, device)
    fast.model(packed)  # before the optimizer holds the parameters
    optimizer = build_packed_optimizer(list(packed.parameters()), cfgs)  # ALI-G projects here
    bases = [config_columns(c, ctx.sweep) for c in cfgs]
    last = checkpoints.load(storage, key, "last", device)
    if last is None:
        histories: list[list[dict[str, Any]]] = [[] for _ in cfgs]
        blown_up, start_epoch = [0] * members, 0
        for g, cfg in enumerate(cfgs):
            checkpoints.save(storage, cfg.trial_key, "init", {"model": member_state(packed, g, members)})
    else:  # resume after a crash: the state of the last finished epoch
        optimizer.load_state_dict(last["optimizer"])
        packed.load_state_dict(last["model"])
        histories, blown_up, start_epoch = last["histories"], last["blown_up"], last["epoch"]
    train = cfgs[0].train

    def on_epoch(stats: list[EpochStats]) -> bool:
        for g, member in enumerate(stats):
            if not blown_up[g]:
                histories[g].append(history_row(bases[g], member))
                blown_up[g] = member.epoch if member.diverged else 0
        epoch = stats[0].epoch
        if epoch % train.checkpoint_every == 0 and epoch < train.epochs:
            checkpoints.save(storage, key, "last", {
                "model": packed.state_dict(), "optimizer": optimizer.state_dict(),
                "histories": histories, "blown_up": blown_up, "epoch": epoch,
            })
        for trial_key in (key, *(c.trial_key for c in cfgs)):
            inject_fault(trial_key, epoch)
        return not all(blown_up)

    train_start = time.perf_counter()
    update = PackedUpdate(packed, optimizer, fast)
    fit_packed(update, splits[0].x_train, [s.y_train for s in splits], batch_size=train.batch_size,
               seeds=[c.train.seed for c in cfgs], epochs=train.epochs, start_epoch=start_epoch,
               base_lrs=optimizer.base_lrs, lr_factor=lr_factor(cfgs[0]), augment=Augment.of(cfgs[0].data),
               on_epoch=on_epoch)
    fast.release(packed)
    train_time = time.perf_counter() - train_start
    ran = {**fast.columns(), "pack_size": members, "pack_id": key, "unpacked_reason": ""}
    failed = []
    for g, (cfg, split) in enumerate(zip(cfgs, splits)):
        if storage.exists(f"trials/{cfg.trial_key}.parquet"):  # recorded before a kill
            continue
        model = new_model(cfg, split, device)
        model.load_state_dict(member_state(packed, g, members))
        trained = Trained(model, histories[g], start_epoch, blown_up[g], {}, train_time, ran)
        try:
            record_trained(cfg, ctx, storage, split, trained, started)
        except StorageError as exc:  # record the other members; the job fails below
            failed.append(exc)
    if failed:  # the `last` checkpoint stays: a retry resumes the pack and records the rest
        raise failed[0]
    checkpoints.remove(storage, key, "last")
