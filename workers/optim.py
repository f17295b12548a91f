"""Optimizers and learning-rate schedules by name.

An optimizer entry is `builder(params, cfg: OptimConfig) -> torch.optim.Optimizer`.
A schedule entry is `factor(cfg, epochs) -> (epoch -> lr multiplier)`; schedules step
once per epoch, so a resumed trial recomputes its lr from the epoch number alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from workers.config import OptimConfig
from workers.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


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


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS.get(cfg.optimizer)(params, cfg)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULES.get(cfg.schedule)(cfg, epochs))
