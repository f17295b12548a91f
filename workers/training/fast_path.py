"""Execution settings for training: channels_last, bf16 autocast, torch.compile.

They are what makes a small convnet fast on a GPU. The two that only change how the
same numbers are computed are guarded: on any device but CUDA they are off, so the
default CPU path stays exactly the plain float32 eager loop (tested bit for bit):

- `channels_last`: the model's weights and the image batches in NHWC memory layout,
  which cuDNN's tensor-core convolutions want. Same function, other kernels. After
  training the model goes back to the default layout, so evaluation, the `final`
  checkpoint and every metric see the same model whichever process computes them.
- `torch_compile`: the training forward/backward through `torch.compile`. The first
  epoch pays the compilation (tens of seconds), so it pays off for long trials only.
  With late-phase weights dynamo recompiles once per member (an integer attribute
  selects it) and runs eager past its recompile limit of 8.
- `precision="bf16"`: forward passes of training under `torch.autocast(bfloat16)`.
  bfloat16 keeps float32's exponent range, so no loss scaling is needed. It changes the
  numbers (and possibly the sharpness the sweep measures), so it is part of the trial
  key and is honoured on every device (a CPU runs it too, slowly), never silently
  dropped. Evaluation and every metric run in float32 whatever the setting.

`FastPath.for_device` applies the guard; building a `FastPath` directly bypasses it,
which is how the tests exercise each mechanism on the CPU.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


class TrainingSettings(Protocol):
    """The fields of the `train` section (`workers.training.train.TrainConfig`) read here."""

    precision: str
    channels_last: bool
    torch_compile: bool


@dataclass(frozen=True)
class FastPath:
    device_type: str = "cpu"  # the autocast device; `FastPath()` is the plain path
    channels_last: bool = False
    autocast: torch.dtype | None = None  # None: float32
    compile: bool = False

    @classmethod
    def for_device(cls, train: TrainingSettings, device: str) -> FastPath:
        """The settings `train` asks for: precision on any device, layout and compilation
        only on a CUDA device."""
        device_type = torch.device(device).type
        cuda = device_type == "cuda"
        return cls(device_type, channels_last=cuda and train.channels_last,
                   autocast=torch.bfloat16 if train.precision == "bf16" else None,
                   compile=cuda and train.torch_compile)

    def model(self, model: nn.Module) -> nn.Module:
        """Put `model`'s weights in the training layout (in place; returns it)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def release(self, model: nn.Module) -> nn.Module:
        """Put `model` back in the default layout after training (in place; returns it)."""
        return model.to(memory_format=torch.contiguous_format) if self.channels_last else model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Training images in the layout the model expects (a copy if it changes)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, model: nn.Module) -> nn.Module:
        """The module training calls: `model` itself or its compiled wrapper, which shares
        its parameters (checkpoints keep saving `model.state_dict()`)."""
        return torch.compile(model) if self.compile else model

    def precision(self) -> AbstractContextManager[Any]:
        """The context of a training forward pass: bf16 autocast or nothing."""
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast)

    def columns(self) -> dict[str, Any]:
        """What actually ran, for the trials row (the config says what was asked)."""
        return {"ran_channels_last": self.channels_last,
                "ran_precision": "bf16" if self.autocast is torch.bfloat16 else "fp32",
                "ran_compiled": self.compile}


PLAIN = FastPath()  # float32, eager, default layout: the default path on every non-CUDA device
