"""Pairwise metrics (workers.pair_metrics.pairwise) and the pair trial (workers.jobs.pair_trial)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from analysis import load_sweep
from workers.catalog import TrialConfig
from workers.core.errors import ConfigError
from workers.core.mc import mode_connectivity
from workers.core.records import pair_key
from workers.jobs.pair_trial import run_pair
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial
from workers.pair_metrics import pairwise
from workers.training.train import recompute_bn

# ---------------------------------------------------------------- CKA


def _features(n: int = 200, d: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_cka_is_one_for_identical_representations():
    x = _features()
    assert pairwise.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_symmetric_and_below_one_for_unrelated_representations():
    x, y = _features(seed=0), _features(d=7, seed=1)
    assert pairwise.linear_cka(x, y) == pytest.approx(pairwise.linear_cka(y, x), abs=1e-12)
    assert pairwise.linear_cka(x, y) < 0.2


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x, y = _features(seed=0), _features(seed=1) + _features(seed=0)  # related, CKA in (0, 1)
    q, _ = torch.linalg.qr(_features(n=10, seed=2))
    reference = pairwise.linear_cka(x, y)
    assert 0.1 < reference < 0.9
    assert pairwise.linear_cka(x @ q, y) == pytest.approx(reference, abs=1e-10)
    assert pairwise.linear_cka(3.7 * x, 0.01 * y) == pytest.approx(reference, abs=1e-10)
    # a non-isotropic scaling is not an invariance: the test can tell the difference
    assert pairwise.linear_cka(x * torch.linspace(0.1, 10, 10, dtype=torch.float64), y) != pytest.approx(reference, abs=1e-3)


def test_cka_of_a_constant_representation_is_nan():
    assert math.isnan(pairwise.linear_cka(torch.ones(50, 3), _features(n=50)))


def test_mixup_inputs_are_reproducible_and_mixed():
    x = _features(n=100, d=4).float().view(100, 1, 2, 2)
    a = pairwise.mixup_inputs(x, 30, 16.0, seed=5)
    assert a.shape == (30, 1, 2, 2)
    assert torch.equal(a, pairwise.mixup_inputs(x, 30, 16.0, seed=5))
    plain = pairwise.mixup_inputs(x, 30, 0.0, seed=5)
    assert all(any(torch.equal(p, row) for row in x) for p in plain)  # alpha 0: real samples
    assert not any(torch.equal(a[0], row) for row in x)


# ---------------------------------------------------------------- Bezier, BN, mc


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(5, 3, generator=g), "b": torch.randn(3, generator=g)}


def test_bezier_end_points_equal_the_two_models_exactly():
    w_a, w_b, bend = _weights(0), _weights(1), _weights(2)
    at_0 = pairwise.bezier_weights(w_a, bend, w_b, 0.0)
    at_1 = pairwise.bezier_weights(w_a, bend, w_b, 1.0)
    assert all(torch.equal(at_0[n], w_a[n]) and torch.equal(at_1[n], w_b[n]) for n in w_a)
    mid = pairwise.bezier_weights(w_a, bend, w_b, 0.5)
    assert torch.allclose(mid["w"], 0.25 * w_a["w"] + 0.5 * bend["w"] + 0.25 * w_b["w"])


def test_bend_schedule_matches_garipov():
    factors = [pairwise.bend_lr_factor(e, 10) for e in range(10)]
    assert factors[:6] == [1.0] * 6 and factors[9] == pytest.approx(0.01)
    assert factors[7] == pytest.approx(1.0 - 0.99 * 0.2 / 0.4)


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ([5.0, 20.0, 30.0, 20.0, 5.0], -25.0),  # a barrier: poorly connected
        ([20.0, 10.0, 4.0, 10.0, 20.0], 16.0),  # the curve beats its end points
        ([3.0, 3.0, 3.0, 3.0, 3.0], 0.0),  # flat: well connected
        ([0.0, 1.0, 2.0, 3.0, 10.0], 5.0),  # largest deviation at an end point (paper's formula)
    ],
)
def test_mode_connectivity_sign_on_constructed_curves(errors, expected):
    assert mode_connectivity(errors) == pytest.approx(expected)
    assert math.isnan(mode_connectivity([1.0, float("nan"), 1.0]))


def _bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_recompute_bn_replaces_running_statistics_by_the_data_statistics():
    net = _bn_net()
    x = torch.randn(103, 4, generator=torch.Generator().manual_seed(1)) * 3 + 2  # partial last batch
    before = net[1].running_mean.clone()
    net.eval()
    recompute_bn(net, x, batch_size=25)
    assert not net.training  # the mode it was in
    bn = net[1]
    assert not torch.allclose(bn.running_mean, before)
    with torch.no_grad():
        pre = net[0](x)  # (N, 6): what the BatchNorm sees
    assert torch.allclose(bn.running_mean, pre.mean(0), atol=1e-5)
    assert bn.momentum == 0.1  # restored


def test_fit_bend_lowers_the_loss_in_the_middle_of_the_curve():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    ends = []
    for seed in (1, 2):  # two models trained from different seeds
        net = _bn_net(seed)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(40):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        ends.append(pairwise.trainable_weights(net))
    net = _bn_net()
    w_a, w_b = ends

    def middle_loss(bend):
        pairwise.load_weights(net, pairwise.bezier_weights(w_a, bend, w_b, 0.5))
        recompute_bn(net, x, 64)
        net.eval()
        with torch.no_grad():
            return float(nn.functional.cross_entropy(net(x), y))

    midpoint = {n: (w_a[n] + w_b[n]) / 2 for n in w_a}
    bend, objective = pairwise.fit_bend(net, w_a, w_b, x, y, epochs=10, lr=0.05, momentum=0.9,
                                        weight_decay=0.0, batch_size=64, seed=0)
    assert math.isfinite(objective)
    assert middle_loss(bend) < 0.8 * middle_loss(midpoint)


def test_evaluate_curve_matches_models_built_at_each_t():
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(4))
    model = _bn_net(1)
    w_a, w_b, bend = (pairwise.trainable_weights(_bn_net(s)) for s in (1, 2, 3))
    w_a = pairwise.trainable_weights(model)  # the curve's module holds an end point, as in a pair trial
    rows = pairwise.evaluate_curve(model, w_a, bend, w_b, [0.0, 0.5, 1.0], {"train": (x, y)}, x_bn=x,
                                   bn_batch_size=16, chunk=32)
    for row in rows:
        fresh = _bn_net(0)
        pairwise.load_weights(fresh, pairwise.bezier_weights(w_a, bend, w_b, row["t"]))
        recompute_bn(fresh, x, 16)
        fresh.eval()
        with torch.no_grad():
            loss = float(nn.functional.cross_entropy(fresh(x), y))
        assert row["loss"] == pytest.approx(loss, rel=1e-5)
        assert row["err"] == pytest.approx(100 * (1 - row["acc"]))


def test_l2_distance():
    w_a, w_b = _weights(0), _weights(1)
    flat = torch.cat([(w_a[n] - w_b[n]).flatten() for n in w_a])
    assert pairwise.l2_distance(w_a, w_b) == pytest.approx(float(flat.norm()), rel=1e-6)
    assert pairwise.l2_distance(w_a, w_a) == 0.0


# ---------------------------------------------------------------- pair trial


def _configs(tiny, seeds=(0, 1), **extra):
    return [TrialConfig.from_flat({**tiny, **extra, "seed": s}) for s in seeds]


def test_pair_options_are_validated_by_name(tiny):
    with pytest.raises(ConfigError, match="pairs.bezier_points"):
        TrialConfig.from_flat({**tiny, "pairs.bezier_points": 2})
    with pytest.raises(ConfigError, match="did you mean 'pairs.mc_pairs'"):
        TrialConfig.from_flat({**tiny, "pairs.mc_pair": 2})


def test_pair_key_is_symmetric_and_names_what_changes_the_result(tiny):
    a, b = _configs(tiny)
    assert pair_key(a, b, True) == pair_key(b, a, True) != pair_key(a, b, False)
    wider = _configs(tiny, **{"pairs.bezier_epochs": 9})
    assert pair_key(*wider, False) == pair_key(a, b, False)  # curve options don't touch CKA pairs
    assert pair_key(*wider, True) != pair_key(a, b, True)
    with pytest.raises(ConfigError, match="different cells"):
        pair_key(a, _configs(tiny, width=3)[1], True)


def test_run_pair_writes_rows_that_load_sweep_reads(tiny, tmp_path):
    storage = tmp_path / "sweep"
    ctx = RunContext(storage=str(storage), sweep="pairs-test", threads=1)
    cfg_a, cfg_b = _configs(tiny, **{"pairs.bezier_epochs": 1, "pairs.cka_samples": 200})
    with pytest.raises(FileNotFoundError, match="not trained yet"):
        run_pair(cfg_a, cfg_b, True, ctx)
    for cfg in (cfg_a, cfg_b):
        run_trial(cfg, ctx)

    row = run_pair(cfg_b, cfg_a, True, ctx)  # order does not matter
    assert row["status"] == "ok" and (row["seed_a"], row["seed_b"]) == (0, 1)
    assert math.isfinite(row["mc"]) and math.isfinite(row["mc_loss"])
    assert 0.0 < row["cka_softmax"] <= 1.0 and row["l2_distance"] > 0
    similarity_only = run_pair(cfg_a, cfg_b, False, ctx)
    assert math.isnan(similarity_only["mc"]) and similarity_only["cka_logits"] == row["cka_logits"]

    sweep = load_sweep(str(storage))
    assert len(sweep.pairs) == 2 and set(sweep.pairs["with_mc"]) == {True, False}
    assert {"width", "batch_size", "cell_key", "trial_key_a", "trial_key_b"} <= set(sweep.pairs.columns)
    curve = sweep.curves[sweep.curves["kind"] == "bezier"]
    assert len(curve) == 5 * 2 and sorted(set(curve["t"])) == [0.0, 0.25, 0.5, 0.75, 1.0]
    train = curve[curve["split"] == "train"].sort_values("t")
    assert mode_connectivity(train["err"].tolist()) == pytest.approx(row["mc"])

    # Done pairs are skipped; a curve written before a crash is reused, not refitted.
    pair_file = storage / "pairs" / f"{row['pair_key']}.parquet"
    stamp = pair_file.stat().st_mtime_ns
    assert run_pair(cfg_a, cfg_b, True, ctx)["written_at"] == row["written_at"]
    assert pair_file.stat().st_mtime_ns == stamp
    pair_file.unlink()
    resumed = run_pair(cfg_a, cfg_b, True, ctx)
    assert resumed["curve_reused"] and resumed["mc"] == pytest.approx(row["mc"])


def test_pair_with_a_diverged_model_is_recorded_not_retried(tiny, tmp_path):
    ctx = RunContext(storage=str(tmp_path), sweep="pairs-test", threads=1)
    cfg_a, cfg_b = _configs(tiny, lr=1e6, epochs=1, milestones=[1])
    rows = [run_trial(c, ctx) for c in (cfg_a, cfg_b)]
    assert {r["status"] for r in rows} == {"diverged"}
    row = run_pair(cfg_a, cfg_b, True, ctx)
    assert row["status"] == "diverged" and "seed 0, 1" in row["error"]
    assert math.isnan(row["cka_softmax"]) and not (tmp_path / "curves").exists()
