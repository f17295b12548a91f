"""What every job (a trial, a pack, a seed pair) sets up before its work, in one place.

A job arrives as plain values plus a `RunContext` (where the sweep lives, which device,
how many threads); `open_job` turns that into the opened storage and the device, and
`new_model` / `trained_model` build the models the job works on. `workers.jobs.trial`,
`workers.jobs.pair_trial` and `workers.jobs.pack_job` share these, so a trial and a pair start
the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from workers.base import checkpoints
from workers.base.data import DATASETS, Splits
from workers.base.models import build_model
from workers.catalog import TrialConfig
from workers.core.storage import Storage


@dataclass(frozen=True)
class RunContext:
    """Where and how a job runs; not part of any record's identity."""

    storage: str  # the sweep folder: local path or URI
    sweep: str
    code_version: str = "unknown"
    device: str = "auto"  # "auto": cuda if available, else cpu
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    axes: tuple[str, ...] = ()  # the sweep's grid axes: how a running job is labelled (workers.core.live)

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


@dataclass(frozen=True)
class OpenedJob:
    """A job's opened surroundings: the sweep's storage and the device it computes on."""

    storage: Storage
    device: str


def open_job(ctx: RunContext) -> OpenedJob:
    """Open the storage and apply the thread count (per process: a reused Ray worker
    keeps the last job's setting, so every job sets its own)."""
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    return OpenedJob(Storage.open(ctx.storage), ctx.resolved_device())


def seed_everything(seed: int) -> None:
    """Seed every generator a job touches, so a reused worker process leaks nothing."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_model(cfg: TrialConfig, splits: Splits, device: str) -> torch.nn.Module:
    """A freshly initialised model of `cfg`'s architecture (its weights come from the
    global generator: seed it first)."""
    shape = DATASETS.meta(cfg.data.dataset)["shape"]
    m = cfg.model
    return build_model(m.model, m.width, shape, splits.num_classes, batchnorm=m.batchnorm,
                       init_scale=m.init_scale).to(device)


def trained_model(storage: Storage, cfg: TrialConfig, splits: Splits, device: str) -> torch.nn.Module | None:
    """The model `cfg` trained to, from its `final` checkpoint; None when that is missing
    or damaged (a damaged one is moved to `_quarantine/` and named)."""
    state = checkpoints.load_or_quarantine(storage, cfg.trial_key, "final", device)
    if state is None:
        return None
    model = new_model(cfg, splits, device)
    model.load_state_dict(state["model"])
    return model
