"""Named starting points for each study; `--set` overrides any value.

`demo` presets run offline on 2 CPUs in minutes (scikit-learn's digits); `paper`
presets reproduce the published setups and need a GPU cluster.
"""

from __future__ import annotations

from typing import Any

from workers.errors import ConfigError

# The taxonomy paper's grid (Yang et al. 2021): 14 widths x 13 batch sizes x 5 seeds.
PAPER_WIDTHS = [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128]
PAPER_BATCH_SIZES = [16, 24, 32, 44, 64, 92, 128, 180, 256, 364, 512, 724, 1024]

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "taxonomy": {
        "demo": {
            "dataset": "digits",
            "model": "resnet18k",
            "width": [2, 4, 8, 16],
            "batch_size": [32, 128],
            "seed": [0, 1],
            "epochs": 12,
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "step",
            "milestones": [9],
            "lr_factor": 0.1,
        },
        "paper": {
            "dataset": "cifar10",
            "model": "resnet18k",
            "width": PAPER_WIDTHS,
            "batch_size": PAPER_BATCH_SIZES,
            "seed": [0, 1, 2, 3, 4],
            "epochs": 100,
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "step",
            "milestones": [75],
            "lr_factor": 0.1,
        },
    },
}


def preset_values(study: str, preset: str) -> dict[str, Any]:
    presets = PRESETS[study]
    if preset not in presets:
        raise ConfigError("--preset", f"unknown preset {preset!r} for {study}; valid: {', '.join(presets)}")
    return dict(presets[preset])
