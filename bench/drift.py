"""How far float32 training drifts from float64, solo and packed (the README's "Packed
training": a packed sweep reproduces a solo one as other hardware does, not bit for bit).

    python bench/drift.py [--quick]

The demo preset's ResNet18-2 at batch 128 (digits, 12 epochs), both of its seeds,
trained four ways on the CPU: solo and as one pack of both seeds, each in float32 and
in float64, with the code paths a trial and a pack job train with (`workers.training.train.fit`
with the trial's hooks; `workers.packing.train.fit_packed`). Figures per seed: the
relative weight distance ||w - w64|| / ||w64|| of the float32 runs to the float64 run of
the same kind (all parameters as one vector), and each run's final training loss (the
last epoch's mean). `tests/test_packing.py` checks the float64 runs against each other
to 1e-9; this measures what float32 rounding makes of the same training. `quick`
changes nothing: the figures are of these runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

WIDTH, BATCH_SIZE = 2, 128
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def configs() -> list:
    from sweeps.run.presets import preset_values
    from workers.catalog import TrialConfig

    values = {k: v for k, v in preset_values("taxonomy", "demo").items() if "." not in k}
    return [TrialConfig.from_flat({**values, "width": WIDTH, "batch_size": BATCH_SIZE, "seed": seed, "metrics": []})
            for seed in values["seed"]]


def _splits(cfg, dtype: torch.dtype):
    from workers.base.data import prepare

    splits = prepare(cfg.data, "cpu")
    return dataclasses.replace(splits, x_train=splits.x_train.to(dtype), x_test=splits.x_test.to(dtype))


def _model(cfg, splits, dtype: torch.dtype) -> torch.nn.Module:
    """The solo trial's initial model: seeded as `workers.jobs.trial.run_trial` seeds it."""
    from workers.jobs.runtime import new_model, seed_everything

    seed_everything(cfg.train.seed)
    return new_model(cfg, splits, "cpu").to(dtype)


def solo(cfg, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], float]:
    """(parameters, final training loss) of the solo trial's training."""
    from workers.jobs.trial import training_hooks
    from workers.training.augment import Augment
    from workers.training.train import fit

    splits = _splits(cfg, dtype)
    model = _model(cfg, splits, dtype)
    hooks = training_hooks(cfg, model)
    history: list = []
    fit(model, hooks.update, splits.x_train, splits.y_train, hooks=hooks, batch_size=cfg.train.batch_size,
        seed=cfg.train.seed, epochs=cfg.train.epochs, augment=Augment.of(cfg.data), on_epoch=history.append)
    return dict(model.named_parameters()), history[-1].train_loss


def packed(cfgs: list, dtype: torch.dtype) -> list[tuple[dict[str, torch.Tensor], float]]:
    """(parameters, final training loss) of each member, trained as one pack."""
    from workers.packing.modules import member_state, pack
    from workers.packing.optim import build_packed_optimizer
    from workers.packing.train import PackedUpdate, fit_packed
    from workers.training.augment import Augment
    from workers.training.optim import lr_factor

    splits = [_splits(cfg, dtype) for cfg in cfgs]
    models = [_model(cfg, s, dtype) for cfg, s in zip(cfgs, splits)]
    net = pack(models)
    optimizer = build_packed_optimizer(list(net.parameters()), cfgs)
    history: list = []
    fit_packed(PackedUpdate(net, optimizer), splits[0].x_train, [s.y_train for s in splits],
               batch_size=cfgs[0].train.batch_size, seeds=[c.train.seed for c in cfgs], epochs=cfgs[0].train.epochs,
               start_epoch=0, base_lrs=optimizer.base_lrs, lr_factor=lr_factor(cfgs[0]),
               augment=Augment.of(cfgs[0].data), on_epoch=lambda stats: history.append(stats) or True)
    names = dict(models[0].named_parameters()).keys()
    return [({k: v for k, v in member_state(net, g, len(cfgs)).items() if k in names}, history[-1][g].train_loss)
            for g in range(len(cfgs))]


def distance(params: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """||w - w_ref|| / ||w_ref||, all parameters as one vector, in float64."""
    diff = torch.cat([(params[k].detach().double() - reference[k].detach().double()).flatten() for k in reference])
    ref = torch.cat([reference[k].detach().double().flatten() for k in reference])
    return float(diff.norm() / ref.norm())


def run(quick: bool = False) -> dict[str, Any]:
    """Per seed `s<seed>.<kind>_<dtype>_loss` and `s<seed>.<kind>_float32_distance`;
    `quick` is accepted for `bench/run.py`."""
    torch.set_num_threads(1)
    cfgs = configs()
    runs = {(kind, dtype): (packed(cfgs, DTYPES[dtype]) if kind == "packed" else [solo(c, DTYPES[dtype]) for c in cfgs])
            for kind in ("solo", "packed") for dtype in DTYPES}
    figures: dict[str, Any] = {"model": f"resnet18k-{WIDTH}", "batch_size": BATCH_SIZE, "epochs": cfgs[0].train.epochs}
    for i, cfg in enumerate(cfgs):
        seed = f"s{cfg.train.seed}"
        for kind in ("solo", "packed"):
            params32, loss32 = runs[kind, "float32"][i]
            params64, loss64 = runs[kind, "float64"][i]
            figures[f"{seed}.{kind}_float32_distance"] = round(distance(params32, params64), 4)
            figures[f"{seed}.{kind}_float32_loss"] = round(loss32, 4)
            figures[f"{seed}.{kind}_float64_loss"] = round(loss64, 4)
    return figures


if __name__ == "__main__":
    from bench import main

    main(run, __doc__)
