"""Packed training: a member of a pack is its solo trial, computed together with others.

Equivalence is checked in float64 on the CPU against the solo code path itself
(`workers.jobs.trial.training_hooks` + `workers.training.train.fit`), for every packed optimizer and
with members that differ in seed, lr, weight decay, momentum, label noise and
initial-weight scale.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from workers.base.data import prepare
from workers.base.models import MODELS, build_model
from workers.catalog import TrialConfig
from workers.jobs.runtime import new_model, seed_everything
from workers.jobs.trial import training_hooks
from workers.packing.modules import member_state, pack, split_outputs, stack_inputs, unsupported_layers
from workers.packing.optim import build_packed_optimizer
from workers.packing.policy import PackPolicy, plan_packs, signature
from workers.packing.train import PackedUpdate, fit_packed
from workers.training.optim import lr_factor
from workers.training.train import fit

# 503 of digits' images in batches of 64: 7 steps per epoch, the lr schedule's step after the first.
BASE = {"dataset": "digits", "model": "resnet18k", "width": 2, "batch_size": 64, "epochs": 2, "milestones": [1],
        "data_fraction": 0.35}
# Three members that differ in everything a member may set for itself. ALI-G's caps are
# small: with steps near 1 its dynamics amplify rounding (1e-16 -> 1e-7 in 22 steps) in
# solo runs as much as in packs.
MEMBERS = [
    {"seed": 0, "lr": 0.05, "weight_decay": 5e-4, "momentum": 0.9, "adam.lr": 1e-3, "alig.max_lr": 0.01},
    {"seed": 1, "lr": 0.1, "weight_decay": 0.0, "momentum": 0.5, "label_noise": 0.2, "init_scale": 0.8,
     "adam.lr": 3e-3, "alig.max_lr": 0.01},
    {"seed": 2, "lr": 0.02, "weight_decay": 1e-3, "momentum": 0.9, "label_noise": 0.1, "adam.lr": 2e-3,
     "alig.max_lr": 0.02},
]


def float64_splits(cfg: TrialConfig):
    splits = prepare(cfg.data, "cpu")
    return dataclasses.replace(splits, x_train=splits.x_train.double(), x_test=splits.x_test.double())


def solo_run(cfg: TrialConfig):
    """The solo trial's training in float64: final state and per-epoch stats."""
    splits = float64_splits(cfg)
    seed_everything(cfg.train.seed)
    model = new_model(cfg, splits, "cpu").double()
    hooks = training_hooks(cfg, model)
    history = []
    fit(model, hooks.update, splits.x_train, splits.y_train, hooks=hooks, batch_size=cfg.train.batch_size,
        seed=cfg.train.seed, epochs=cfg.train.epochs, augment=_augment(cfg), on_epoch=history.append)
    return model.state_dict(), history


def packed_run(cfgs: list[TrialConfig]):
    """The same members trained as one packed network in float64."""
    models, labels = [], []
    for cfg in cfgs:
        splits = float64_splits(cfg)
        seed_everything(cfg.train.seed)
        models.append(new_model(cfg, splits, "cpu").double())
        labels.append(splits.y_train)
    packed = pack(models)
    optimizer = build_packed_optimizer(list(packed.parameters()), cfgs)
    history = []
    fit_packed(PackedUpdate(packed, optimizer), splits.x_train, labels, batch_size=cfgs[0].train.batch_size,
               seeds=[c.train.seed for c in cfgs], epochs=cfgs[0].train.epochs, start_epoch=0,
               base_lrs=optimizer.base_lrs, lr_factor=lr_factor(cfgs[0]), augment=_augment(cfgs[0]),
               on_epoch=lambda stats: history.append(stats) or True)
    return [member_state(packed, g, len(cfgs)) for g in range(len(cfgs))], history


def _augment(cfg: TrialConfig):
    from workers.training.augment import Augment

    return Augment.of(cfg.data)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-300)


@pytest.mark.parametrize("case", [
    {"optimizer": "sgd"},
    {"optimizer": "sgd", "augment_crop": 1, "augment_flip": True},
    {"optimizer": "adam"},
    {"optimizer": "adamw"},
    {"optimizer": "alig", "alig.max_norm": 30.0},
    {"optimizer": "sgd", "model": "mlp", "width": 16},
], ids=["sgd", "sgd-augmented", "adam", "adamw", "alig", "mlp-sgd"])
def test_packed_members_end_with_their_solo_weights_in_float64(case):
    cfgs = [TrialConfig.from_flat({**BASE, **member, **case}) for member in MEMBERS]
    states, history = packed_run(cfgs)
    for g, cfg in enumerate(cfgs):
        solo_state, solo_history = solo_run(cfg)
        for key, value in solo_state.items():
            if value.dtype.is_floating_point:
                assert relative_error(states[g][key], value) <= 1e-9, (cfg.train.seed, key)
            else:
                assert torch.equal(states[g][key], value), key
        for epoch, solo in enumerate(solo_history):
            member = history[epoch][g]
            # the epoch's mean loss is accumulated in float32 in both loops
            assert member.train_loss == pytest.approx(solo.train_loss, rel=1e-6)
            assert (member.train_acc, member.lr, member.epoch) == (solo.train_acc, solo.lr, solo.epoch)
            if not math.isnan(solo.step_size):
                assert member.step_size == pytest.approx(solo.step_size, rel=1e-9)


