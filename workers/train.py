"""The training loop and the evaluation pass, on device-resident tensors.

Batches are index slices of tensors already on the device: no DataLoader, no worker
processes. Each epoch's order comes from a generator seeded by (seed, epoch), so a
trial resumed at epoch e sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based: the number of epochs finished
    lr: float
    train_loss: float  # mean over the epoch's batches, model in train mode
    train_acc: float
    time_s: float

    @property
    def diverged(self) -> bool:
        return not math.isfinite(self.train_loss)


def epoch_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, epoch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled full batches of one epoch; the last partial batch is dropped (paper)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(y), generator=generator).to(x.device)
    for start in range(0, len(y) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    seed: int,
    epoch: int,
) -> EpochStats:
    """One epoch of minibatch steps; divergence shows as a non-finite train_loss."""
    start = time.perf_counter()
    model.train()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    seen = 0
    lr = optimizer.param_groups[0]["lr"]
    for xb, yb in epoch_batches(x, y, batch_size, seed, epoch):
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(yb)
        correct += (logits.detach().argmax(1) == yb).sum()
        seen += len(yb)
    # One host sync per epoch: a blown-up run is caught here, at most one epoch late.
    return EpochStats(
        epoch + 1, lr, float(loss_sum) / max(seen, 1), float(correct) / max(seen, 1),
        time.perf_counter() - start,
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over all of (x, y), model in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(y), chunk):
        logits = model(x[start : start + chunk])
        target = y[start : start + chunk]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
        correct += (logits.argmax(1) == target).sum()
    return float(loss_sum) / len(y), float(correct) / len(y)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    seed: int,
    epochs: int,
    start_epoch: int = 0,
    on_epoch: Callable[[EpochStats], None] = lambda stats: None,
) -> EpochStats | None:
    """Train from `start_epoch` to `epochs`; stop early and return the stats on divergence."""
    for epoch in range(start_epoch, epochs):
        stats = train_epoch(model, optimizer, x, y, batch_size, seed, epoch)
        schedule.step()
        on_epoch(stats)
        if stats.diverged:
            return stats
    return None
