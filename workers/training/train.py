"""The training loop and the evaluation pass, on device-resident tensors.

Batches are index slices of tensors already on the device: no DataLoader, no worker
processes. Each epoch's order comes from a generator seeded by (seed, epoch), so a
trial resumed at epoch e sees exactly the batches it would have seen.

Training variants stay out of the loop's body: the minibatch update is an `Update`
object (plain, or late-phase weights in `workers.training.late_phase`), and everything that acts
between epochs (lr schedule, late-phase members, SWA) is a `Hook` the loop calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from workers.core.config import Section, TrialConfig, option, section
from workers.core.errors import ConfigError
from workers.training.augment import NONE, Augment
from workers.training.fast_path import PLAIN, FastPath


@section("train")
@dataclass(frozen=True)
class TrainConfig(Section):
    # How a model is computed, not which model: changing these keeps its trial key.
    unhashed: ClassVar[tuple[str, ...]] = ("checkpoint_every", "channels_last", "torch_compile")
    keyed_when_set: ClassVar[tuple[str, ...]] = ("precision",)

    epochs: int = option(100, ge=1)
    batch_size: int = option(128, ge=1)
    # A pair job seeds numpy with 1000 * seed_a + seed_b, which must stay below 2**32.
    seed: int = option(0, ge=0, le=999_999, note="seeds of a pair are combined as 1000 * a + b")
    checkpoint_every: int = option(1, ge=1)  # epochs between resume checkpoints
    # "bf16": training forward passes under bfloat16 autocast, any device
    precision: str = option("fp32", choices=("fp32", "bf16"))
    # CUDA only (workers.training.fast_path); on other devices training runs eager in the default layout.
    channels_last: bool = True  # NHWC weights and images for training
    torch_compile: bool = False  # compile the training step (pays off for long trials)

    def check_with(self, config: TrialConfig) -> None:
        n_train = config.data.n_train()
        if self.batch_size > n_train:
            raise ConfigError("batch_size", f"{self.batch_size} is larger than the training set ({n_train} "
                              f"samples of {config.data.dataset} at data_fraction={config.data.data_fraction})")


# A model has diverged when its epoch's mean training loss is not finite or exceeds
# EXPLODED_LOSS_FACTOR x ln(classes), ln(classes) being the cross-entropy of a uniform
# guess (2.3 for 10 classes, 4.6 for 100). Why 1e3 (measured on digits): models that
# learn stay near or below ln C (ResNet18-k up to lr 2: at most 1.2 x); at too high an
# lr, runs sit at chance accuracy with losses of tens to hundreds x ln C (MLP: 43 x at
# lr 1, 307 x at lr 10), and every run that passed 1e3 x (4.6e4 to 2.1e9) went on to
# 1e7-1e34 or NaN within a few epochs. So the limit is far above any loss a learning
# model reports and far below where float32 overflows (3.4e38): waiting for a NaN let a
# sweep record a model `ok` at 5.7e29. Solo (`fit`) and packed training (`fit_packed`,
# per member) both judge `EpochStats`, so a packed member diverges when its solo run does.
EXPLODED_LOSS_FACTOR = 1e3


def loss_diverged(train_loss: float, classes: int) -> bool:
    """Whether a mean cross-entropy over `classes` classes marks a diverged model: not
    finite, or above `EXPLODED_LOSS_FACTOR` x ln(classes) (see there)."""
    assert classes >= 2, classes
    return not math.isfinite(train_loss) or train_loss > EXPLODED_LOSS_FACTOR * math.log(classes)


def divergence_reason(epoch: int) -> str:
    """The error text of a model that diverged at `epoch` (1-based), stating the rule."""
    return f"training loss non-finite or above {EXPLODED_LOSS_FACTOR:g} x ln(classes) at epoch {epoch}"


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based: the number of epochs finished
    lr: float
    train_loss: float  # mean over the epoch's batches, model in train mode
    train_acc: float
    time_s: float
    classes: int  # of the model's outputs: the divergence rule's scale
    step_size: float = math.nan  # mean adaptive step size (ALI-G) of the epoch's steps
    step_size_unclipped: float = math.nan  # the same before the max_lr cap

    @property
    def diverged(self) -> bool:
        """The rule of `loss_diverged`: the loss is not finite or has exploded."""
        return loss_diverged(self.train_loss, self.classes)


def epoch_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, epoch: int, augment: Augment = NONE,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled full batches of one epoch, augmented; the last partial batch is dropped
    (paper). Order and augmentation both come from the epoch's seeded generator."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(y), generator=generator).to(x.device)
    for start in range(0, len(y) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        yield augment(x[idx], generator), y[idx]


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Hook:
    """What the loop calls around every epoch; a variant overrides what it needs.

    `finish` runs once after the last epoch of a run that did not diverge and returns
    extra entries for the final checkpoint; `state_dict` goes into resume checkpoints.
    """

    def start_epoch(self, epoch: int) -> None:
        """Before the epoch's first batch (`epoch` is 0-based)."""

    def end_epoch(self, epoch: int) -> None:
        """After the epoch's last batch, before its checkpoint."""

    def finish(self, x: torch.Tensor) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict`; called before the model's weights are loaded."""


class Update(Hook):
    """The plain minibatch update: forward, loss, backward, one optimizer step.

    The optimizer gets a closure returning the loss (`step(closure)` is torch's
    protocol): ALI-G needs the value, the others ignore it. Forward passes go through
    `fast` (on CUDA: bf16 autocast, torch.compile; see workers.training.fast_path).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn = F.cross_entropy,
                 fast: FastPath = PLAIN) -> None:
        self.model, self.optimizer, self.loss_fn, self.fast = model, optimizer, loss_fn, fast
        self._forward = fast.forward(model)
        self._step_sizes: list[tuple[float, float]] = []

    def param_groups(self) -> list[dict[str, Any]]:
        """Every param group this update steps (the lr schedule sets them all)."""
        return self.optimizer.param_groups

    def __call__(self, i: int, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update on minibatch `i` of the epoch; returns its (loss, logits), detached."""
        loss, logits = self.loss(xb, yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.step(self.optimizer, loss.detach())
        return loss.detach(), logits.detach()

    def loss(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of a minibatch, forward pass in the fast path's precision."""
        with self.fast.precision():
            logits = self._forward(xb)
            return self.loss_fn(logits, yb), logits

    def step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """Step `optimizer`, noting its step size if it has an adaptive one."""
        optimizer.step(lambda: loss)
        if hasattr(optimizer, "last_step_size"):
            self._step_sizes.append((optimizer.last_step_size, optimizer.last_step_size_unclipped))

    def step_sizes(self) -> tuple[float, float]:
        """Mean (clipped, unclipped) adaptive step size since the last call; NaN if none."""
        sizes, self._step_sizes = self._step_sizes, []
        if not sizes:
            return math.nan, math.nan
        return sum(s for s, _ in sizes) / len(sizes), sum(u for _, u in sizes) / len(sizes)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def train_epoch(
    model: nn.Module,
    update: Update,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    seed: int,
    epoch: int,
    augment: Augment = NONE,
) -> EpochStats:
    """One epoch of minibatch updates; divergence shows in train_loss (`loss_diverged`)."""
    start = time.perf_counter()
    model.train()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    seen, classes = 0, 0
    lr = update.param_groups()[0]["lr"]
    for i, (xb, yb) in enumerate(epoch_batches(x, y, batch_size, seed, epoch, augment)):
        loss, logits = update(i, xb, yb)  # logits (B, classes)
        loss_sum += loss * len(yb)
        correct += (logits.argmax(1) == yb).sum()
        seen, classes = seen + len(yb), logits.shape[-1]
    # One host sync per epoch: a blown-up run is caught here, at most one epoch late.
    step_size, unclipped = update.step_sizes()
    return EpochStats(epoch + 1, lr, float(loss_sum) / max(seen, 1), float(correct) / max(seen, 1),
                      time.perf_counter() - start, classes, step_size, unclipped)


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


@torch.no_grad()
def recompute_bn(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Replace every BatchNorm's running statistics by those of `model` on `x`.

    Weights that training did not produce (an interpolated point, a point on a Bezier
    curve, an SWA average) have statistics that are not any mix of the stored ones, so
    they are measured: a forward pass in train mode over `x` in `batch_size` chunks, each
    weighted by its size (the exact mean over all samples; the variance is the mean of
    the chunks' variances). The model's train/eval mode is left as it was.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training, saved = model.training, [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
    model.train()
    seen = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        for m in norms:  # running = running + momentum * (batch - running)
            m.momentum = len(xb) / (seen + len(xb))
        model(xb)
        seen += len(xb)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.train(was_training)


def fit(
    model: nn.Module,
    update: Update,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hooks: Iterable[Hook],
    batch_size: int,
    seed: int,
    epochs: int,
    start_epoch: int = 0,
    augment: Augment = NONE,
    on_epoch: Callable[[EpochStats], None] = lambda stats: None,
) -> EpochStats | None:
    """Train from `start_epoch` to `epochs`; stop early and return the stats of the
    epoch that diverged (`EpochStats.diverged`: its loss is not finite or exploded).

    `hooks` are called in order at the start and at the end of every epoch (list the
    update first: late-phase creates its members before the schedule sets their lr).
    """
    for epoch in range(start_epoch, epochs):
        for hook in hooks:
            hook.start_epoch(epoch)
        stats = train_epoch(model, update, x, y, batch_size, seed, epoch, augment)
        for hook in hooks:
            hook.end_epoch(epoch)
        on_epoch(stats)
        if stats.diverged:
            return stats
    return None


def finish(hooks: Sequence[Hook], x: torch.Tensor) -> dict[str, Any]:
    """Run every hook's `finish` in reverse order, like nested context managers (SWA
    averages the late-phase model before late-phase collapses it); merged extras."""
    extras: dict[str, Any] = {}
    for hook in reversed(hooks):
        extras.update(hook.finish(x))
    return extras
