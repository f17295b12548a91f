"""How much of a GPU one trial gets: a fixed fraction, or `auto` from the model's size.

Under `--gpus-per-trial auto` a trial gets the share its model's registry entry declares
for its width (`gpu_share` in `workers.base.models`, where the reasons are: resnet18k 0.25 up
to width 8, 0.5 up to 32, then 1; mlp 0.25); a model without one gets a whole GPU. Ray
packs fractional GPU requests onto the same device. A number given instead of `auto`
overrides the shares for every trial of the sweep.
"""

from __future__ import annotations

import math
from typing import Any

AUTO = "auto"
WHOLE_GPU = 1.0


def gpu_fraction(model: str, width: float) -> float:
    """The GPU share of one trial of `model` at `width`: the first row of its entry's
    `gpu_share` that covers the width; a whole GPU for a model that declares none."""
    from workers.base.models import MODELS  # here: `sweeps.slurm` reads AUTO without importing torch

    rules = MODELS.meta(model).get("gpu_share", ()) if model in MODELS else ()
    for largest, fraction in rules:
        if width <= largest:
            return fraction
    return WHOLE_GPU


def job_gpus(job_config: dict[str, Any], setting: float | str) -> float:
    """GPUs for one Tune job: `setting` itself, or under `auto` the rule for its model
    (a pair job measures two models of one cell: the same model and width). A pack of G
    models of width k computes about as much as one model of width k*sqrt(G) (compute
    grows as k^2), so it gets that model's share."""
    if setting != AUTO:
        return float(setting)
    if job_config.get("kind") == "pack":
        members = job_config["members"]
        return gpu_fraction(members[0]["model"], int(members[0]["width"]) * math.sqrt(len(members)))
    flat = job_config.get("trial") or job_config.get("a")
    if flat is None:  # not a model job (e.g. a benchmark's placeholder work)
        return WHOLE_GPU
    return gpu_fraction(flat["model"], int(flat["width"]))
