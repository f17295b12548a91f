"""Late-phase weights (von Oswald et al., ICLR 2021) for any model the project builds.

From epoch t0, every BatchNorm layer (gamma, beta and its running statistics) and the
classifier head (the model's last Linear) become `Members`: K copies of the layer. The
rest of the network, theta, is shared. Minibatch i of an epoch trains member i mod K
with that member's own optimizer; theta's gradients add up over a cycle of K minibatches
and theta takes one step per cycle with the summed gradient times gamma_theta (a
leftover partial cycle at the end of an epoch is discarded).

Evaluation averages the members' outputs. `collapse` turns the model back into a plain
one computing exactly that in eval mode: a head with averaged weights, and for BatchNorm
the per-channel affine map scale = mean_k gamma_k / sqrt(var_k + eps),
shift = mean_k (beta_k - gamma_k mu_k / sqrt(var_k + eps)) -- not BatchNorm with averaged
statistics. Landscape metrics and pair trials therefore see an ordinary model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from workers.core.config import Section, TrialConfig, option, section
from workers.core.errors import ConfigError
from workers.training.fast_path import PLAIN, FastPath
from workers.training.train import LossFn, Update

MakeOptimizer = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


@section("late_phase", prefix="late_phase")
@dataclass(frozen=True)
class LatePhaseConfig(Section):
    """From epoch t0, BatchNorm layers (and the head) get k members trained round-robin;
    k = 0 is off."""

    k: int = 0  # members per late-phase layer (paper: 10); 0: off
    t0: int = option(0, ge=0)  # epochs of ordinary training before the members are created (paper: 120)
    sigma0: float = option(0.0, ge=0)  # std of Gaussian noise added to each member's copied weights
    gamma_theta: float = option(1.0, gt=0)  # scale of the shared weights' summed gradient per cycle
    include_head: bool = True  # the classifier head gets members too (paper: yes)

    def check(self) -> None:
        if self.k != 0 and self.k < 2:
            raise ConfigError("late_phase.k", f"needs at least 2 members (0: off), got {self.k!r}")

    def check_with(self, config: TrialConfig) -> None:
        if not self.k:
            return
        if self.t0 >= config.train.epochs:
            raise ConfigError("late_phase.t0", f"{self.t0} leaves no late-phase epoch: must be below "
                              f"epochs ({config.train.epochs})")
        if not self.include_head and not config.model.has_batchnorm():
            raise ConfigError("late_phase.include_head", f"model {config.model.model!r} (batchnorm="
                              f"{config.model.batchnorm}) has no BatchNorm layer, so the head is the only "
                              "late-phase layer: set late_phase.include_head=true")


class Members(nn.Module):
    """K copies of one layer: forward uses the active member, or averages all outputs."""

    def __init__(self, layer: nn.Module, k: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(copy.deepcopy(layer) for _ in range(k))
        self.active: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active is not None:
            return self.members[self.active](x)
        return torch.stack([m(x) for m in self.members]).mean(0)


def late_phase_layers(model: nn.Module, include_head: bool) -> list[str]:
    """Names of the layers that get members: every BatchNorm, and the last Linear."""
    names = [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if include_head and linears:
        names.append(linears[-1])
    return names


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, layer)


def expand(
    model: nn.Module, names: list[str], k: int, sigma0: float = 0.0, generator: torch.Generator | None = None,
) -> list[Members]:
    """Replace each named layer by K copies (running statistics included), in place;
    each copy's parameters get Gaussian noise of std sigma0."""
    groups = []
    for name in names:
        members = Members(model.get_submodule(name), k)
        if sigma0 > 0:
            with torch.no_grad():
                for p in members.parameters():
                    p.add_(sigma0 * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device))
        _replace(model, name, members)
        groups.append(members)
    return groups


def set_active(model: nn.Module, k: int | None) -> None:
    """Route every late-phase layer through member k (None: average all members)."""
    for module in model.modules():
        if isinstance(module, Members):
            module.active = k


@torch.no_grad()
def collapse_layer(members: Members) -> nn.Module:
    """One plain layer whose eval-mode output is the mean of the members' outputs."""
    layers = list(members.members)
    out = copy.deepcopy(layers[0])
    if isinstance(out, nn.Linear):
        out.weight.copy_(torch.stack([m.weight for m in layers]).mean(0))
        if out.bias is not None:
            out.bias.copy_(torch.stack([m.bias for m in layers]).mean(0))
        return out
    assert isinstance(out, _BatchNorm) and out.affine and out.track_running_stats, type(out)
    eps = out.eps
    inv_std = [m.weight / torch.sqrt(m.running_var + eps) for m in layers]
    scale = torch.stack(inv_std).mean(0)
    shift = torch.stack([m.bias - s * m.running_mean for m, s in zip(layers, inv_std)]).mean(0)
    # Keep the averaged statistics (so recomputing them later behaves naturally) and
    # solve gamma, beta so that (x - mean) / sqrt(var + eps) * gamma + beta = scale x + shift.
    out.running_mean.copy_(torch.stack([m.running_mean for m in layers]).mean(0))
    out.running_var.copy_(torch.stack([m.running_var for m in layers]).mean(0))
    out.weight.copy_(scale * torch.sqrt(out.running_var + eps))
    out.bias.copy_(shift + scale * out.running_mean)
    return out


