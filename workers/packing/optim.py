"""Optimizers of a packed network: every member steps as its solo optimizer would.

Each packed parameter holds G members' tensors along dim 0 (`workers.packing.modules`).
SGD and Adam(W) work element by element, so a member's own learning rate, weight decay
or momentum is a tensor of the parameter's shape holding each member's value in its
block; values the members share stay Python numbers, which keeps the arithmetic of the
solo optimizer. The updates are torch's own formulas (its multi-tensor SGD and Adam),
written with the same foreach kernels, so a packed member matches its solo run up to
rounding (tested in float64 to 1e-9).

ALI-G's step size is one number per model, from that model's loss and gradient norm,
and its norm constraint is per model too: both are reduced over each member's block.

`lr_factor` is the schedule's multiplier for the current epoch (`set_lr_factor`); the
learning rates themselves come from the members' configs and never change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from workers.core.config import TrialConfig
from workers.core.registry import Registry

PACKED_OPTIMIZERS = Registry("packed optimizer")

PerMember = float | list[torch.Tensor]  # one shared number, or a full tensor per parameter


def per_member(values: Sequence[float], params: list[torch.Tensor], members: int) -> PerMember:
    """Members' values of one hyperparameter, as the foreach kernels take them: a plain
    number when all members share it, else per parameter a tensor of its shape."""
    if len(set(values)) == 1:
        return float(values[0])
    spread = []
    for p in params:
        full = torch.empty_like(p)
        column = torch.tensor(values, dtype=p.dtype, device=p.device).view(members, *(1,) * p.dim())
        full.unflatten(0, (members, -1)).copy_(column.expand(members, *([1] * p.dim())))
        spread.append(full)
    return spread


def _add_scaled_(targets: list[torch.Tensor], others: list[torch.Tensor], scale: PerMember,
                 factor: float = 1.0) -> None:
    """targets += factor * scale * others, scale shared or per member."""
    if isinstance(scale, float):
        torch._foreach_add_(targets, others, alpha=factor * scale)
    else:
        torch._foreach_addcmul_(targets, others, scale, value=factor)


def _with_decay(grads: list[torch.Tensor], params: list[torch.Tensor], decay: PerMember) -> list[torch.Tensor]:
    """New gradients grad + decay * param (L2 weight decay; `.grad` stays as computed)."""
    if isinstance(decay, float):
        return torch._foreach_add(grads, params, alpha=decay)
    return torch._foreach_addcmul(grads, params, decay)


def _pick(value: PerMember, indices: list[int]) -> PerMember:
    return value if isinstance(value, float) else [value[i] for i in indices]


def _is_zero(value: PerMember) -> bool:
    return isinstance(value, float) and value == 0.0


class PackedOptimizer(torch.optim.Optimizer):
    """Shared machinery: one param group, the members count and the lr multiplier."""

    def __init__(self, params: list[torch.nn.Parameter], members: int, base_lrs: Sequence[float]) -> None:
        super().__init__(params, {"lr_factor": 1.0})
        self.members = members
        self.base_lrs = list(base_lrs)  # each member's lr before the schedule (its history's `lr`)

    @property
    def params(self) -> list[torch.Tensor]:
        return self.param_groups[0]["params"]

    def set_lr_factor(self, factor: float) -> None:
        self.param_groups[0]["lr_factor"] = factor

    def step_sizes(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-member sums of (clipped, unclipped) adaptive step sizes since the last
        call, and reset; None for optimizers without one."""
        return None


