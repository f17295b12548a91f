"""Optimizers and learning-rate schedules by name.

An optimizer entry is `builder(params, cfg: TrialConfig) -> torch.optim.Optimizer`;
each optimizer reads its own options (`lr` for SGD, the `adam` and `alig` sections), so
one grid can compare them. It declares `state`: the parameter-sized tensors it keeps
per parameter (SGD's and ALI-G's momentum buffer: 1, counted even at momentum 0; Adam's
two moments: 2), which the memory check adds to the weights and their gradients. A schedule entry is `factor(cfg: OptimConfig, epochs) ->
(epoch -> lr multiplier)`. The lr changes once per epoch and is a function of the epoch
number alone, so a resumed trial recomputes it without scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from workers.core.config import Section, TrialConfig, option, section
from workers.core.errors import ConfigError
from workers.core.registry import Registry
from workers.training.alig import AliG
from workers.training.train import Hook

OPTIMIZERS = Registry("optimizer", requires=("state",))
SCHEDULES = Registry("schedule")


@section("optim")
@dataclass(frozen=True)
class OptimConfig(Section):
    optimizer: str = "sgd"
    lr: float = option(0.1, gt=0)
    momentum: float = option(0.9, ge=0, lt=1)
    weight_decay: float = option(5e-4, ge=0)
    schedule: str = "step"
    milestones: tuple[int, ...] = (75,)  # epochs at which the step schedule decays
    lr_factor: float = option(0.1, gt=0)  # multiplier applied at each milestone
    # linear_decay (late-phase paper): constant, then linear down to final_lr_factor * lr;
    # fractions of the run, so the paper's 100 -> 180 of 200 epochs is 0.5 -> 0.9.
    decay_start: float = 0.5
    decay_end: float = 0.9
    final_lr_factor: float = option(0.01, gt=0)
    warmup_epochs: int = option(0, ge=0)  # lr ramps up linearly over these first epochs (0: no warm-up)

    def check(self) -> None:
        OPTIMIZERS.check(self.optimizer, "optimizer")
        SCHEDULES.check(self.schedule, "schedule")
        if self.schedule == "linear_decay" and not 0.0 <= self.decay_start < self.decay_end <= 1.0:
            raise ConfigError("decay_end", f"need 0 <= decay_start < decay_end <= 1 (fractions of the run), "
                              f"got {self.decay_start!r} and {self.decay_end!r}")

    def check_with(self, config: TrialConfig) -> None:
        epochs = config.train.epochs
        if self.warmup_epochs >= epochs:
            raise ConfigError("warmup_epochs", f"{self.warmup_epochs} leaves no epoch after the warm-up "
                              f"(epochs={epochs})")
        if self.schedule == "step":
            for m in self.milestones:
                if not 1 <= m <= epochs:
                    raise ConfigError("milestones", f"{m} is outside 1..epochs ({epochs})")


@section("adam", prefix="adam")
@dataclass(frozen=True)
class AdamConfig(Section):
    """Adam and AdamW (optimizer=adam|adamw); their own lr, so one grid can hold SGD too.
    weight_decay is shared: L2 in the gradient for adam, decoupled for adamw."""

    lr: float = option(1e-3, gt=0)
    beta1: float = option(0.9, ge=0, lt=1)
    beta2: float = option(0.999, ge=0, lt=1)
    eps: float = option(1e-8, gt=0)

Params = Iterable[torch.nn.Parameter]


@OPTIMIZERS.register("sgd", state=1)
def sgd(params: Params, cfg: TrialConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


@OPTIMIZERS.register("adam", state=2)
def adam(params: Params, cfg: TrialConfig) -> torch.optim.Optimizer:
    a = cfg.adam
    return torch.optim.Adam(params, lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps,
                            weight_decay=cfg.optim.weight_decay)


@OPTIMIZERS.register("adamw", state=2)
def adamw(params: Params, cfg: TrialConfig) -> torch.optim.Optimizer:
    a = cfg.adam
    return torch.optim.AdamW(params, lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps,
                             weight_decay=cfg.optim.weight_decay)


@OPTIMIZERS.register("alig", state=1, scheduled=False)  # the paper uses no lr schedule
def alig(params: Params, cfg: TrialConfig) -> torch.optim.Optimizer:
    a = cfg.alig
    return AliG(params, max_lr=a.max_lr, momentum=cfg.optim.momentum, delta=a.delta, max_norm=a.max_norm)


@SCHEDULES.register("step")
def step_schedule(cfg: OptimConfig, epochs: int) -> Callable[[int], float]:
    """Multiply the lr by lr_factor at every milestone epoch (paper: x0.1 at 75 of 100)."""
    return lambda epoch: cfg.lr_factor ** sum(epoch >= m for m in cfg.milestones)


@SCHEDULES.register("constant")
def constant_schedule(cfg: OptimConfig, epochs: int) -> Callable[[int], float]:
    return lambda epoch: 1.0


@SCHEDULES.register("cosine")
def cosine_schedule(cfg: OptimConfig, epochs: int) -> Callable[[int], float]:
    """Cosine decay from lr to 0 over the run."""
    return lambda epoch: 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


@SCHEDULES.register("linear_decay")
def linear_decay_schedule(cfg: OptimConfig, epochs: int) -> Callable[[int], float]:
    """Late-phase paper: constant until decay_start, linear down to final_lr_factor at
    decay_end, then flat (fractions of the run; 0.1 -> 0.001 over epochs 100..180 of 200)."""

    def factor(epoch: int) -> float:
        t = epoch / epochs
        if t <= cfg.decay_start:
            return 1.0
        if t >= cfg.decay_end:
            return cfg.final_lr_factor
        return 1.0 + (cfg.final_lr_factor - 1.0) * (t - cfg.decay_start) / (cfg.decay_end - cfg.decay_start)

    return factor


def lr_factor(cfg: TrialConfig) -> Callable[[int], float]:
    """The lr multiplier of each epoch (0-based): the schedule times a linear warm-up,
    replaced by swa.lr_factor from the SWA start epoch; 1 for optimizers without one."""
    if not OPTIMIZERS.meta(cfg.optim.optimizer).get("scheduled", True):
        return lambda epoch: 1.0
    schedule = SCHEDULES.get(cfg.optim.schedule)(cfg.optim, cfg.train.epochs)
    warmup, swa = cfg.optim.warmup_epochs, cfg.swa

    def factor(epoch: int) -> float:
        if swa.start and epoch >= swa.start - 1:
            return swa.lr_factor
        return schedule(epoch) * min(1.0, (epoch + 1) / (warmup + 1))

    return factor


class LrSchedule(Hook):
    """Sets every param group's lr to its initial lr times `factor(epoch)` at the start
    of each epoch; groups created later (late-phase members) start from their own lr."""

    def __init__(self, factor: Callable[[int], float], param_groups: Callable[[], list[dict[str, Any]]]) -> None:
        self.factor, self.param_groups = factor, param_groups

    def start_epoch(self, epoch: int) -> None:
        for group in self.param_groups():
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * self.factor(epoch)


def build_optimizer(params: Params, cfg: TrialConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable ones among `params`."""
    return OPTIMIZERS.get(cfg.optim.optimizer)([p for p in params if p.requires_grad], cfg)