def test_the_packed_state_is_the_members_states_side_by_side():
    members = [build_model("resnet18k", 3, (1, 8, 8), 10) for _ in range(3)]
    packed = pack(members)
    for g, model in enumerate(members):
        for key, value in model.state_dict().items():
            assert torch.equal(member_state(packed, g, 3)[key], value), key


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_packs_and_computes_its_members_outputs(name):
    torch.manual_seed(0)
    members = [build_model(name, 2, (1, 8, 8), 10).double() for _ in range(3)]
    assert unsupported_layers(members[0]) == []
    packed = pack(members)
    inputs = [torch.randn(6, 1, 8, 8, dtype=torch.float64) for _ in members]
    for train in (True, False):
        packed.train(train)
        for m in members:
            m.train(train)
        outputs = split_outputs(packed(stack_inputs(inputs)), len(members))
        for g, (model, x) in enumerate(zip(members, inputs)):
            assert relative_error(outputs[:, g], model(x)) <= 1e-12


def test_layers_without_a_packed_version_are_named():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.LayerNorm(2))
    assert unsupported_layers(model) == ["1 (LayerNorm)"]


def trials(**axes) -> list[TrialConfig]:
    from itertools import product

    keys = list(axes)
    return [TrialConfig.from_flat({**BASE, **dict(zip(keys, values))}) for values in product(*axes.values())]


CPU_AUTO = PackPolicy.parse("auto", "cpu")


def test_seeds_lr_and_label_noise_pack_together_and_widths_do_not():
    grid = trials(width=[2, 4], lr=[0.05, 0.1], label_noise=[0.0, 0.2], seed=[0, 1])
    packs = plan_packs(grid, PackPolicy.parse("8", "cpu"))
    assert sorted(len(p.members) for p in packs) == [8, 8]
    for plan in packs:
        assert len({c.model.width for c in plan.members}) == 1
        assert len({signature(c) for c in plan.members}) == 1


def test_the_seeds_of_a_cell_stay_in_one_pack_where_they_fit():
    grid = trials(lr=[0.05, 0.1, 0.2], seed=[0, 1, 2])
    packs = plan_packs(grid, PackPolicy.parse("5", "cpu"))
    assert [len(p.members) for p in packs] == [3, 3, 3]
    for plan in packs:
        assert len({c.cell_key for c in plan.members}) == 1
    big = plan_packs(trials(seed=[0, 1, 2, 3, 4, 5, 6]), PackPolicy.parse("3", "cpu"))
    assert [len(p.members) for p in big] == [3, 3, 1]
    assert big[-1].solo_reason == "no other trial of its shape to pack with"
    # cells larger than a pack: the remainder of one is filled up by the next
    cut = plan_packs(trials(lr=[0.05, 0.1], seed=[0, 1, 2, 3, 4]), PackPolicy.parse("4", "cpu"))
    assert [len(p.members) for p in cut] == [4, 4, 2]


def test_solo_trials_say_why():
    variants = [TrialConfig.from_flat({**BASE, "late_phase.k": 2, "late_phase.t0": 1, "seed": s}) for s in (0, 1)]
    variants += [TrialConfig.from_flat({**BASE, "swa.start": 2, "seed": s}) for s in (0, 1)]
    wide = trials(width=[16], seed=[0, 1])
    reasons = [p.solo_reason for p in plan_packs(variants + wide, CPU_AUTO)]
    assert reasons == ["late-phase weights train solo"] * 2 + ["SWA trains solo"] * 2 + \
        ["width 16 > 8 (--pack auto on cpu)"] * 2
    off = plan_packs(trials(seed=[0, 1]), PackPolicy.parse("off", "cpu"))
    assert [(len(p.members), p.solo_reason) for p in off] == [(1, "--pack off")] * 2


def test_auto_packs_wider_models_and_larger_images_on_a_gpu_than_on_a_cpu():
    grid = trials(width=[16], seed=[0, 1])
    assert len(plan_packs(grid, CPU_AUTO)) == 2
    assert len(plan_packs(grid, PackPolicy.parse("auto", "cuda"))) == 1
    cifar = [TrialConfig.from_flat({**BASE, "dataset": "cifar10", "seed": s}) for s in (0, 1)]
    assert [p.solo_reason for p in plan_packs(cifar, CPU_AUTO)] == \
        ["32x32 images: packing does not pay (--pack auto on cpu)"] * 2
    assert len(plan_packs(cifar, PackPolicy.parse("auto", "cuda"))) == 1


@pytest.mark.parametrize("bad", ["0", "-1", "two", ""])
def test_a_bad_pack_setting_names_the_option(bad):
    from workers.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--pack"):
        PackPolicy.parse(bad, "cpu")


def test_the_dry_run_lists_the_packs_and_a_bad_pack_setting_exits_2(capsys, tmp_path):
    from sweeps.run.cli import main

    assert main("taxonomy", "", ["--dry-run", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "packing (--pack auto on cpu): 12 models in 6 packs, 4 solo" in out
    assert "  pack of 2 width=2 batch_size=32 seed=0,1  1 CPU, 0 GPU" in out
    assert main("taxonomy", "", ["--dry-run", "--pack", "x", "--storage", str(tmp_path)]) == 2
    assert "error: --pack: must be 'auto', 'off' or a pack size >= 1, got 'x'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written