class PackedSGD(PackedOptimizer):
    """torch.optim.SGD (momentum, L2 weight decay; no dampening, no Nesterov) per member."""

    def __init__(self, params: list[torch.nn.Parameter], members: int, lr: Sequence[float],
                 momentum: Sequence[float], weight_decay: Sequence[float]) -> None:
        super().__init__(params, members, lr)
        self.lr = per_member(lr, self.params, members)
        self.momentum = per_member(momentum, self.params, members)
        self.weight_decay = per_member(weight_decay, self.params, members)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        params = [p for p in self.params if p.grad is not None]
        grads = [p.grad for p in params]
        if not _is_zero(self.weight_decay):
            grads = _with_decay(grads, params, _select(self.weight_decay, self.params, params))
        if not _is_zero(self.momentum):
            # buf <- momentum * buf + grad; a parameter's first step starts it at its gradient
            old = [i for i, p in enumerate(params) if "momentum_buffer" in self.state[p]]
            if old:
                buffers = [self.state[params[i]]["momentum_buffer"] for i in old]
                torch._foreach_mul_(buffers, _pick(_select(self.momentum, self.params, params), old))
                torch._foreach_add_(buffers, [grads[i] for i in old])
            for p, g in zip(params, grads):
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.clone(g).detach()
            grads = [self.state[p]["momentum_buffer"] for p in params]
        _add_scaled_(params, grads, _select(self.lr, self.params, params), -self.param_groups[0]["lr_factor"])


class PackedAdam(PackedOptimizer):
    """torch.optim.Adam / AdamW per member (betas and eps shared by the pack)."""

    def __init__(self, params: list[torch.nn.Parameter], members: int, lr: Sequence[float],
                 weight_decay: Sequence[float], betas: tuple[float, float], eps: float, decoupled: bool) -> None:
        super().__init__(params, members, lr)
        self.lr = per_member(lr, self.params, members)
        self.weight_decay = per_member(weight_decay, self.params, members)
        self.lr_times_decay = per_member([a * b for a, b in zip(lr, weight_decay)], self.params, members)
        self.betas, self.eps, self.decoupled = betas, eps, decoupled

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        factor = self.param_groups[0]["lr_factor"]
        beta1, beta2 = self.betas
        params = [p for p in self.params if p.grad is not None]
        grads = [p.grad for p in params]
        for p in params:  # torch's state: a step count and two moments per parameter
            state = self.state[p]
            if "step" not in state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        if not _is_zero(self.weight_decay):
            if self.decoupled:  # p *= 1 - lr * wd
                decay = _select(self.lr_times_decay, self.params, params)
                torch._foreach_mul_(params, 1 - factor * decay if isinstance(decay, float)
                                    else torch._foreach_add(torch._foreach_mul(decay, -factor), 1.0))
            else:
                grads = _with_decay(grads, params, _select(self.weight_decay, self.params, params))
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        steps = [self.state[p]["step"] for p in params]
        bias_correction1 = [1 - beta1**step for step in steps]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, [(1 - beta2**step) ** 0.5 for step in steps])
        torch._foreach_add_(denom, self.eps)
        lr = _select(self.lr, self.params, params)
        if isinstance(lr, float):
            torch._foreach_addcdiv_(params, exp_avgs, denom, [-(lr * factor) / bc for bc in bias_correction1])
        else:
            update = torch._foreach_div(exp_avgs, denom)
            torch._foreach_mul_(update, lr)
            torch._foreach_mul_(update, [-factor / bc for bc in bias_correction1])
            torch._foreach_add_(params, update)


