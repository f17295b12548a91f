"""Optimizers, lr schedules, architecture knobs, and variants as axes of a real sweep."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from analysis import load_sweep
from sweeps.run.cli import main as sweep_main
from workers.base.models import NO_BATCHNORM, build_model, load_start, scale_weights
from workers.catalog import TrialConfig
from workers.core.errors import ConfigError
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial
from workers.training.optim import OPTIMIZERS, LrSchedule, build_optimizer, lr_factor


def ctx(path) -> RunContext:
    return RunContext(storage=str(path), sweep="test", threads=1)


# ---------------------------------------------------------------- optimizers


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_trains_a_tiny_trial(tiny, tmp_path, name):
    cfg = TrialConfig.from_flat({**tiny, "optimizer": name, "alig.max_lr": 0.1, "adam.lr": 0.01})
    row = run_trial(cfg, ctx(tmp_path))
    assert row["status"] == "ok" and row["optimizer"] == name
    assert row["train_loss"] < math.log(10)  # learnt something from the uniform start


def test_adam_and_adamw_read_their_own_section():
    model = nn.Linear(3, 2)
    flat = {"optimizer": "adam", "adam.lr": 0.003, "adam.beta2": 0.99, "weight_decay": 0.01}
    adam = build_optimizer(model.parameters(), TrialConfig.from_flat(flat))
    adamw = build_optimizer(model.parameters(), TrialConfig.from_flat({**flat, "optimizer": "adamw"}))
    assert type(adam) is torch.optim.Adam and type(adamw) is torch.optim.AdamW
    for opt in (adam, adamw):
        group = opt.param_groups[0]
        assert group["lr"] == 0.003 and group["betas"] == (0.9, 0.99) and group["weight_decay"] == 0.01


def test_unknown_optimizer_or_schedule_names_the_field_and_the_valid_names():
    with pytest.raises(ConfigError, match="valid: adam, adamw, alig, sgd") as info:
        TrialConfig.from_flat({"optimizer": "adagrad"})
    assert info.value.field == "optimizer"
    with pytest.raises(ConfigError, match="did you mean 'cosine'") as info:
        TrialConfig.from_flat({"schedule": "cosin"})
    assert info.value.field == "schedule"


# ---------------------------------------------------------------- schedules


def factors(flat: dict, epochs: int) -> list[float]:
    cfg = TrialConfig.from_flat({"epochs": epochs, **flat})
    return [lr_factor(cfg)(e) for e in range(epochs)]


def test_step_schedule_multiplies_at_each_milestone():
    assert factors({"milestones": [2, 4], "lr_factor": 0.1}, 6) == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_schedule_decays_to_zero_over_the_run():
    half = (1 + math.cos(math.pi / 4)) / 2
    assert factors({"schedule": "cosine"}, 4) == pytest.approx([1, half, 0.5, 1 - half])


def test_linear_decay_reproduces_the_late_phase_paper():
    """lr 0.1 constant to epoch 100, linearly down to 0.001 at epoch 180 of 200."""
    f = factors({"schedule": "linear_decay"}, 200)
    lr = [0.1 * x for x in f]
    assert lr[0] == lr[100] == pytest.approx(0.1)
    assert lr[140] == pytest.approx(0.0505)
    assert lr[180] == lr[199] == pytest.approx(0.001)
    assert all(a >= b for a, b in zip(lr, lr[1:]))


def test_warmup_ramps_the_first_epochs_linearly():
    assert factors({"schedule": "constant", "warmup_epochs": 3}, 5) == pytest.approx([0.25, 0.5, 0.75, 1, 1])


def test_swa_lr_replaces_the_schedule_from_its_start_and_alig_is_not_scheduled():
    assert factors({"schedule": "cosine", "swa.start": 3, "swa.lr_factor": 0.2}, 4)[2:] == [0.2, 0.2]
    assert factors({"optimizer": "alig", "milestones": [1]}, 3) == [1.0, 1.0, 1.0]


def test_lr_schedule_sets_every_group_from_its_own_initial_lr():
    groups = [{"lr": 0.1}, {"lr": 0.01}]
    schedule = LrSchedule(lambda epoch: 0.5**epoch, lambda: groups)
    for epoch in range(3):
        schedule.start_epoch(epoch)
    assert [g["lr"] for g in groups] == [0.025, 0.0025]


@pytest.mark.parametrize("flat, field", [
    ({"schedule": "linear_decay", "decay_start": 0.9, "decay_end": 0.5}, "decay_end"),
    ({"schedule": "linear_decay", "decay_end": 1.5}, "decay_end"),
    ({"final_lr_factor": 0}, "final_lr_factor"),
    ({"warmup_epochs": 10, "epochs": 10, "milestones": [5]}, "warmup_epochs"),
    ({"warmup_epochs": -1}, "warmup_epochs"),
    ({"adam.lr": 0}, "adam.lr"),
    ({"adam.beta2": 1.0}, "adam.beta2"),
])
def test_bad_schedule_and_optimizer_options_name_the_field(flat, field):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_flat(flat)
    assert info.value.field == field


# ---------------------------------------------------------------- architecture knobs


def test_batchnorm_off_replaces_every_batchnorm_and_gives_convolutions_a_bias():
    model = build_model("resnet18k", 4, (1, 8, 8), 10, batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    with_bn = build_model("resnet18k", 4, (1, 8, 8), 10)
    assert all(m.bias is None for m in with_bn.modules() if isinstance(m, nn.Conv2d))


def test_a_trial_without_batchnorm_records_the_replacement(tiny, tmp_path):
    cfg = TrialConfig.from_flat({**tiny, "batchnorm": False, "lr": 0.01})
    run_trial(cfg, ctx(tmp_path))
    row = pq.read_table(tmp_path / "trials" / f"{cfg.trial_key}.parquet").to_pylist()[0]
    assert row["batchnorm"] is False and row["norm_layer"] == NO_BATCHNORM
    plain = TrialConfig.from_flat(tiny)
    run_trial(plain, ctx(tmp_path))
    assert pq.read_table(tmp_path / "trials" / f"{plain.trial_key}.parquet")["norm_layer"][0].as_py() == "batchnorm"


def test_init_scale_multiplies_conv_and_linear_weights_only():
    torch.manual_seed(3)
    base = build_model("resnet18k", 2, (1, 8, 8), 10)
    torch.manual_seed(3)
    scaled = build_model("resnet18k", 2, (1, 8, 8), 10, init_scale=2.5)
    for (name, a), b in zip(base.state_dict().items(), scaled.state_dict().values()):
        weight_of_layer = name.endswith("weight") and a.dim() > 1
        torch.testing.assert_close(b, a * 2.5 if weight_of_layer else a, rtol=0, atol=0)
    model = nn.Linear(2, 2)
    before = model.bias.clone()
    scale_weights(model, 0.0)
    assert model.weight.abs().sum() == 0 and torch.equal(model.bias, before)


def test_init_from_loads_matching_tensors_and_keeps_a_new_head(tmp_path):
    torch.manual_seed(0)
    source = build_model("resnet18k", 2, (1, 8, 8), 100)
    path = tmp_path / "pretrained.pt"
    torch.save({"model": source.state_dict()}, path)
    target = build_model("resnet18k", 2, (1, 8, 8), 10)
    fresh_head = target.head.weight.clone()
    load_start(target, str(path))
    torch.testing.assert_close(target.stem[0].weight, source.stem[0].weight, rtol=0, atol=0)
    assert torch.equal(target.head.weight, fresh_head)  # 100 -> 10 classes: not copied
    with pytest.raises(ConfigError, match="no tensor") as info:
        load_start(nn.Linear(3, 3), str(path))
    assert info.value.field == "init_from"


def test_a_trial_from_a_pretrained_start_saves_it_as_theta_0(tiny, tmp_path):
    torch.manual_seed(7)
    source = build_model("resnet18k", 2, (1, 8, 8), 10)
    path = tmp_path / "start.pt"
    torch.save(source.state_dict(), path)  # a bare state_dict works too
    cfg = TrialConfig.from_flat({**tiny, "init_from": str(path)})
    run_trial(cfg, ctx(tmp_path / "sweep"))
    init = torch.load(tmp_path / "sweep" / "checkpoints" / cfg.trial_key / "init.pt", weights_only=True)
    for name, value in source.state_dict().items():
        torch.testing.assert_close(init["model"][name], value, rtol=0, atol=0)
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_flat({**tiny, "init_from": str(tmp_path / "missing.pt")})
    assert info.value.field == "init_from"


def test_init_scale_must_be_positive():
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_flat({"init_scale": 0})
    assert info.value.field == "init_scale"


# ---------------------------------------------------------------- variants as sweep axes


def test_a_taxonomy_sweep_takes_variants_as_axes(tmp_path):
    code = sweep_main("taxonomy", "", [
        "--storage", str(tmp_path), "--name", "variants", "--in-process",
        "--set", "width=2", "--set", "batch_size=128", "--set", "seed=0", "--set", "epochs=2",
        "--set", "milestones=1", "--set", "optimizer=sgd,alig", "--set", "late_phase.k=0,4",
    ])
    assert code == 0
    sweep = load_sweep(str(tmp_path / "variants"))
    trials = sweep.trials.sort_values(["optimizer", "late_phase_k"])
    assert list(zip(trials["optimizer"], trials["late_phase_k"])) == [("alig", 0), ("alig", 4), ("sgd", 0), ("sgd", 4)]
    assert (trials["status"] == "ok").all()
    assert {"optimizer", "late_phase_k"} <= set(sweep.axes())
    history = sweep.history
    assert history.loc[history["optimizer"] == "alig", "step_size"].notna().all()
    assert history.loc[history["optimizer"] == "sgd", "step_size"].isna().all()


@pytest.mark.parametrize("assignments, field", [
    (["late_phase.k=1"], "late_phase.k"),
    (["late_phase.k=4", "late_phase.t0=12"], "late_phase.t0"),  # the taxonomy demo has 12 epochs
    (["late_phase.k=4", "model=mlp", "late_phase.include_head=false"], "late_phase.include_head"),
    (["optimizer=alig", "alig.max_norm=0"], "alig.max_norm"),
    (["swa.start=13"], "swa.start"),
    (["optimizer=adagrad"], "optimizer"),
    (["schedule=exponential"], "schedule"),
])
def test_bad_variants_on_the_command_line_exit_with_code_2(tmp_path, capsys, assignments, field):
    argv = ["--storage", str(tmp_path), "--dry-run"]
    for assignment in assignments:
        argv += ["--set", assignment]
    assert sweep_main("taxonomy", "", argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {field}: ")
