"""ALI-G (Berrada, Zisserman, Kumar, ICML 2020): a Polyak step size for models that can
interpolate the training data, so the optimal loss is taken as 0.

One step size for the whole model, s = loss / (||g||^2 + delta), capped per parameter
group at `lr` (the paper's max_lr). Regularisation is a constraint instead of weight
decay: the weights are projected onto the l2 ball of radius `max_norm` once at
construction and after every step. The step needs the minibatch loss, so `step` takes a
closure returning it: `optimizer.step(lambda: loss)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from workers.core.config import Section, option, section


@section("alig", prefix="alig")
@dataclass(frozen=True)
class AligConfig(Section):
    """ALI-G's options (optimizer=alig): the step size comes from the loss; lr,
    weight_decay and the schedule do not apply; `momentum` is its mu (paper: 0.9)."""

    max_lr: float | None = option(None, gt=0)  # cap on the step size; None: no cap
    max_norm: float | None = option(None, gt=0)  # radius of the l2 ball the weights are kept in; None: none
    delta: float = option(1e-5, ge=0)  # added to the squared gradient norm


class AliG(torch.optim.Optimizer):
    """ALI-G with the published momentum variant.

    With momentum mu the buffer holds step-size-weighted updates, v <- mu v - gamma g,
    and the weights move by -gamma g + mu v (not PyTorch SGD's form, which differs once
    gamma changes between steps). `max_lr` / `max_norm` None: no cap / no constraint.
    A group's `lr` is its cap (inf: none), which keeps torch's lr schedulers and
    `param_groups` conventions usable.

    `last_step_size` / `last_step_size_unclipped` hold the previous step's gamma (first
    group) and s, for the history table. Reading the loss costs one host sync per step.
    """

    def __init__(
        self, params: Iterable[torch.nn.Parameter], max_lr: float | None = None, momentum: float = 0.0,
        delta: float = 1e-5, max_norm: float | None = None,
    ) -> None:
        max_lr = math.inf if max_lr is None else max_lr
        self.max_norm = math.inf if max_norm is None else max_norm
        assert max_lr > 0 and self.max_norm > 0 and delta >= 0 and 0 <= momentum < 1
        super().__init__(params, {"lr": max_lr, "momentum": momentum})
        self.delta = delta
        self.last_step_size = math.nan
        self.last_step_size_unclipped = math.nan
        self._project([p for group in self.param_groups for p in group["params"]])

    @torch.no_grad()
    def step(self, closure: Callable[[], float | torch.Tensor]) -> float:  # type: ignore[override]
        """One ALI-G step with the gradients in `p.grad`; `closure()` returns the loss."""
        loss = float(closure())
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        grad_sq = _squared_norm([p.grad for p in params])
        step_size = loss / (grad_sq + self.delta)
        for group in self.param_groups:
            gamma = min(step_size, group["lr"])
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.add_(p.grad, alpha=-gamma)
                if mu:
                    buffer = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                    buffer.mul_(mu).add_(p.grad, alpha=-gamma)
                    p.add_(buffer, alpha=mu)
        self._project(params)
        self.last_step_size = min(step_size, self.param_groups[0]["lr"])
        self.last_step_size_unclipped = step_size
        return loss

    @torch.no_grad()
    def _project(self, params: list[torch.Tensor]) -> None:
        """Scale `params` together onto the ball ||w|| <= max_norm (momentum untouched)."""
        if math.isinf(self.max_norm) or not params:
            return
        norm = math.sqrt(_squared_norm(params))
        if norm > self.max_norm:
            for p in params:
                p.mul_(self.max_norm / norm)


def _squared_norm(tensors: list[torch.Tensor]) -> float:
    """Sum of squares over all tensors, in float64, with one host sync."""
    if not tensors:
        return 0.0
    return float(torch.stack([t.double().pow(2).sum() for t in tensors]).sum())
