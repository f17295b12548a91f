"""Models by name. Every entry is built as `builder(width, shape, num_classes)`, where
`shape` is one input's (C, H, W).

`resnet18k` is the taxonomy paper's ResNet18 of width k: BasicBlock stages of widths
(k, 2k, 4k, 8k), 3x3 stride-1 stem, no max-pool, global average pool, linear head.
k = 64 on 32x32 RGB with 10 classes is the standard ResNet18 (11,173,962 parameters).
It also runs on 8x8 digits: strides 1, 2, 2, 2 take 8x8 down to 1x1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from workers.registry import Registry

MODELS = Registry("model")


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], width: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages, c_in = [], width
        for i, n_blocks in enumerate(blocks):
            c_out = width * 2**i
            layers = [BasicBlock(c_in if j == 0 else c_out, c_out, 1 if (i == 0 or j > 0) else 2)
                      for j in range(n_blocks)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        out = self.stages(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@MODELS.register("resnet18k")
def resnet18k(width: int, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return ResNet((2, 2, 2, 2), width, shape[0], num_classes)


@MODELS.register("mlp")
def mlp(width: int, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Two hidden layers of `width` units: a cheap model for tests and quick studies."""
    n_in = shape[0] * shape[1] * shape[2]
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(n_in, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    )


def build_model(name: str, width: int, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return MODELS.get(name)(width, tuple(shape), num_classes)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
