"""How much of a GPU one trial gets: a fixed fraction, or `auto` from the model's size.

Small models leave a GPU mostly idle (their step time is bound by kernel launches, not
arithmetic), so several share one GPU; Ray packs fractional GPU requests onto the
same device. Rule table for `--gpus-per-trial auto` (first matching row wins):

    model       width (k)    GPU per trial   why
    resnet18k   k <= 8       0.25            <= 1/64 of ResNet18's FLOPs; 4 per GPU
    resnet18k   8 < k <= 32  0.5             up to 1/4 of ResNet18's FLOPs; 2 per GPU
    resnet18k   k > 32       1               near a full GPU at batch size 128
    mlp         any          0.25            a few dense layers
    other       any          1               unknown cost: a whole GPU is always safe

ResNet18-k's compute grows as k^2 and its activation memory as k (channels k, 2k, 4k,
8k); the thresholds are 16x steps in compute. Each trial also keeps its dataset on the GPU
(CIFAR-10 as float32: 0.7 GB), so four trials on a 24 GB card leave ample room for
activations at the paper's largest batch size (1024). A number given instead of `auto`
overrides the table for every trial of the sweep.
"""

from __future__ import annotations

import math
from typing import Any

AUTO = "auto"

# model -> ((largest width, GPU fraction), ...) in increasing width; see module docstring.
GPU_RULES: dict[str, tuple[tuple[float, float], ...]] = {
    "resnet18k": ((8, 0.25), (32, 0.5), (float("inf"), 1.0)),
    "mlp": ((float("inf"), 0.25),),
}
WHOLE_GPU = 1.0


def gpu_fraction(model: str, width: float) -> float:
    """The GPU share of one trial of `model` at `width` (see the rule table)."""
    for largest, fraction in GPU_RULES.get(model, ()):
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