def collapse(model: nn.Module) -> None:
    """Replace every `Members` of `model` by its collapsed plain layer, in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Members):
            _replace(model, name, collapse_layer(module))


def _drop_params(optimizer: torch.optim.Optimizer, dropped: set[int]) -> None:
    """Remove parameters (by id) and their state from an optimizer, in place."""
    for group in optimizer.param_groups:
        kept = [p for p in group["params"] if id(p) not in dropped]
        for p in group["params"]:
            if id(p) in dropped:
                optimizer.state.pop(p, None)
        group["params"] = kept


class LatePhase(Update):
    """The update rule with late-phase weights: plain updates before epoch t0; from t0,
    one member per minibatch (round robin) and one step of the shared weights per cycle.

    `optimizer` starts over all weights and keeps only the shared ones at t0;
    `make_optimizer` builds each member's own optimizer (fresh state).
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, make_optimizer: MakeOptimizer,
        cfg: LatePhaseConfig, seed: int, loss_fn: LossFn = F.cross_entropy, fast: FastPath = PLAIN,
    ) -> None:
        super().__init__(model, optimizer, loss_fn, fast)
        self.make_optimizer, self.cfg, self.seed = make_optimizer, cfg, seed
        self.member_optimizers: list[torch.optim.Optimizer] = []
        self._cycle_loss: torch.Tensor | float = 0.0

    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in (self.optimizer, *self.member_optimizers) for g in opt.param_groups]

    def start_epoch(self, epoch: int) -> None:
        if epoch == self.cfg.t0 and not self.member_optimizers:
            self._expand(noise=True)

    def end_epoch(self, epoch: int) -> None:
        if self.member_optimizers:
            self._new_cycle()  # a partial cycle is discarded
            set_active(self.model, None)

    def __call__(self, i: int, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.member_optimizers:
            return super().__call__(i, xb, yb)
        k = i % self.cfg.k
        set_active(self.model, k)
        loss, logits = self.loss(xb, yb)
        member = self.member_optimizers[k]
        member.zero_grad(set_to_none=True)
        loss.backward()  # the shared weights' gradients keep adding up over the cycle
        self.step(member, loss.detach())
        self._cycle_loss = self._cycle_loss + loss.detach()
        if k == self.cfg.k - 1:
            gamma = self.cfg.gamma_theta
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.mul_(gamma)
            self.step(self.optimizer, gamma * self._cycle_loss)  # ALI-G: loss of the summed objective
            self._new_cycle()
        return loss.detach(), logits.detach()

    def _new_cycle(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._cycle_loss = 0.0

    def _expand(self, noise: bool) -> None:
        names = late_phase_layers(self.model, self.cfg.include_head)
        assert names, "late-phase weights need a BatchNorm layer or a head (checked by the config)"
        shared_before = {id(p) for name in names for p in self.model.get_submodule(name).parameters()}
        generator = torch.Generator().manual_seed(self.seed)
        groups = expand(self.model, names, self.cfg.k, self.cfg.sigma0 if noise else 0.0, generator)
        _drop_params(self.optimizer, shared_before)
        self.member_optimizers = [
            self.make_optimizer([p for g in groups for p in g.members[k].parameters() if p.requires_grad])
            for k in range(self.cfg.k)
        ]
        self._new_cycle()

    def finish(self, x: torch.Tensor) -> dict[str, Any]:
        """Collapse the members into a plain model; the final checkpoint keeps them all."""
        if not self.member_optimizers:
            return {}
        members = {k: v.clone() for k, v in self.model.state_dict().items()}
        collapse(self.model)
        return {"late_phase_members": members}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "members": [opt.state_dict() for opt in self.member_optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["members"] and not self.member_optimizers:
            self._expand(noise=False)  # the structure only: the weights are loaded next
        super().load_state_dict(state)
        for opt, opt_state in zip(self.member_optimizers, state["members"]):
            opt.load_state_dict(opt_state)


def load_members(model: nn.Module, cfg: LatePhaseConfig, state: dict[str, torch.Tensor]) -> None:
    """Restore a model with all its members (e.g. a final checkpoint's
    `late_phase_members`) into a freshly built plain `model`."""
    expand(model, late_phase_layers(model, cfg.include_head), cfg.k)
    model.load_state_dict(state)
