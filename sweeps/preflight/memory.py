"""Refuse, before any work, a model that cannot be trained or measured in the memory of
the device it runs on.

A width or batch size far beyond the machine used to start a sweep whose every trial
then died of an out-of-memory error (or took the machine down with it). What a piece of
work holds at once is declared where it is written, in units of the model
(`workers.base.footprint.Need`): training holds the weights, their gradients and its
optimizer's state (the optimizer's registry entry says how many tensors) and every
layer's output at the batch size (what backward keeps, roughly); each metric and pair
metric declares its own `memory`. The model's size comes from its meta-device footprint
(`workers.base.footprint`), and the dataset is held on the device throughout. Each is a
lower bound of what the work needs, so a refusal is never a false alarm.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator

import torch

from sweeps.run.pairs import plan_pairs
from workers.base.data import DATASETS
from workers.base.footprint import BYTES, Need, model_footprint
from workers.catalog import TrialConfig
from workers.core.errors import ConfigError
from workers.core.registry import Registry
from workers.metrics import METRICS
from workers.pair_metrics import PAIR_METRICS, pair_metrics
from workers.training.optim import OPTIMIZERS


def training_need(cfg: TrialConfig) -> Need:
    """Training: weights, gradients and the optimizer's state; the batch's layer outputs."""
    return Need(2 + OPTIMIZERS.meta(cfg.optim.optimizer)["state"], cfg.train.batch_size, "batch_size")


def need_bytes(cfg: TrialConfig, need: Need, exact: bool = False) -> tuple[int, int]:
    """(parameter-sized tensors; layer outputs and data) in bytes for `need` on one model
    of `cfg`. Layer outputs are bounded cheaply, or with `exact` counted by the meta
    forward pass (the first costs a second or two of imports, so it runs only when the
    bound leaves the answer open)."""
    meta = DATASETS.meta(cfg.data.dataset)
    data = (meta["n_train"] + meta["n_test"]) * math.prod(meta["shape"])
    weights, activations = model_footprint(cfg).bytes(need, exact)
    return weights, BYTES * data + activations


def training_bytes(cfg: TrialConfig, exact: bool = False) -> tuple[int, int]:
    """`need_bytes` of training one model of `cfg` at its batch size."""
    return need_bytes(cfg, training_need(cfg), exact)


def device_memory(gpus: bool) -> tuple[str, int]:
    """The device trials of this machine train on and its memory in bytes."""
    if gpus and torch.cuda.is_available():
        return "GPU", torch.cuda.get_device_properties(0).total_memory
    return "CPU", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _declared(registry: Registry, names: Iterable[str], cfg: TrialConfig,
              section: str | None = None) -> Iterator[tuple[str, Need]]:
    """(name, need) on `cfg` of each of the metrics `names` of `registry` that declares
    its memory; each reads its own options section, or all of them `section`."""
    for name in names:
        memory = registry.meta(name)["memory"]
        if memory is not None:
            yield name, memory(cfg.sections[section or name], cfg)


def work(trials: list[TrialConfig]) -> Iterator[tuple[TrialConfig, str, Need]]:
    """Every piece of work of the grid as (config, what it does, its need): each model's
    training and metrics, and each seed pair's metrics (on the lower seed's config),
    widest and largest batch first, so a refusal names the shape that needs the most."""
    for cfg in sorted(trials, key=lambda c: (c.model.width, c.train.batch_size), reverse=True):
        yield cfg, "train", training_need(cfg)
        for name, need in _declared(METRICS, cfg.measure.metrics, cfg):
            yield cfg, f"measure {name}", need
    for pair in plan_pairs(trials):
        for name, need in _declared(PAIR_METRICS, pair_metrics(pair.with_mc), pair.a, "pairs"):
            yield pair.a, f"measure the pair metric {name}", need


def check_memory(trials: list[TrialConfig], gpus: bool) -> None:
    """Raise a ConfigError, with the estimate, for the first piece of work of the grid
    that cannot fit this machine's device, naming the option to lower."""
    device, memory = device_memory(gpus)
    for cfg, doing, need in work(trials):
        if sum(need_bytes(cfg, need)) <= memory:
            continue
        weights, activations = need_bytes(cfg, need, exact=True)
        if weights + activations > memory:
            field = "width" if weights > activations else need.field
            held = "weights, gradients and optimizer state" if doing == "train" else "copies of the weights"
            raise ConfigError(field, f"width={cfg.model.width} batch_size={cfg.train.batch_size} needs at least "
                                     f"{(weights + activations) / 2**30:.1f} GiB to {doing} ({weights / 2**30:.1f} GiB "
                                     f"{held}), more than this machine's {device} has ({memory / 2**30:.1f} GiB)")