class PackedAliG(PackedOptimizer):
    """ALI-G (workers.training.alig) per member: s_g = loss_g / (||grad_g||^2 + delta), capped at
    the member's max_lr; weights kept in the ball of radius max_norm per member.

    `step(closure)`: `closure()` returns the (G,) losses of the minibatch.
    """

    def __init__(self, params: list[torch.nn.Parameter], members: int, max_lr: Sequence[float | None],
                 momentum: Sequence[float], delta: float, max_norm: float | None) -> None:
        caps = [math.inf if v is None else v for v in max_lr]  # a group's lr is its cap, as in AliG
        super().__init__(params, members, caps)
        device = self.params[0].device
        self.max_lr = torch.tensor(caps, dtype=torch.float64, device=device)
        self.mu = torch.tensor(list(momentum), dtype=torch.float64, device=device)
        self.delta = delta
        self.max_norm = math.inf if max_norm is None else max_norm
        self._sums = [torch.zeros(members, dtype=torch.float64, device=device) for _ in range(2)]
        self._project()

    def _blocks(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t.unflatten(0, (self.members, -1)) for t in tensors]

    def _squared_norms(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """(G,) sums of squares over each member's block of every tensor, in float64."""
        return sum(b.double().pow(2).flatten(1).sum(1) for b in self._blocks(tensors))

    def _per_element(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.dtype).view(self.members, *(1,) * (like.dim() - 1))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        losses = closure().detach().double()
        params = [p for p in self.params if p.grad is not None]
        step_size = losses / (self._squared_norms([p.grad for p in params]) + self.delta)
        gamma = torch.minimum(step_size, self.max_lr * self.param_groups[0]["lr_factor"])
        moving = bool((self.mu != 0).any())
        for p in params:
            block, grad = p.unflatten(0, (self.members, -1)), p.grad.unflatten(0, (self.members, -1))
            update = grad * self._per_element(-gamma, block)
            block.add_(update)
            if moving:  # v <- mu v - gamma g; w <- w + mu v (workers.training.alig's form)
                mu = self._per_element(self.mu, block)
                buffer = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buffer = buffer.unflatten(0, (self.members, -1)).mul_(mu).add_(update)
                block.add_(buffer * mu)
        self._project(params)
        self._sums[0] += gamma
        self._sums[1] += step_size
        return losses

    def step_sizes(self) -> tuple[torch.Tensor, torch.Tensor]:
        sums = self._sums
        self._sums = [torch.zeros_like(s) for s in sums]
        return sums[0], sums[1]

    @torch.no_grad()
    def _project(self, params: list[torch.Tensor] | None = None) -> None:
        """Scale each member's weights onto its ball ||w_g|| <= max_norm (momentum untouched)."""
        if math.isinf(self.max_norm):
            return
        params = self.params if params is None else params
        norms = self._squared_norms(params).sqrt()
        scale = torch.where(norms > self.max_norm, self.max_norm / norms, torch.ones_like(norms))
        for p in self._blocks(params):
            p.mul_(self._per_element(scale, p))


def _select(value: PerMember, all_params: list[torch.Tensor], params: list[torch.Tensor]) -> PerMember:
    """`value`'s entries for the subset `params` of `all_params` (those with gradients)."""
    if isinstance(value, float) or len(params) == len(all_params):
        return value
    index = {id(p): i for i, p in enumerate(all_params)}
    return [value[index[id(p)]] for p in params]


@PACKED_OPTIMIZERS.register("sgd")
def packed_sgd(params: list[torch.nn.Parameter], cfgs: Sequence[TrialConfig]) -> PackedOptimizer:
    return PackedSGD(params, len(cfgs), [c.optim.lr for c in cfgs], [c.optim.momentum for c in cfgs],
                     [c.optim.weight_decay for c in cfgs])


def _packed_adam(decoupled: bool) -> Callable[[list[torch.nn.Parameter], Sequence[TrialConfig]], PackedOptimizer]:
    def build(params: list[torch.nn.Parameter], cfgs: Sequence[TrialConfig]) -> PackedOptimizer:
        a = cfgs[0].adam
        return PackedAdam(params, len(cfgs), [c.adam.lr for c in cfgs], [c.optim.weight_decay for c in cfgs],
                          (a.beta1, a.beta2), a.eps, decoupled)

    return build


PACKED_OPTIMIZERS.register("adam")(_packed_adam(decoupled=False))
PACKED_OPTIMIZERS.register("adamw")(_packed_adam(decoupled=True))


@PACKED_OPTIMIZERS.register("alig")
def packed_alig(params: list[torch.nn.Parameter], cfgs: Sequence[TrialConfig]) -> PackedOptimizer:
    a = cfgs[0].alig
    return PackedAliG(params, len(cfgs), [c.alig.max_lr for c in cfgs], [c.optim.momentum for c in cfgs],
                      a.delta, a.max_norm)


def build_packed_optimizer(params: list[torch.nn.Parameter], cfgs: Sequence[TrialConfig]) -> PackedOptimizer:
    """The members' optimizer (they share its name, see `workers.packing.policy`)."""
    return PACKED_OPTIMIZERS.get(cfgs[0].optim.optimizer)([p for p in params if p.requires_grad], cfgs)
