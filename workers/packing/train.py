"""The packed training epoch: G members, each on its own solo batches.

Member g's batches come from `workers.training.train.epoch_batches` with its own seed and
labels, exactly as its solo trial draws them (order and augmentation from the epoch's
generator); the G batches of a step are stacked along channels into one packed batch.
The loss is the sum of the members' mean cross-entropies: each member's parameters see
only its own term, so its gradient is its solo gradient.

Members never mix, so one member diverging (`EpochStats.diverged`, the rule solo
training applies) leaves the others' numbers untouched; it keeps running (its exploded
or NaN values stay in its own channels) and the job stops recording it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from workers.packing.modules import split_outputs, stack_inputs
from workers.packing.optim import PackedOptimizer
from workers.training.augment import NONE, Augment
from workers.training.fast_path import PLAIN, FastPath
from workers.training.train import EpochStats, TrainConfig, epoch_batches


def pack_fast_path(train: TrainConfig, device: str) -> FastPath:
    """How a pack trains on `device`: the members' fast path (workers.training.fast_path)."""
    return FastPath.for_device(train, device)


class PackedUpdate:
    """Forward the packed batch, per-member losses, one backward, one packed step."""

    def __init__(self, packed: nn.Module, optimizer: PackedOptimizer, fast: FastPath = PLAIN) -> None:
        self.packed, self.optimizer, self.fast = packed, optimizer, fast
        self.members = optimizer.members
        self._forward = fast.forward(packed)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update on one packed batch xb (B, G*C, H, W) with labels yb (B, G); returns the
        (G,) losses and the (B, G, classes) logits, detached."""
        with self.fast.precision():
            logits = split_outputs(self._forward(xb), self.members)
            # (B, classes, G) against (B, G): one cross-entropy per sample and member
            losses = F.cross_entropy(logits.transpose(1, 2), yb, reduction="none").mean(0)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        detached = losses.detach()
        self.optimizer.step(lambda: detached)
        return detached, logits.detach()


def train_packed_epoch(
    update: PackedUpdate, x: torch.Tensor, ys: Sequence[torch.Tensor], *, batch_size: int,
    seeds: Sequence[int], epoch: int, lrs: Sequence[float], augment: Augment = NONE,
) -> list[EpochStats]:
    """One epoch of every member; one `EpochStats` per member (its solo figures)."""
    start = time.perf_counter()
    update.packed.train()
    members = update.members
    loss_sum = torch.zeros(members, device=x.device)  # float32, as solo
    correct = torch.zeros(members, device=x.device, dtype=torch.long)
    seen, steps, classes = 0, 0, 0
    streams = [epoch_batches(x, y, batch_size, seed, epoch, augment) for y, seed in zip(ys, seeds)]
    for batches in zip(*streams):
        xb = update.fast.inputs(stack_inputs([b[0] for b in batches]))  # the pack's layout: one copy
        yb = torch.stack([b[1] for b in batches], dim=1)  # (B, G)
        losses, logits = update(xb, yb)  # (G,), (B, G, classes)
        loss_sum += losses * len(yb)
        correct += (logits.argmax(2) == yb).sum(0)
        seen, steps, classes = seen + len(yb), steps + 1, logits.shape[-1]
    sizes = update.optimizer.step_sizes()
    clipped, unclipped = ([math.nan] * members,) * 2 if sizes is None else \
        ((s / max(steps, 1)).tolist() for s in sizes)
    elapsed = time.perf_counter() - start
    # One host sync per epoch; as solo, the float32 sums divided in double.
    losses_mean = (loss_sum.double() / max(seen, 1)).tolist()
    accuracy = (correct.double() / max(seen, 1)).tolist()
    return [EpochStats(epoch + 1, lrs[g], losses_mean[g], accuracy[g], elapsed, classes, clipped[g], unclipped[g])
            for g in range(members)]


def fit_packed(
    update: PackedUpdate, x: torch.Tensor, ys: Sequence[torch.Tensor], *, batch_size: int,
    seeds: Sequence[int], epochs: int, start_epoch: int, base_lrs: Sequence[float],
    lr_factor: Callable[[int], float], augment: Augment = NONE,
    on_epoch: Callable[[list[EpochStats]], bool],
) -> None:
    """Train the members from `start_epoch` to `epochs`; `on_epoch` gets every member's
    stats after each epoch and returns whether any member is still worth training."""
    for epoch in range(start_epoch, epochs):
        factor = lr_factor(epoch)
        update.optimizer.set_lr_factor(factor)
        stats = train_packed_epoch(update, x, ys, batch_size=batch_size, seeds=seeds, epoch=epoch,
                                   lrs=[lr * factor for lr in base_lrs], augment=augment)
        if not on_epoch(stats):
            return
