"""ALI-G: the worked numbers of specs/alig.md (float64), its constraint, and a real trial."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import torch

from workers.catalog import TrialConfig
from workers.core.errors import ConfigError
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial
from workers.training.alig import AliG


def quadratic_steps(w0, steps: int, **options) -> tuple[list[list[float]], AliG]:
    """Run ALI-G on f(w) = 0.5 ||w||^2 (so g = w, loss = f(w)); the iterates after each step."""
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = AliG([w], **options)
    iterates = []
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * (w * w).sum()
        loss.backward()
        opt.step(lambda value=loss: value)
        iterates.append(w.detach().tolist())
    return iterates, opt


def test_default_step_is_the_polyak_step_with_delta():
    (w1,), opt = quadratic_steps([3.0, 4.0], 1)
    assert w1 == pytest.approx([1.50000059999976, 2.00000079999968], rel=0, abs=1e-13)
    assert opt.last_step_size_unclipped == pytest.approx(12.5 / 25.00001, rel=1e-15)
    assert opt.last_step_size == opt.last_step_size_unclipped  # no cap by default


def test_without_delta_every_step_halves_the_weights():
    iterates, _ = quadratic_steps([3.0, 4.0], 3, delta=0.0)
    assert iterates == [[1.5, 2.0], [0.75, 1.0], [0.375, 0.5]]


def test_max_lr_caps_the_step_and_the_unclipped_size_is_exposed():
    iterates, opt = quadratic_steps([3.0, 4.0], 1, max_lr=0.1)
    assert iterates[0] == pytest.approx([2.7, 3.6], abs=1e-14)
    assert opt.last_step_size == 0.1
    assert opt.last_step_size_unclipped == pytest.approx(0.4999998, abs=1e-12)
    iterates, _ = quadratic_steps([3.0, 4.0], 2, max_lr=0.1)
    assert iterates[1] == pytest.approx([2.43, 3.24], abs=1e-14)


def test_momentum_keeps_step_size_weighted_updates():
    iterates, _ = quadratic_steps([3.0, 4.0], 2, momentum=0.9, delta=0.0)
    assert iterates[0] == pytest.approx([0.15, 0.2], abs=1e-14)
    assert iterates[1] == pytest.approx([-1.2075, -1.61], abs=1e-14)


def test_construction_projects_onto_the_max_norm_ball():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    AliG([w], max_norm=1.0)
    assert w.tolist() == pytest.approx([0.6, 0.8], abs=1e-15)


def test_every_step_projects_all_stepped_parameters_together():
    a = torch.nn.Parameter(torch.tensor([30.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([40.0], dtype=torch.float64))
    opt = AliG([a, b], max_norm=100.0, delta=0.0)  # ||(30, 40)|| = 50: inside the ball
    (-(a + b).sum()).backward()  # g = (-1, -1)
    opt.step(lambda: 1e6)  # s = 1e6 / 2
    moved = torch.tensor([30.0 + 5e5, 40.0 + 5e5], dtype=torch.float64)
    expected = moved * 100.0 / moved.norm()
    assert [a.item(), b.item()] == pytest.approx(expected.tolist(), rel=1e-14)


def test_parameters_without_gradient_are_neither_stepped_nor_counted():
    used = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    unused = torch.nn.Parameter(torch.tensor([100.0], dtype=torch.float64))
    opt = AliG([used, unused], delta=0.0, max_norm=10.0)  # start: ||(3, 4, 100)|| > 10
    scale = 10.0 / math.sqrt(9 + 16 + 100**2)
    assert unused.item() == pytest.approx(100 * scale)
    loss = 0.5 * (used * used).sum()
    loss.backward()
    before = unused.item()
    opt.step(lambda: loss)
    assert unused.item() == before  # no gradient: not moved, not in the step's projection
    assert used.tolist() == pytest.approx([1.5 * scale, 2 * scale])


def test_momentum_buffers_are_not_rescaled_by_the_projection():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    opt = AliG([w], momentum=0.9, delta=0.0, max_norm=5.0)  # on the sphere: no projection
    (-w[0]).backward()  # g = (-1, 0); the closure says the loss is 2, so s = 2
    opt.step(lambda: 2.0)
    assert opt.state[w]["momentum_buffer"].tolist() == [2.0, 0.0]  # -s g, not rescaled
    unprojected = torch.tensor([5.0 + 0.9 * 2.0, 4.0], dtype=torch.float64)  # w - s g + mu v
    assert w.tolist() == pytest.approx((unprojected * 5.0 / unprojected.norm()).tolist(), rel=1e-14)


@pytest.mark.parametrize("key, value", [("alig.max_norm", 0), ("alig.max_norm", -1.0), ("alig.max_lr", 0),
                                        ("alig.delta", -1e-5)])
def test_bad_alig_options_name_the_field(tiny, key, value):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_flat({**tiny, "optimizer": "alig", key: value})
    assert info.value.field == key


def test_a_trial_with_alig_records_the_variant_and_its_step_sizes(tiny, tmp_path):
    cfg = TrialConfig.from_flat({**tiny, "optimizer": "alig", "alig.max_lr": 0.5, "alig.max_norm": 40.0,
                                 "epochs": 2})
    row = run_trial(cfg, RunContext(storage=str(tmp_path), sweep="test", threads=1))
    assert row["status"] == "ok"
    trials = pq.read_table(tmp_path / "trials" / f"{cfg.trial_key}.parquet").to_pylist()[0]
    assert trials["optimizer"] == "alig" and trials["alig_max_lr"] == 0.5 and trials["alig_max_norm"] == 40.0
    history = pq.read_table(tmp_path / "history" / f"{cfg.trial_key}.parquet").to_pandas()
    assert (history["step_size"] <= 0.5).all() and (history["step_size"] > 0).all()
    assert (history["step_size_unclipped"] >= history["step_size"]).all()
    assert history["lr"].tolist() == [0.5, 0.5]  # the cap; no schedule for ALI-G
    final = torch.load(tmp_path / "checkpoints" / cfg.trial_key / "final.pt", weights_only=True)["model"]
    weights = [v for k, v in final.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert math.sqrt(sum(float((w.double() ** 2).sum()) for w in weights)) <= 40.0 * (1 + 1e-5)


def test_unset_cap_and_radius_are_none_in_the_config_and_nan_in_records(tiny):
    cfg = TrialConfig.from_flat({**tiny, "optimizer": "alig", "alig.max_norm": "none"})
    assert cfg.alig.max_lr is None and cfg.alig.max_norm is None
    columns = cfg.record_columns()
    assert math.isnan(columns["alig_max_lr"]) and math.isnan(columns["alig_max_norm"])
    assert TrialConfig.from_flat(cfg.to_flat()).trial_key == cfg.trial_key
