"""Named starting points for each study; `--set` overrides any value.

`demo` presets run offline on 2 CPUs in minutes (scikit-learn's digits); `paper`
presets reproduce the published setups and need a GPU cluster.
"""

from __future__ import annotations

from typing import Any

from workers.core.errors import ConfigError

# The taxonomy paper's grid (Yang et al. 2021): 14 widths x 13 batch sizes x 5 seeds.
PAPER_WIDTHS = [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128]
PAPER_BATCH_SIZES = [16, 24, 32, 44, 64, 92, 128, 180, 256, 364, 512, 724, 1024]

# The interpolation study's axes and recipe (Vlaar & Frankle 2022), common to its presets:
# init scale x optimizer x BatchNorm x label noise, full and layer-wise paths.
_INTERPOLATION_STUDY: dict[str, Any] = {
    "model": "resnet18k",
    "optimizer": ["sgd", "adam"],
    "batchnorm": [True, False],
    "label_noise": [0.0, 0.2],
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "step",
    "lr_factor": 0.1,
    "metrics": ["interpolation"],
    "interpolation.groups": ["stage"],  # one layer-wise path per stage (Vlaar & Frankle)
    "interpolation.others_at": ["final", "init"],  # and the mirror paths
}

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
            "metrics": ["hessian", "interpolation"],
            "interpolation.groups": ["stage"],  # layer-wise paths: stem, 4 stages, head
            "interpolation.group_points": 5,  # keeps metrics near a quarter of training time
            "measure_pairs": True,
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
            "metrics": ["hessian", "interpolation"],
            "measure_pairs": True,
            "hessian.n_samples": 1000,  # the paper used one batch of 200; a GPU affords more
            # The paper's curve fit (specs/taxonomy.md): 50 epochs at lr 0.01, batch 128.
            "pairs.bezier_epochs": 50,
            "pairs.bezier_lr": 0.01,
        },
    },
    # Vlaar & Frankle 2022: does the straight line from theta_0 to theta_T say anything
    # about training? Initial-weight scale x optimizer x BatchNorm x label noise.
    "interpolation": {
        "demo": {
            "dataset": "digits",
            "width": 8,
            "batch_size": 64,
            "seed": [0],
            "epochs": 8,
            "init_scale": [1.0, 2.0],  # 0.5 without BatchNorm does not train; 3 diverges with SGD
            **_INTERPOLATION_STUDY,
            "lr": 0.05,
            "adam.lr": 0.002,
            "milestones": [6],
        },
        "paper": {
            "dataset": "cifar10",
            "width": 64,
            "batch_size": 128,
            "seed": [0, 1, 2],
            "epochs": 100,
            "init_scale": [0.5, 1.0, 2.0],
            **_INTERPOLATION_STUDY,
            "lr": 0.1,
            "adam.lr": 0.001,
            "milestones": [33, 66],
        },
    },
    # SGD vs Adam vs ALI-G, each alone, with late-phase weights, with SWA and with both,
    # over a small width x batch-size grid: the variants are axes of one grid.
    "optimizers": {
        "demo": {
            "dataset": "digits",
            "model": "resnet18k",
            "width": [4, 16],
            "batch_size": [32, 128],
            "seed": [0],
            "epochs": 8,
            "optimizer": ["sgd", "adam", "alig"],
            "late_phase.k": [0, 4],
            "swa.start": [0, 7],  # averages the last 2 epochs
            "lr": 0.05,
            "adam.lr": 0.002,
            "alig.max_lr": 0.1,
            "alig.max_norm": 60.0,  # above the initial norm of both widths (20 and 40)
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "linear_decay",  # the late-phase paper's, scaled to 8 epochs
            "late_phase.t0": 4,  # members for the second half
            "swa.lr_factor": 0.5,
        },
        "paper": {
            "dataset": "cifar10",
            "model": "resnet18k",
            "width": [16, 32, 64],
            "batch_size": [64, 128, 256],
            "seed": [0, 1, 2],
            "epochs": 200,
            "optimizer": ["sgd", "adam", "alig"],
            "late_phase.k": [0, 10],
            "swa.start": [0, 161],
            "lr": 0.1,
            "adam.lr": 0.001,
            "alig.max_lr": 1.0,  # ALI-G's CIFAR-10 setting
            "alig.max_norm": 100.0,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "linear_decay",  # constant to epoch 100, down to lr/100 at 180
            "augment_crop": 4,  # the standard CIFAR augmentation these papers trained with:
            "augment_flip": True,  # 4-pixel-padded random crops, horizontal flips
            "late_phase.t0": 120,
            "swa.lr_factor": 0.5,
        },
    },
}


def preset_values(study: str, preset: str) -> dict[str, Any]:
    presets = PRESETS[study]
    if preset not in presets:
        raise ConfigError("--preset", f"unknown preset {preset!r} for {study}; valid: {', '.join(presets)}")
    return dict(presets[preset])
