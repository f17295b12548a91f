"""The pack job: train the missing members of a pack as one network, then record,
measure and pair each member exactly as a solo trial would.

Protocol (idempotent like `workers.jobs.trial`):
1. Members whose `trials` row exists are trained; the others train together. Each
   member starts from the weights its solo trial would (the solo builder, its own
   seed) and its `init` checkpoint is written per member. The pack's epoch checkpoint
   is `checkpoints/<pack_id>/last.pt`, `pack_id` being a hash of the members it trains,
   so a retried or rerun job resumes from the last finished epoch. Members train in the
   order of their trial keys, whatever order the command line gave their values in, and
   the checkpoint names them: it is used only by a pack of exactly those members in
   exactly that order (one from before, without names, is set aside and the pack starts
   over), so no member ever resumes from another member's weights. `members.json`
   beside it names them too, so a rerun's planner resumes this very pack rather than
   cutting its unrecorded members into new packs (`sweeps.run.plan`).
2. After training, each member is taken out of the pack as a standard model and
   recorded by `workers.jobs.trial.record_trained` under its own trial key (`final`,
   `history`, `trials` with `pack_size` and `pack_id`). A member whose loss diverged
   (not finite, or exploded: `workers.training.train.loss_diverged`) is recorded `diverged` at
   that epoch, as its solo run would be; the others train on unharmed. A
   member whose records cannot be written fails the job only after the others are
   recorded; the pack's `last` checkpoint stays, so a retry of the job resumes the pack
   from it and records just the missing members.
3. Each member's metrics then run through `run_trial` on its own model (which trains
   nothing now), and the pack's seed pairs right after, in this same worker.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workers.base import checkpoints
from workers.base.data import Splits, prepare
from workers.base.models import load_start
from workers.catalog import TrialConfig
from workers.core.errors import StorageError
from workers.core.live import JobProgress
from workers.core.records import TRIALS, config_columns, record_path
from workers.core.storage import Storage
from workers.jobs.pair_trial import run_pair
from workers.jobs.runtime import RunContext, new_model, open_job, seed_everything
from workers.jobs.trial import Trained, history_row, inject_error, inject_fault, record_trained, run_trial
from workers.packing.modules import member_state, pack
from workers.packing.optim import build_packed_optimizer
from workers.packing.policy import pack_id
from workers.packing.train import PackedUpdate, fit_packed, pack_fast_path
from workers.training.augment import Augment
from workers.training.optim import lr_factor
from workers.training.train import EpochStats

PairSpec = tuple[TrialConfig, TrialConfig, bool]  # two seeds of a cell, with mode connectivity or not


def run_pack(
    cfgs: Sequence[TrialConfig], pairs: Sequence[PairSpec], ctx: RunContext, progress: JobProgress | None = None,
) -> list[dict[str, Any]]:
    """Train, record and measure the members of a pack, then its pairs; returns each
    member's trials row (with metric scalars) followed by each pair's row. `progress`
    hears of every epoch trained.

    A retry of a pack killed while its members were being recorded resumes the whole
    pack from its checkpoint (the recorded members are not written again); otherwise
    only the members without a `trials` row train, alone if just one is left.
    """
    storage = open_job(ctx).storage
    key = pack_id([c.trial_key for c in cfgs])
    todo = [c for c in cfgs if not storage.exists(record_path(TRIALS, c.trial_key))]
    if todo and checkpoints.exists(storage, key, "last"):
        train_pack(cfgs, ctx, storage, progress)
    elif len(todo) == 1:
        run_trial(todo[0], ctx, solo_reason="the other members of its pack were trained already", progress=progress)
    elif todo:
        train_pack(todo, ctx, storage, progress)
    checkpoints.remove_pack_resume(storage, key)  # left by a kill after the last member was recorded
    rows = [run_trial(c, ctx) for c in cfgs]  # each member's missing metrics, on its own model
    return rows + [run_pair(a, b, with_mc, ctx) for a, b, with_mc in pairs]


def member_splits(cfgs: Sequence[TrialConfig], device: str) -> list[Splits]:
    """Each member's data on `device`, the images held once: members share the data
    subset (`workers.packing.policy`) and differ at most in their noisy labels."""
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


def train_pack(
    cfgs: Sequence[TrialConfig], ctx: RunContext, storage: Storage, progress: JobProgress | None = None,
) -> None:
    """Train `cfgs` as one packed network and record every member not recorded yet."""
    started = time.perf_counter()
    cfgs = sorted(cfgs, key=lambda c: c.trial_key)  # the checkpoint's layout (module docstring)
    for cfg in cfgs:
        inject_error(cfg.trial_key, "train")
    device = ctx.resolved_device()
    splits = member_splits(cfgs, device)
    packed = pack(_member_models(cfgs, splits, device))
    fast = pack_fast_path(cfgs[0].train, device)
    fast.model(packed)  # before the optimizer holds the parameters
    optimizer = build_packed_optimizer(list(packed.parameters()), cfgs)  # ALI-G projects here
    log = PackLog.start(cfgs, storage, packed, optimizer, [config_columns(c, ctx.sweep) for c in cfgs], device,
                        progress)
    train_start, train = time.perf_counter(), cfgs[0].train
    fit_packed(PackedUpdate(packed, optimizer, fast), splits[0].x_train, [s.y_train for s in splits],
               batch_size=train.batch_size, seeds=[c.train.seed for c in cfgs], epochs=train.epochs,
               start_epoch=log.start_epoch, base_lrs=optimizer.base_lrs, lr_factor=lr_factor(cfgs[0]),
               augment=Augment.of(cfgs[0].data), on_epoch=log)
    fast.release(packed)
    ran = {**fast.columns(), "pack_size": len(cfgs), "pack_id": log.key, "unpacked_reason": ""}
    failed = []
    for g, (cfg, split) in enumerate(zip(cfgs, splits)):
        if storage.exists(record_path(TRIALS, cfg.trial_key)):  # recorded before a kill
            continue
        model = new_model(cfg, split, device)
        model.load_state_dict(member_state(packed, g, len(cfgs)))
        trained = Trained(model, log.histories[g], log.start_epoch, log.blown_up[g], {},
                          time.perf_counter() - train_start, ran)
        try:
            record_trained(cfg, ctx, storage, split, trained, started)
        except StorageError as exc:  # record the other members; the job fails below
            failed.append(exc)
    if failed:  # the `last` checkpoint stays: a retry resumes the pack and records the rest
        raise failed[0]
    checkpoints.remove_pack_resume(storage, log.key)


def _member_models(cfgs: Sequence[TrialConfig], splits: Sequence[Splits], device: str) -> list[torch.nn.Module]:
    """Each member's model, initialised exactly as its solo trial's."""
    models = []
    for cfg, split in zip(cfgs, splits):
        seed_everything(cfg.train.seed)
        models.append(new_model(cfg, split, device))
        if cfg.model.init_from:
            load_start(models[-1], cfg.model.init_from)
    return models


@dataclass
class PackLog:
    """`fit_packed`'s end-of-epoch callback: each member's history row and divergence,
    every `checkpoint_every` epochs the pack's `last` checkpoint (not after the final
    epoch), the epoch's rows to the job's progress, then the fault switch; answers
    whether any member still trains."""

    cfgs: Sequence[TrialConfig]
    storage: Storage
    packed: torch.nn.Module
    optimizer: torch.optim.Optimizer
    bases: list[dict[str, Any]]  # each member's config columns
    histories: list[list[dict[str, Any]]]
    blown_up: list[int]  # per member: the epoch its loss diverged (`workers.training.train.loss_diverged`); 0: still training
    start_epoch: int = 0
    progress: JobProgress | None = None

    @property
    def members(self) -> list[str]:
        """The members' trial keys in the pack's order: what its checkpoint's positions mean."""
        return [c.trial_key for c in self.cfgs]

    @property
    def key(self) -> str:
        return pack_id(self.members)

    @classmethod
    def start(cls, cfgs: Sequence[TrialConfig], storage: Storage, packed: torch.nn.Module,
              optimizer: torch.optim.Optimizer, bases: list[dict[str, Any]], device: str,
              progress: JobProgress | None = None) -> PackLog:
        """A fresh log (saving each member's `init`), or the one of the `last` checkpoint
        a killed run left, with the pack's weights and optimizer state restored."""
        log = cls(cfgs, storage, packed, optimizer, bases, [[] for _ in cfgs], [0] * len(cfgs), progress=progress)
        last = checkpoints.load_or_quarantine(storage, log.key, "last", device)  # damaged: start over
        if last is not None and last.get("members") != log.members:
            storage.quarantine(checkpoints.path(log.key, "last"))
            print(f"warning: {storage.path(checkpoints.path(log.key, 'last'))} does not name its members in "
                  "the order this pack trains them; moved to _quarantine/, the pack starts over", file=sys.stderr)
            last = None
        if last is None:
            for g, cfg in enumerate(cfgs):
                checkpoints.save(storage, cfg.trial_key, "init", {"model": member_state(packed, g, len(cfgs))})
            checkpoints.save_pack_members(storage, log.key, log.members)  # before its first `last`
            return log
        for g, cfg in enumerate(cfgs):
            checkpoints.restore_init(storage, cfg.trial_key, lambda g=g: {"model": member_state(packed, g, len(cfgs))})
        optimizer.load_state_dict(last["optimizer"])
        packed.load_state_dict(last["model"])
        log.histories, log.blown_up, log.start_epoch = last["histories"], last["blown_up"], last["epoch"]
        return log

    def __call__(self, stats: list[EpochStats]) -> bool:
        rows = {}  # this epoch's row of each member that trained in it
        for g, member in enumerate(stats):
            if not self.blown_up[g]:
                self.histories[g].append(history_row(self.bases[g], member))
                self.blown_up[g] = member.epoch if member.diverged else 0
                rows[self.cfgs[g].trial_key] = self.histories[g][-1]
        epoch, train = stats[0].epoch, self.cfgs[0].train
        if epoch % train.checkpoint_every == 0 and epoch < train.epochs:
            checkpoints.save(self.storage, self.key, "last", {
                "model": self.packed.state_dict(), "optimizer": self.optimizer.state_dict(),
                "histories": self.histories, "blown_up": self.blown_up, "epoch": epoch, "members": self.members,
            })
        if self.progress is not None:
            self.progress.end_epoch(epoch, rows)
        for trial_key in (self.key, *(c.trial_key for c in self.cfgs)):
            inject_fault(trial_key, epoch)
        return not all(self.blown_up)
