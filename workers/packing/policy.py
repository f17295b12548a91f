"""Which trials can share a pack, and how a sweep's trials are cut into packs (`--pack`).

Trials pack when they run the same number of steps on tensors of the same shapes: the
same data (dataset, training-set fraction and subset, augmentation), model and width,
batch size, epochs, schedule shape, optimizer and training variant. Within a pack each
member keeps its own `PER_MEMBER` values: seed (initial weights, batch order), learning
rate, weight decay, momentum, label noise (its own labels) and initial-weight scale.
So the seeds of a grid cell can always pack, and so can the paper's lr and label-noise
grids.

`--pack auto` (the default) packs where it pays on the device the sweep trains on;
`--pack N` packs every packable trial in packs of up to N; `--pack off` trains solo.
The auto bounds come from measurements on a 2-core CPU (2026-11-30, `bench/packing.py`
and `sweeps/preflight/estimate.py`): on 8x8 digits packs of 5 train more models per hour up to
width 8 and little more at width 16, where one model's arithmetic already dominates a
step; on 32x32 images packing does not pay on a CPU at any width.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass

from workers.base.data import DATASETS
from workers.base.models import MODELS
from workers.core.config import SECTIONS, TrialConfig, check_key
from workers.core.errors import ConfigError
from workers.packing.modules import unsupported_layers
from workers.packing.optim import PACKED_OPTIMIZERS

# Keys each member of a pack may set for itself.
PER_MEMBER = ("seed", "lr", "weight_decay", "momentum", "label_noise", "init_scale", "adam.lr", "alig.max_lr")

AUTO, OFF = "auto", "off"


@dataclass(frozen=True)
class PackPolicy:
    """How many members a pack may have and up to which model width trials pack."""

    max_members: int  # 1: every trial trains solo
    max_width: float  # wider models train solo
    max_pixels: float  # models on larger images (H * W) train solo
    why: str  # how this policy was chosen, for the solo reason of a wide trial

    @classmethod
    def parse(cls, setting: str | int, device_type: str) -> PackPolicy:
        """`auto`, `off` or a pack size N >= 1, for a sweep training on `device_type`."""
        text = str(setting).strip().lower()
        if text == OFF:
            return cls(1, 0, 0, "--pack off")
        if text == AUTO:
            members, width, pixels = AUTO_BOUNDS.get(device_type, AUTO_BOUNDS["cpu"])
            return cls(members, width, pixels, f"--pack auto on {device_type}")
        if not text.isdigit() or int(text) < 1:
            raise ConfigError("--pack", f"must be 'auto', 'off' or a pack size >= 1, got {setting!r}")
        return cls(int(text), math.inf, math.inf, f"--pack {text}")


# device type -> (members per pack, largest width, largest image H * W) under `--pack
# auto`. CPU: measured (module docstring); on 32x32 images oneDNN's grouped convolutions
# cost twice the time per FLOP of plain ones, which eats the saved overhead (0.9-1.0x at
# widths 2-8). CUDA: small models are bound by kernel launches, so wider ones pay too
# (HFTA); not measured here yet (`python bench/run.py --gpu`).
AUTO_BOUNDS: dict[str, tuple[int, float, float]] = {"cpu": (5, 8, 8 * 8), "cuda": (8, 32, math.inf)}


@dataclass(frozen=True)
class PackPlan:
    """One training job: a pack of members, or one solo trial and why it is solo."""

    members: tuple[TrialConfig, ...]
    solo_reason: str = ""  # "" for a pack of two or more

    @property
    def key(self) -> str:
        """The job's id: a solo trial's key, or `pack-<hash of the member keys>`."""
        if len(self.members) == 1:
            return self.members[0].trial_key
        return pack_id([c.trial_key for c in self.members])


def pack_id(trial_keys: list[str]) -> str:
    """Id of a pack: its own value space, independent of the members' order."""
    return "pack-" + hashlib.sha256(json.dumps(sorted(trial_keys)).encode()).hexdigest()[:16]


def signature(cfg: TrialConfig) -> str:
    """What trials of one pack share: every training option except `PER_MEMBER`, as the
    hash of `json.dumps({section: {field: value}}, sort_keys=True, default=list)`."""
    return _signature(cfg, {})


