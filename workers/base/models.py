"""Models by name. Every entry is built as `builder(width, shape, num_classes, batchnorm)`,
where `shape` is one input's (C, H, W); entries with BatchNorm say so (`norm="batchnorm"`).

An entry declares its GPU share under `--gpus-per-trial auto` (`sweeps.preflight.resources`):
`gpu_share=((largest width, GPU fraction per trial), ...)` in increasing width, the
first row covering the width wins; a model without one gets a whole GPU (unknown cost:
always safe). Small models leave a GPU mostly idle (their step time is bound by kernel
launches, not arithmetic), so several share one. Parameter count, FLOPs and activation
memory need no declaration: `workers.base.footprint` counts them on the built model.

`resnet18k` is the taxonomy paper's ResNet18 of width k: BasicBlock stages of widths
(k, 2k, 4k, 8k), 3x3 stride-1 stem, no max-pool, global average pool, linear head.
k = 64 on 32x32 RGB with 10 classes is the standard ResNet18 (11,173,962 parameters).
It also runs on 8x8 digits: strides 1, 2, 2, 2 take 8x8 down to 1x1.

Knobs of the interpolation study: `batchnorm=False` replaces every BatchNorm by
`NO_BATCHNORM` (identity; the convolutions get a bias instead of BatchNorm's shift),
`init_scale` multiplies the initial weights, and `load_start` starts from a local
checkpoint (a pretrained start).
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from workers.core.config import Section, option, section
from workers.core.errors import ConfigError
from workers.core.registry import Registry

MODELS = Registry("model")


@section("model")
@dataclass(frozen=True)
class ModelConfig(Section):
    model: str = "resnet18k"
    width: int = option(64, ge=1)  # k: channel widths (k, 2k, 4k, 8k)
    batchnorm: bool = True  # False: BatchNorm -> Identity, convolutions get a bias
    init_scale: float = option(1.0, gt=0)  # multiplies the starting weights of conv and linear layers
    init_from: str = ""  # local checkpoint to start from (a pretrained start); "": random

    def check(self) -> None:
        MODELS.check(self.model, "model")
        if self.init_from and not os.path.isfile(os.path.expanduser(self.init_from)):
            raise ConfigError("init_from", f"no such checkpoint file: {self.init_from!r}")
        if self.init_from and not zipfile.is_zipfile(os.path.expanduser(self.init_from)):
            raise ConfigError("init_from", f"{self.init_from!r} is not a PyTorch checkpoint (a torch.save file)")

    def has_batchnorm(self) -> bool:
        """Whether the built model has BatchNorm layers (late-phase weights need them)."""
        return self.batchnorm and MODELS.meta(self.model).get("norm") == "batchnorm"

# What a BatchNorm layer becomes with batchnorm=False; recorded with every trial.
NO_BATCHNORM = "identity, conv bias"


def norm2d(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


def conv(c_in: int, c_out: int, kernel: int, stride: int, batchnorm: bool) -> nn.Conv2d:
    """A convolution followed by `norm2d`: bias only where no BatchNorm shifts it."""
    return nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=not batchnorm)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, batchnorm: bool = True) -> None:
        super().__init__()
        self.conv1 = conv(c_in, c_out, 3, stride, batchnorm)
        self.bn1 = norm2d(c_out, batchnorm)
        self.conv2 = conv(c_out, c_out, 3, 1, batchnorm)
        self.bn2 = norm2d(c_out, batchnorm)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(conv(c_in, c_out, 1, stride, batchnorm), norm2d(c_out, batchnorm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self, blocks: tuple[int, ...], width: int, in_channels: int, num_classes: int, batchnorm: bool = True
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv(in_channels, width, 3, 1, batchnorm), norm2d(width, batchnorm), nn.ReLU())
        stages, c_in = [], width
        for i, n_blocks in enumerate(blocks):
            c_out = width * 2**i
            layers = [BasicBlock(c_in if j == 0 else c_out, c_out, 1 if (i == 0 or j > 0) else 2, batchnorm)
                      for j in range(n_blocks)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        out = self.stages(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


# ResNet18-k's compute grows as k^2 and its activation memory as k (channels k to 8k): up
# to k = 8 it has <= 1/64 of ResNet18's FLOPs (4 per GPU), up to 32 <= 1/4 (2 per GPU),
# beyond it nears a full GPU at batch size 128. The thresholds are 16x steps in compute.
# Each trial also keeps its dataset on the GPU (CIFAR-10 as float32: 0.7 GB), so four
# trials on a 24 GB card leave ample room for activations at batch size 1024.
@MODELS.register("resnet18k", norm="batchnorm", gpu_share=((8, 0.25), (32, 0.5), (math.inf, 1.0)))
def resnet18k(width: int, shape: tuple[int, int, int], num_classes: int, batchnorm: bool = True) -> nn.Module:
    return ResNet((2, 2, 2, 2), width, shape[0], num_classes, batchnorm)


@MODELS.register("mlp", gpu_share=((math.inf, 0.25),))  # a few dense layers: 4 per GPU
def mlp(width: int, shape: tuple[int, int, int], num_classes: int, batchnorm: bool = True) -> nn.Module:
    """Two hidden layers of `width` units: a cheap model for tests and quick studies.
    It has no BatchNorm, so `batchnorm` changes nothing."""
    n_in = shape[0] * shape[1] * shape[2]
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(n_in, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    )


def build_model(
    name: str, width: int, shape: tuple[int, int, int], num_classes: int, *,
    batchnorm: bool = True, init_scale: float = 1.0,
) -> nn.Module:
    model = MODELS.get(name)(width, tuple(shape), num_classes, batchnorm)
    if init_scale != 1.0:
        scale_weights(model, init_scale)
    return model


@torch.no_grad()
def scale_weights(model: nn.Module, factor: float) -> None:
    """Multiply the weights (not biases, not BatchNorm's affine) of every conv and linear
    layer by `factor`: the initial-weight-scale knob of Vlaar & Frankle (2022)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.mul_(factor)


def norm_layer(name: str, batchnorm: bool) -> str:
    """What the normalisation layers of a built model are, for the trials record."""
    if MODELS.meta(name).get("norm") != "batchnorm":
        return "none"
    return "batchnorm" if batchnorm else NO_BATCHNORM


def load_start(model: nn.Module, path: str) -> int:
    """Copy the tensors of a local checkpoint (a project checkpoint `{"model": state}` or
    a bare state_dict) into `model` wherever name and shape match, so a head for another
    number of classes stays freshly initialised. Returns how many tensors were copied."""
    state = torch.load(os.path.expanduser(path), map_location="cpu", weights_only=True)
    state = state.get("model", state)
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ConfigError("init_from", f"no tensor of {path!r} matches the model's names and shapes")
    model.load_state_dict(matching, strict=False)
    return len(matching)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
