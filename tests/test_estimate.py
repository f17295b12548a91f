"""The cost estimate (sweeps.preflight.estimate): FLOP counts, step counts, the fit, and a real
timed run on a tiny digits grid checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from sweeps.preflight.estimate import (
    StepModel,
    _training_seconds,
    estimate,
    fit_step_model,
    forward_flops,
    forward_macs,
    metric_samples,
    step_flops,
    steps_per_trial,
)
from sweeps.run.spec import SweepSpec
from workers.catalog import TrialConfig
from workers.packing.policy import PackPolicy, plan_packs

TINY_GRID = {
    "dataset": "digits", "model": "resnet18k", "width": [2, 4], "batch_size": [32, 128], "seed": [0, 1],
    "epochs": 2, "milestones": [1], "lr": 0.05, "metrics": ["hessian", "interpolation"], "measure_pairs": True,
}


def tiny_trials() -> list[TrialConfig]:
    return SweepSpec(study="taxonomy", preset="demo", name="t", storage="/tmp/unused", values=TINY_GRID).trials()


def test_steps_per_trial_is_epochs_times_full_batches() -> None:
    cfg = TrialConfig.from_flat({"dataset": "digits", "batch_size": 32, "epochs": 2, "milestones": [1]})
    assert steps_per_trial(cfg) == 2 * (1437 // 32) == 88  # the last partial batch is dropped
    half = TrialConfig.from_flat({"dataset": "digits", "batch_size": 128, "epochs": 3, "milestones": [1],
                                  "data_fraction": 0.5})
    assert steps_per_trial(half) == 3 * (round(0.5 * 1437) // 128) == 15


def test_forward_macs_match_the_standard_resnet18() -> None:
    """Width 64 on CIFAR-10 is the standard ResNet18: 0.556 GMACs per image (published
    figure for the CIFAR variant with a 3x3 stem and no max-pool)."""
    assert forward_macs("resnet18k", 64, (3, 32, 32), 10) == pytest.approx(0.5554e9, rel=0.01)


@pytest.mark.parametrize("dataset,width", [("cifar10", 8), ("cifar10", 32), ("digits", 8)])
def test_flops_grow_with_the_square_of_the_width(dataset: str, width: int) -> None:
    small = TrialConfig.from_flat({"dataset": dataset, "width": width})
    large = TrialConfig.from_flat({"dataset": dataset, "width": 2 * width})
    assert forward_flops(large) / forward_flops(small) == pytest.approx(4.0, rel=0.1)


def test_step_flops_scale_with_batch_and_members() -> None:
    cfg = TrialConfig.from_flat({"dataset": "cifar10", "width": 4, "batch_size": 64})
    assert step_flops(cfg) == pytest.approx(3 * 64 * forward_flops(cfg))
    assert step_flops(cfg, members=5) == pytest.approx(5 * step_flops(cfg))
    assert step_flops(cfg, batch_size=128) == pytest.approx(2 * step_flops(cfg))


def test_metric_samples_count_evaluation_hessian_and_interpolation_passes() -> None:
    base = {"dataset": "digits", "epochs": 2, "milestones": [1]}
    evaluation = 1437 + 360  # final evaluation of both splits
    hessian = TrialConfig.from_flat({**base, "metrics": ["hessian"]})
    # 256 samples: one gradient (3 passes) and 10 Lanczos + 4 trace HVPs of 2 training passes each
    assert metric_samples(hessian) == (evaluation + 256 * 3 * (1 + 2 * 14), [])
    layers = TrialConfig.from_flat({**base, "metrics": ["interpolation", "surface"], "interpolation.groups": ["stage"]})
    # interpolation: 21 full-path points + 6 stages (stem, 4 stages, head) x 11 points; surface: theta_T,
    # 21 points of the 1D slice and 11 x 11 of the 2D one; each on 256 train and 256 test samples
    assert metric_samples(layers) == (evaluation + (21 + 6 * 11) * 2 * 256 + (1 + 21 + 11 * 11) * 2 * 256, [])
    one_slice = TrialConfig.from_flat({**base, "metrics": ["surface"], "surface.dims": [1]})
    assert metric_samples(one_slice) == (evaluation + (1 + 21) * 2 * 256, [])


def test_fit_recovers_a_line_and_keeps_coefficients_non_negative() -> None:
    flops = [1e8, 1e9, 5e9, 2e10]
    exact = fit_step_model(flops, [0.004 + 0.03 * f / 1e9 for f in flops])
    assert exact.overhead_s == pytest.approx(0.004, rel=1e-6)
    assert exact.s_per_gflop == pytest.approx(0.03, rel=1e-6)
    # time falling with FLOPs would need a negative slope: clamped to an overhead-only fit
    clamped = fit_step_model(flops, [0.05, 0.04, 0.03, 0.02])
    assert clamped.overhead_s > 0 and clamped.s_per_gflop == 0.0


@pytest.fixture(scope="module")
def tiny_estimate():
    threads = torch.get_num_threads()
    result = estimate(tiny_trials(), PackPolicy.parse("auto", "cpu"), "cpu", budget_s=12)
    assert torch.get_num_threads() == threads  # restored after timing on one thread
    return result


def test_tiny_grid_is_timed_within_budget_and_fitted(tiny_estimate) -> None:
    e = tiny_estimate
    kinds = [t.shape.kind for t in e.timings]
    assert kinds.count("solo") >= 2 and kinds.count("packed") >= 2 and kinds.count("bezier") >= 1
    assert all(t.shape.members == 2 for t in e.timings if t.shape.kind == "packed")  # 2 seeds per cell
    assert e.wall_s < 30
    for t in e.timings:
        if t.shape.kind != "bezier":  # the Bezier model borrows the solo slope: looser
            fitted = e.models[t.shape.kind].seconds(t.shape.flops)
            assert abs(fitted - t.seconds) / t.seconds < 0.5, t
    assert e.models["bezier"].s_per_gflop == e.models["solo"].s_per_gflop
    assert all(m.overhead_s >= 0 and m.s_per_gflop >= 0 for m in e.models.values())


def test_projection_matches_a_hand_computation(tiny_estimate) -> None:
    e, trials = tiny_estimate, tiny_trials()
    solo_model, packed_model = e.models["solo"], e.models["packed"]
    per_sample = {t.model.width: forward_flops(t) for t in trials}
    solo_s = sum(2 * (1437 // t.train.batch_size) * solo_model.seconds(3 * t.train.batch_size
                                                                       * per_sample[t.model.width])
                 for t in trials)
    plans = plan_packs(trials, PackPolicy.parse("auto", "cpu"))
    assert [len(p.members) for p in plans] == [2, 2, 2, 2]
    packed_s = sum(2 * (1437 // p.members[0].train.batch_size)
                   * packed_model.seconds(2 * 3 * p.members[0].train.batch_size * per_sample[p.members[0].model.width])
                   for p in plans)
    training = next(v for k, v in e.parts.items() if k.startswith("training"))
    assert training == pytest.approx((packed_s, solo_s), rel=1e-9)
    others = [v for k, v in e.parts.items() if not k.startswith("training")]
    assert len(others) == 2 and all(p == s > 0 for p, s in others)  # metrics, pairs: per model either way
    packed_h, solo_h = e.total_hours()
    assert packed_h == pytest.approx(sum(p for p, _ in e.parts.values()) / 3600)
    assert 0 < packed_h <= 1.5 * solo_h and math.isfinite(solo_h)


def test_printout_names_the_device_unit_and_every_timed_shape(tiny_estimate) -> None:
    text = tiny_estimate.format()
    assert "CPU-hours" in text and "solo / packed" in text
    assert "s/GFLOP" in text and "ms +" in text
    table = [line for line in text.splitlines() if line.strip().startswith(("solo ", "packed ", "bezier "))
             and "%" in line]
    assert len(table) == len(tiny_estimate.timings)


def test_policy_off_projects_packed_as_solo() -> None:
    trials = tiny_trials()
    plans = plan_packs(trials, PackPolicy.parse("off", "cpu"))
    assert all(len(p.members) == 1 for p in plans)
    packed_s, solo_s = _training_seconds(trials, plans, StepModel(0.01, 0.1), None)
    assert packed_s == pytest.approx(solo_s) and solo_s > 0