def _signature(cfg: TrialConfig, shared_json: dict[int, str]) -> str:
    """`signature`, its JSON joined from each section's own (that dump of a dict of dicts
    is its sorted items, `"name": {...}`, between braces), which `shared_json` keeps by
    section object (`id`, while the caller holds the configs): a sweep's configs share
    their section objects (`SweepSpec.trials`), so each is dumped once."""
    own = _per_member_fields()
    parts = []
    for name in sorted(cfg.sections):
        if not SECTIONS[name].training:
            continue
        sec = cfg.sections[name]
        text = shared_json.get(id(sec))
        if text is None:
            shared = {k: v for k, v in sec.to_dict().items() if (name, k) not in own}
            text = shared_json[id(sec)] = json.dumps(shared, sort_keys=True, default=list)
        parts.append(f"{json.dumps(name)}: {text}")
    return hashlib.sha256(("{" + ", ".join(parts) + "}").encode()).hexdigest()[:16]


@functools.cache
def _per_member_fields() -> frozenset[tuple[str, str]]:
    return frozenset(check_key(key) for key in PER_MEMBER)


def solo_reason(cfg: TrialConfig, policy: PackPolicy) -> str:
    """Why `cfg` trains alone under `policy`, or "" if it can pack."""
    if policy.max_members < 2:
        return policy.why
    if cfg.late_phase.k:
        return "late-phase weights train solo"
    if cfg.swa.start:
        return "SWA trains solo"
    if cfg.optim.optimizer not in PACKED_OPTIMIZERS.names():
        return f"optimizer {cfg.optim.optimizer} has no packed version"
    bad = _unsupported(cfg.model.model, cfg.model.batchnorm)
    if bad:
        return f"model {cfg.model.model} has layers that do not pack: {bad}"
    if cfg.model.width > policy.max_width:
        return f"width {cfg.model.width} > {policy.max_width:g} ({policy.why})"
    _, height, width = DATASETS.meta(cfg.data.dataset)["shape"]
    if height * width > policy.max_pixels:
        return f"{height}x{width} images: packing does not pay ({policy.why})"
    return ""


@functools.cache
def _unsupported(model: str, batchnorm: bool) -> str:
    return ", ".join(unsupported_layers(MODELS.get(model)(1, (1, 8, 8), 2, batchnorm)))


def plan_packs(configs: list[TrialConfig], policy: PackPolicy) -> list[PackPlan]:
    """Cut `configs` into training jobs: trials of one signature in packs of at most
    `policy.max_members`, the seeds of a cell kept together where they fit, the rest
    solo with their reason. Jobs come in the order of their first trial in `configs`."""
    groups: dict[str, list[TrialConfig]] = defaultdict(list)
    plans: list[tuple[int, PackPlan]] = []
    position = {c.trial_key: i for i, c in enumerate(configs)}
    shared_json: dict[int, str] = {}  # `configs` hold their sections throughout: their ids stay unique
    for cfg in configs:
        reason = solo_reason(cfg, policy)
        if reason:
            plans.append((position[cfg.trial_key], PackPlan((cfg,), reason)))
        else:
            groups[_signature(cfg, shared_json)].append(cfg)
    for members in groups.values():
        for pack in _fill(members, policy.max_members):
            reason = "" if len(pack) > 1 else "no other trial of its shape to pack with"
            plans.append((position[pack[0].trial_key], PackPlan(tuple(pack), reason)))
    return [plan for _, plan in sorted(plans, key=lambda item: item[0])]


def _fill(configs: list[TrialConfig], size: int) -> list[list[TrialConfig]]:
    """Packs of at most `size`, filled cell by cell: a cell that fits in a pack goes in
    whole (into the open pack, or a new one if the open pack is too full), a cell larger
    than a pack is cut into the open pack and full packs, its remainder left open for
    the next cell."""
    cells: dict[str, list[TrialConfig]] = defaultdict(list)
    for cfg in configs:
        cells[cfg.cell_key].append(cfg)
    packs: list[list[TrialConfig]] = [[]]
    for cell in cells.values():
        if len(cell) <= size < len(packs[-1]) + len(cell):
            packs.append([])
        for cfg in cell:
            if len(packs[-1]) == size:
                packs.append([])
            packs[-1].append(cfg)
    return [p for p in packs if p]
