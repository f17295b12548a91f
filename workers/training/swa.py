"""Stochastic weight averaging (Izmailov et al. 2018) with `torch.optim.swa_utils`.

The equal-weight average of the weights at the end of every epoch from the start epoch
(the lr is switched to the SWA lr by `workers.training.optim.lr_factor`); at the end of training
the model takes the averaged weights and one pass over the training data recomputes its
BatchNorm statistics (`workers.training.train.recompute_bn`). With late-phase weights the average
is taken over the model with all its members, before they are collapsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from workers.core.config import Section, TrialConfig, option, section
from workers.core.errors import ConfigError
from workers.training.train import Hook, recompute_bn


@section("swa", prefix="swa")
@dataclass(frozen=True)
class SwaConfig(Section):
    """The equal-weight average of the weights at the end of every epoch from `start`,
    BatchNorm statistics recomputed."""

    start: int = option(0, ge=0, note="0: off")  # first epoch (1-based) whose end weights are averaged
    lr_factor: float = option(0.5, gt=0)  # from `start` on, lr = the optimizer's base lr * lr_factor

    def check_with(self, config: TrialConfig) -> None:
        if not self.start:
            return
        if self.start > config.train.epochs:
            raise ConfigError("swa.start", f"{self.start} is after the last epoch ({config.train.epochs})")
        late = config.late_phase
        if late.k and self.start <= late.t0:
            raise ConfigError("swa.start", f"must be after late_phase.t0 ({late.t0}): the average is "
                              "taken over the late-phase model")


class Swa(Hook):
    """Averages `model` at the end of epochs start, start+1, ... (1-based)."""

    def __init__(self, model: nn.Module, start: int, batch_size: int) -> None:
        assert start >= 1
        self.model, self.start, self.batch_size = model, start, batch_size
        self.averaged: AveragedModel | None = None  # created at the first average

    def end_epoch(self, epoch: int) -> None:
        if epoch + 1 < self.start:
            return
        if self.averaged is None:
            self.averaged = AveragedModel(self.model)
        self.averaged.update_parameters(self.model)

    @torch.no_grad()
    def finish(self, x: torch.Tensor) -> dict[str, Any]:
        """Put the averaged weights into the model and recompute BatchNorm statistics on
        the training inputs, in training-size batches."""
        assert self.averaged is not None, "SWA finished before its start epoch"
        for own, mean in zip(self.model.parameters(), self.averaged.module.parameters()):
            own.copy_(mean)
        full_batches = len(x) - len(x) % self.batch_size  # the batches training saw (drop_last)
        recompute_bn(self.model, x[:full_batches], self.batch_size)
        return {"swa_n_averaged": self.averaged.n_averaged.clone()}

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": None if self.averaged is None else self.averaged.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["averaged"] is not None:
            self.averaged = AveragedModel(self.model)
            self.averaged.load_state_dict(state["averaged"])
