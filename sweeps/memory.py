"""Refuse, before any work, a model that cannot fit the memory of the device it trains on.

A width or batch size far beyond the machine used to start a sweep whose every trial
then died of an out-of-memory error (or took the machine down with it). The estimate is
taken on PyTorch's `meta` device, which builds the model and runs a forward pass with
shapes only: parameters, their gradients and the optimizer's state, every layer's
output at the batch size (what backward keeps, roughly), and the dataset held on the
device. It is a lower bound of what training needs, so a refusal is never a false alarm.
"""

from __future__ import annotations

import math
import os

import torch

from workers.catalog import TrialConfig
from workers.data import DATASETS
from workers.errors import ConfigError
from workers.models import build_model

BYTES = 4  # float32
OPTIMIZER_STATES = {"adam": 2, "adamw": 2}  # tensors per parameter; SGD's momentum and ALI-G's: 1


def training_bytes(cfg: TrialConfig, exact: bool = False) -> tuple[int, int]:
    """(weights, gradients and optimizer state; activations and data) in bytes for one
    model of `cfg` training at its batch size. Activations are bounded cheaply, or with
    `exact` counted by a forward pass on the meta device (the first such pass costs a
    second or two of imports, so it runs only when the bound leaves the answer open)."""
    meta = DATASETS.meta(cfg.data.dataset)
    shape = tuple(meta["shape"])
    data = (meta["n_train"] + meta["n_test"]) * math.prod(shape)
    with torch.device("meta"):
        model = build_model(cfg.model.model, cfg.model.width, shape, meta["classes"], batchnorm=cfg.model.batchnorm)
    weights = BYTES * sum(p.numel() for p in model.parameters()) * (2 + OPTIMIZER_STATES.get(cfg.optim.optimizer, 1))
    return weights, BYTES * (data + _activations(model, shape, cfg.train.batch_size, exact))


def _activations(model: torch.nn.Module, shape: tuple[int, ...], batch: int, exact: bool) -> int:
    """Floats of every leaf layer's output at `batch`: counted by a meta forward pass,
    or bounded by leaves x widest layer x image pixels (no layer of our models outgrows
    its input's pixels or the widest layer's channels)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    if not exact:
        widest = max([shape[0]] + [getattr(m, name) for m in leaves
                                   for name in ("out_channels", "out_features", "num_features") if hasattr(m, name)])
        return len(leaves) * widest * math.prod(shape[1:]) * batch
    outputs: list[int] = []
    for leaf in leaves:
        leaf.register_forward_hook(lambda m, i, out: outputs.append(out.numel()))
    with torch.device("meta"):
        model(torch.empty((batch, *shape)))
    return sum(outputs)


def device_memory(gpus: bool) -> tuple[str, int]:
    """The device trials of this machine train on and its memory in bytes."""
    if gpus and torch.cuda.is_available():
        return "GPU", torch.cuda.get_device_properties(0).total_memory
    return "CPU", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _largest(trials: list[TrialConfig]) -> list[TrialConfig]:
    """The configs that need the most memory: memory grows with width and with batch
    size, so per dataset, model and optimizer the widest at its largest batch and the
    largest batch at its widest (one config in a full grid; a few meta passes in all)."""
    groups: dict[tuple, list[TrialConfig]] = {}
    for c in trials:
        groups.setdefault((c.data.dataset, c.model.model, c.model.batchnorm, c.optim.optimizer), []).append(c)
    picked = {}
    for members in groups.values():
        for order in (lambda c: (c.model.width, c.train.batch_size), lambda c: (c.train.batch_size, c.model.width)):
            cfg = max(members, key=order)
            picked[cfg.trial_key] = cfg
    return list(picked.values())


def check_memory(trials: list[TrialConfig], gpus: bool) -> None:
    """Raise a ConfigError, with the estimate, for the first shape of the grid that
    cannot fit this machine's training device."""
    device, memory = device_memory(gpus)
    for cfg in _largest(trials):
        if sum(training_bytes(cfg)) <= memory:
            continue
        weights, activations = training_bytes(cfg, exact=True)
        if weights + activations > memory:
            field = "width" if weights > activations else "batch_size"
            raise ConfigError(field, f"width={cfg.model.width} batch_size={cfg.train.batch_size} needs at least "
                                     f"{(weights + activations) / 2**30:.1f} GiB to train ({weights / 2**30:.1f} GiB "
                                     f"weights, gradients and optimizer state), more than this machine's {device} "
                                     f"has ({memory / 2**30:.1f} GiB)")
