"""Late-phase weights: the worked numbers of specs/late_phase.md, checkpoints, real trials."""

from __future__ import annotations

import signal

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from workers.base import checkpoints
from workers.base.models import build_model
from workers.catalog import TrialConfig
from workers.core.errors import ConfigError
from workers.core.storage import Storage
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial
from workers.training.late_phase import (
    LatePhase,
    LatePhaseConfig,
    Members,
    collapse,
    collapse_layer,
    expand,
    late_phase_layers,
    load_members,
    set_active,
)


class Toy(nn.Module):
    """y_hat = theta * x + phi, with phi the bias of a fixed unit-weight head."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        self.head = nn.Linear(1, 1).double()
        with torch.no_grad():
            self.head.weight.fill_(1.0)
            self.head.bias.zero_()
        self.head.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.theta * x)[:, None])[:, 0]


def half_squared_error(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((y_hat - y) ** 2).sum()


def toy_update(k: int) -> tuple[Toy, LatePhase]:
    model = Toy()
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    base = sgd([p for p in model.parameters() if p.requires_grad])
    update = LatePhase(model, base, sgd, LatePhaseConfig(k=k, t0=0), seed=0, loss_fn=half_squared_error)
    update.start_epoch(0)
    return model, update


def batch(x: float, y: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([x], dtype=torch.float64), torch.tensor([y], dtype=torch.float64)


def test_toy_update_of_the_spec():
    model, update = toy_update(k=2)
    update(0, *batch(1.0, 2.0))
    assert model.theta.item() == 1.0 and model.theta.grad.item() == -1.0  # accumulated, not stepped
    update(1, *batch(2.0, 1.0))
    phi = [m.bias.item() for m in model.head.members]
    assert phi == pytest.approx([0.1, -0.1], abs=1e-15)
    assert model.theta.item() == pytest.approx(0.9, abs=1e-15)  # 1 - 0.1 * (-1 + 2)
    assert model.theta.grad is None  # cleared for the next cycle


def test_round_robin_and_one_shared_step_per_cycle():
    model, update = toy_update(k=3)
    members, changed = [], []
    for i in range(7):
        before = model.theta.item()
        update(i, *batch(1.0 + i, 0.5 * i))
        members.append(model.head.active)
        changed.append(model.theta.item() != before)
    assert members == [0, 1, 2, 0, 1, 2, 0]
    assert [i + 1 for i, c in enumerate(changed) if c] == [3, 6]  # after minibatches 3 and 6
    update.end_epoch(0)  # the leftover partial cycle (minibatch 7) is discarded
    assert model.theta.grad is None and model.head.active is None


def test_gamma_theta_scales_the_summed_gradient():
    model, update = toy_update(k=2)
    update.cfg = LatePhaseConfig(k=2, gamma_theta=0.5)
    update(0, *batch(1.0, 2.0))
    update(1, *batch(2.0, 1.0))
    assert model.theta.item() == pytest.approx(1 - 0.1 * 0.5 * 1.0, abs=1e-15)


def bn_members(gammas, betas, means, variances) -> Members:
    layer = nn.BatchNorm1d(1, eps=0.0).double()
    members = Members(layer, len(gammas))
    with torch.no_grad():
        for m, g, b, mu, var in zip(members.members, gammas, betas, means, variances):
            m.weight.fill_(g)
            m.bias.fill_(b)
            m.running_mean.fill_(mu)
            m.running_var.fill_(var)
    return members.eval()


def test_bn_collapse_averages_outputs_not_statistics():
    x = torch.tensor([[2.0]], dtype=torch.float64)
    first = bn_members([1.0, 3.0], [0.0, 2.0], [0.0, 0.0], [1.0, 1.0])
    assert first(x).item() == pytest.approx(5.0, abs=1e-15)
    assert collapse_layer(first).eval()(x).item() == pytest.approx(5.0, abs=1e-15)
    second = bn_members([1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 4.0])
    assert second(x).item() == pytest.approx(1.5, abs=1e-15)
    assert collapse_layer(second).eval()(x).item() == pytest.approx(1.5, abs=1e-15)
    averaged_statistics = 2.0 / (2.5 ** 0.5)
    assert averaged_statistics == pytest.approx(1.26491, abs=1e-5)


def test_collapsed_resnet_computes_the_member_average():
    torch.manual_seed(0)
    model = build_model("resnet18k", 2, (1, 8, 8), 10).double()
    names = late_phase_layers(model, include_head=True)
    assert names[-1] == "head" and len(names) == 1 + 8 * 2 + 3 + 1  # stem, blocks, shortcuts, head
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    model.train()
    with torch.no_grad():
        expand(model, names, 3, sigma0=0.1, generator=torch.Generator().manual_seed(0))
        for k in range(3):  # give each member its own running statistics
            set_active(model, k)
            model(x + k)
    set_active(model, None)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        collapse(model)
        assert not any(isinstance(m, Members) for m in model.modules())
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-12)
    assert model.state_dict().keys() == build_model("resnet18k", 2, (1, 8, 8), 10).state_dict().keys()


def test_members_copy_the_running_statistics_and_get_noise_on_weights_only():
    layer = nn.BatchNorm1d(4)
    with torch.no_grad():
        layer.running_mean.fill_(3.0)
    model = nn.Sequential(nn.Linear(2, 4), layer)
    (members,) = expand(model, ["1"], 2, sigma0=0.5, generator=torch.Generator().manual_seed(1))
    for m in members.members:
        assert m.running_mean.tolist() == [3.0] * 4
    assert not torch.equal(members.members[0].weight, members.members[1].weight)
    assert model[0].weight.requires_grad and not isinstance(model[0], Members)


@pytest.mark.parametrize("flat, field", [
    ({"model": "mlp", "late_phase.include_head": False}, "late_phase.include_head"),
    ({"batchnorm": False, "late_phase.include_head": False}, "late_phase.include_head"),
    ({"late_phase.t0": 2}, "late_phase.t0"),  # epochs = 2: no late-phase epoch left
    ({"late_phase.k": 1}, "late_phase.k"),
    ({"late_phase.k": -3}, "late_phase.k"),
])
def test_bad_late_phase_input_names_the_field(tiny, flat, field):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_flat({**tiny, "late_phase.k": 2, **flat})
    assert info.value.field == field


def ctx(path) -> RunContext:
    return RunContext(storage=str(path), sweep="test", threads=1)


def test_a_late_phase_trial_records_the_variant_and_keeps_all_members(tiny, tmp_path):
    cfg = TrialConfig.from_flat({**tiny, "epochs": 3, "milestones": [2], "late_phase.k": 2, "late_phase.t0": 1,
                                 "late_phase.sigma0": 0.01})
    row = run_trial(cfg, ctx(tmp_path))
    assert row["status"] == "ok"
    trials = pq.read_table(tmp_path / "trials" / f"{cfg.trial_key}.parquet").to_pylist()[0]
    assert trials["late_phase_k"] == 2 and trials["late_phase_t0"] == 1 and trials["swa_start"] == 0
    storage = Storage.open(str(tmp_path))
    final = checkpoints.load(storage, cfg.trial_key, "final")
    plain = build_model("resnet18k", 2, (1, 8, 8), 10)
    plain.load_state_dict(final["model"])  # a plain model: what metrics and pairs load
    with_members = build_model("resnet18k", 2, (1, 8, 8), 10)
    load_members(with_members, cfg.late_phase, final["late_phase_members"])
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(with_members.eval()(x), plain.eval()(x), rtol=0, atol=1e-5)
    head = with_members.head
    assert isinstance(head, Members) and not torch.equal(head.members[0].weight, head.members[1].weight)


def test_a_model_without_batchnorm_gets_members_for_its_head_only(tiny, tmp_path):
    cfg = TrialConfig.from_flat({**tiny, "model": "mlp", "width": 16, "late_phase.k": 3})
    assert run_trial(cfg, ctx(tmp_path))["status"] == "ok"
    final = checkpoints.load(Storage.open(str(tmp_path)), cfg.trial_key, "final")
    members = [k for k in final["late_phase_members"] if ".members." in k]
    assert sorted(members) == [f"5.members.{k}.{p}" for k in range(3) for p in ("bias", "weight")]


def test_resume_inside_the_late_phase_continues_exactly(tiny, tmp_path, kill_trial_at):
    """A trial killed after epoch 3 (members exist since epoch 1) and rerun resumes from
    its `last` checkpoint and ends exactly like an uninterrupted run."""
    flat = {**tiny, "epochs": 4, "milestones": [3], "late_phase.k": 3, "late_phase.t0": 1}
    cfg = TrialConfig.from_flat(flat)
    whole = run_trial(cfg, ctx(tmp_path / "whole"))
    assert kill_trial_at(flat, str(tmp_path / "cut"), cfg.trial_key, 3) == -signal.SIGKILL
    last = checkpoints.load(Storage.open(str(tmp_path / "cut")), cfg.trial_key, "last")
    assert last["epoch"] == 3 and len(last["hooks"][0]["members"]) == 3  # every member's optimizer
    resumed = run_trial(cfg, ctx(tmp_path / "cut"))
    assert resumed["resumed_from_epoch"] == 3
    assert resumed["train_loss"] == whole["train_loss"] and resumed["test_loss"] == whole["test_loss"]
