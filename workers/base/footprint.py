"""What the model of a config weighs and computes, from one pass on the meta device.

Three readers ask about a config's model before (or instead of) building it for real,
and a width-128 ResNet18 has 44M parameters: the cost estimate (`sweeps.preflight.estimate`:
FLOPs per sample), the memory check (`sweeps.preflight.memory`: parameters and what backward
keeps) and the metrics' cost models (how many groups a `groups` option makes,
`workers.metrics.common.group_count`). `footprint` builds the registered model on
PyTorch's `meta` device (shapes only: no memory, no arithmetic) once per shape, and one
forward pass of one sample, with a hook on every leaf layer, counts both the
multiply-adds of the convolution and linear layers and the floats of every layer's
output. Both grow linearly with the batch (every leaf's output does), so the one pass
serves every batch size.

The first meta forward pass of a process costs about a second (imports), so it runs
only when asked for: the memory check starts from a bound that needs no pass.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from workers.base.data import DATASETS
from workers.base.models import build_model
from workers.core.config import TrialConfig

BYTES = 4  # float32
TRAIN_PASSES = 3  # a training step: forward + input gradients + weight gradients, each ~ one forward


@dataclass(frozen=True)
class Need:
    """What one piece of work on a model (training it, a metric) holds on its device at
    once, in units of that model, so one declaration fits every width: `weights`
    parameter-sized tensors (the weights, gradients, optimizer state, saved states,
    directions) and the layer outputs of `samples` inputs kept for a backward pass.
    `field` is the option that sets `samples`, named when they do not fit."""

    weights: int
    samples: int
    field: str


class Footprint:
    """A model built on the meta device and what it needs (module docstring)."""

    def __init__(self, net: nn.Module, shape: tuple[int, ...]) -> None:
        self.net = net  # for questions about its structure (parameter names), never to run on data
        self.shape = shape  # one input's (C, H, W)
        self.parameters = sum(p.numel() for p in net.parameters())
        self._leaves = [m for m in net.modules() if not list(m.children())]

    @property
    def macs(self) -> int:
        """Multiply-adds of one sample's forward pass through the conv and linear layers."""
        return self._forward[0]

    def activations(self, exact: bool = False) -> int:
        """Floats of every leaf layer's output for one sample: counted by the meta
        forward pass, or bounded by leaves x widest layer x image pixels (no layer of our
        models outgrows its input's pixels or the widest layer's channels)."""
        if exact:
            return self._forward[1]
        widest = max([self.shape[0]] + [getattr(m, name) for m in self._leaves
                                        for name in ("out_channels", "out_features", "num_features") if hasattr(m, name)])
        return len(self._leaves) * widest * math.prod(self.shape[1:])

    def bytes(self, need: Need, exact: bool = False) -> tuple[int, int]:
        """(`need`'s parameter-sized tensors, its samples' layer outputs) in bytes."""
        return BYTES * self.parameters * need.weights, BYTES * self.activations(exact) * need.samples

    @functools.cached_property
    def _forward(self) -> tuple[int, int]:
        """The one pass: (multiply-adds, floats of leaf outputs) of one sample, in eval
        mode (BatchNorm takes a batch of one even at 1x1 pixels)."""
        macs = outputs = 0

        def count(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            nonlocal macs, outputs
            outputs += output.numel()
            if isinstance(module, nn.Conv2d):
                macs += output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
            elif isinstance(module, nn.Linear):
                macs += output.numel() * module.in_features

        hooks = [leaf.register_forward_hook(count) for leaf in self._leaves]
        with torch.device("meta"), torch.no_grad():
            self.net.eval()(torch.empty(1, *self.shape))
        for hook in hooks:
            hook.remove()
        return macs, outputs


@functools.cache
def footprint(model: str, width: int, shape: tuple[int, ...], classes: int, batchnorm: bool = True) -> Footprint:
    """The registered `model` at `width` for inputs of `shape`, built once on the meta device."""
    with torch.device("meta"):
        net = build_model(model, width, tuple(shape), classes, batchnorm=batchnorm)
    return Footprint(net, tuple(shape))


def model_footprint(cfg: TrialConfig, width: int | None = None) -> Footprint:
    """The footprint of `cfg`'s model on its dataset's images, at `width` if given
    (e.g. 1, where only the parameters' names matter)."""
    meta, m = DATASETS.meta(cfg.data.dataset), cfg.model
    return footprint(m.model, m.width if width is None else width, tuple(meta["shape"]), meta["classes"],
                     m.batchnorm)
