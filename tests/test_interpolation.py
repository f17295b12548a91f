"""Interpolation between theta_0 and theta_T: exact end points, monotone paths on a convex
problem, layer-wise paths that leave the other parameters bit-identical, parameter groups,
and the whole record path from `run_trial` to `analysis.load_sweep`."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.helpers import fit_full_batch, metric_context
from workers.base.data import DataConfig, Splits, prepare
from workers.base.models import build_model
from workers.catalog import TrialConfig
from workers.core.errors import ConfigError
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial
from workers.metrics.common import EvalSets, fixed_subset, parameter_groups, state_keys
from workers.metrics.paths import (
    InterpolationOptions,
    PathEvaluator,
    PathShape,
    alpha_grid,
    measure,
    write_path_state,
)
from workers.training.train import evaluate


@pytest.fixture(scope="module")
def digits() -> Splits:
    return prepare(DataConfig(dataset="digits"))


def resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18k", 2, (1, 8, 8), 10)


@pytest.fixture(scope="module")
def trained_resnet(digits):
    """A width-2 resnet18k with BatchNorm, trained a little; its theta_0 state."""
    model = resnet()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    return fit_full_batch(model, digits.x_train[:256], digits.y_train[:256], steps=10, lr=0.1), init


def path_state(init, final, alpha, moving, base):
    """The path's state at `alpha`, written into fresh tensors."""
    target = {k: torch.full_like(v, 7) for k, v in final.items()}
    write_path_state(target, init, final, alpha, moving, base)
    return target


def test_alpha_grid_holds_both_end_points_exactly():
    assert alpha_grid(21)[0] == 0.0 and alpha_grid(21)[-1] == 1.0 and len(alpha_grid(21)) == 21
    extended = alpha_grid(5, extend=0.5)
    assert extended == [-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]


def test_path_shape_scalars():
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    down = PathShape.of(alphas, [2.0, 1.5, 1.0, 0.5, 0.1], tol=1e-3)
    assert down.monotone and down.max_bump == 0.0 and down.argmax_alpha == 0.0
    bumpy = PathShape.of(alphas, [2.0, 1.0, 1.8, 0.5, 0.1], tol=1e-3)
    assert not bumpy.monotone
    assert bumpy.max_bump == pytest.approx(0.8)  # 1.8 minus the running minimum 1.0
    assert bumpy.barrier == pytest.approx(1.8 - (0.5 * 2.0 + 0.5 * 0.1))
    peak = PathShape.of(alphas + [1.25], [1.0, 3.0, 2.0, 1.0, 0.5, 9.0], tol=1e-3)
    assert peak.argmax_alpha == 0.25  # points beyond [0, 1] do not count


def test_end_points_reproduce_initial_and_final_losses_exactly(digits, trained_resnet):
    model, init = trained_resnet
    options = InterpolationOptions(points=3, groups=(), eval_samples=300)
    result = measure(model, options, metric_context(digits, init, resnet))
    xs, ys = fixed_subset(digits.x_train, digits.y_train, 300, options.eval_seed)
    initial = resnet(seed=1)
    initial.load_state_dict(init)
    curve = {r["t"]: r for r in result.curves if r["kind"] == "interp_full" and r["split"] == "train"}
    assert (curve[0.0]["loss"], curve[0.0]["accuracy"]) == evaluate(initial, xs, ys)
    assert (curve[1.0]["loss"], curve[1.0]["accuracy"]) == evaluate(model, xs, ys)
    assert curve[0.0]["loss"] != curve[1.0]["loss"]


def test_full_path_is_monotone_on_a_convex_problem(digits):
    """Logistic regression: the loss is convex in the weights and training ends near the
    minimum, so the loss decreases all the way from theta_0 to theta_T."""
    def linear() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    torch.manual_seed(0)
    model = linear()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    fit_full_batch(model, digits.x_train, digits.y_train, steps=300, lr=0.5)
    result = measure(model, InterpolationOptions(groups=()), metric_context(digits, init, linear))
    assert result.scalars["train_monotone"] and result.scalars["test_monotone"]
    assert result.scalars["train_argmax_alpha"] == 0.0
    assert not set(result.scalars) & set(InterpolationOptions.__dataclass_fields__)  # column names
    train = [r["loss"] for r in result.curves if r["split"] == "train"]
    assert train[-1] < 0.5 * train[0]


def test_layerwise_path_keeps_every_other_entry_bit_identical(trained_resnet):
    model, init = trained_resnet
    final = model.state_dict()
    groups = parameter_groups(model, ("stage",), "interpolation.groups")
    moving = state_keys(model, groups["stages.1"])
    for alpha in (0.0, 0.3, 1.0):
        state = path_state(init, final, alpha, moving, final)
        for key, value in state.items():
            if key in moving and value.is_floating_point():
                expected = (1 - alpha) * init[key] + alpha * final[key]
                assert torch.equal(value, expected), key
            else:
                assert torch.equal(value, final[key]) and value.dtype == final[key].dtype, key
    assert "stages.1.0.bn1.running_mean" in moving  # BatchNorm statistics move with their layer
    assert not any(k.startswith("stages.2") for k in moving)
    mirror = path_state(init, final, 0.5, moving, init)
    assert all(torch.equal(mirror[k], init[k]) for k in final if k not in moving)


def test_a_working_model_with_other_state_entries_is_refused(digits, trained_resnet):
    """Points are written into the working model's own tensors; a model whose entries
    differ (here: no BatchNorm) would silently keep some of its own values."""
    model, init = trained_resnet
    sets = EvalSets.from_splits(digits, 32, 0, 1024)
    other = build_model("resnet18k", 2, (1, 8, 8), 10, batchnorm=False)
    with pytest.raises(ValueError, match="bn1.running_mean"):
        PathEvaluator(other, sets, False, init, model.state_dict())


def test_paths_evaluate_each_shared_end_model_once(digits, trained_resnet, monkeypatch):
    """A layer-wise path with the others at theta_T ends at theta_T bit for bit, a mirror
    path starts at theta_0: those points reuse the full path's evaluations."""
    model, init = trained_resnet
    final = model.state_dict()
    for members in parameter_groups(model, ("stage",), "interpolation.groups").values():
        moving = state_keys(model, members)
        assert all(torch.equal(a, b) for a, b in zip(path_state(init, final, 1.0, moving, final).values(),
                                                     final.values()))
        assert all(torch.equal(a, init[k]) for k, a in path_state(init, final, 0.0, moving, init).items()
                   if a.is_floating_point())
    evaluations = []
    evaluate_sets = EvalSets.evaluate
    monkeypatch.setattr(EvalSets, "evaluate", lambda sets, m: evaluations.append(m) or evaluate_sets(sets, m))
    options = InterpolationOptions(points=3, group_points=3, groups=("stage",), others_at=("final", "init"),
                                   eval_samples=100)
    result = measure(model, options, metric_context(digits, init, resnet))
    assert len(evaluations) == 3 + 6 * 2 + 6 * 2  # full path; 6 stages x 2 new points, twice
    full = {r["t"]: r["loss"] for r in result.curves if r["kind"] == "interp_full" and r["split"] == "train"}
    for kind, alpha in (("interp_group", 1.0), ("interp_group_mirror", 0.0)):
        ends = {r["loss"] for r in result.curves if r["kind"] == kind and r["split"] == "train" and r["t"] == alpha}
        assert ends == {full[alpha]}, kind


def test_parameter_groups_by_stage_block_module_and_pattern():
    model = resnet()
    names = [n for n, p in model.named_parameters()]
    stages = parameter_groups(model, ("stage",), "f")
    assert list(stages) == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]
    assert sorted(n for members in stages.values() for n in members) == sorted(names)
    blocks = parameter_groups(model, ("block",), "f")
    assert list(blocks)[:3] == ["stem", "stages.0.0", "stages.0.1"] and len(blocks) == 10
    modules = parameter_groups(model, ("module",), "f")
    assert modules["head"] == ["head.weight", "head.bias"] and "stages.1.0.shortcut.0" in modules
    assert parameter_groups(model, ("stages.3.*",), "f")["stages.3.*"] == [n for n in names if n.startswith("stages.3.")]
    mlp = build_model("mlp", 4, (1, 8, 8), 10)
    assert list(parameter_groups(mlp, ("stage",), "f")) == ["1", "3", "5"]
    with pytest.raises(ConfigError, match="interpolation.groups"):
        parameter_groups(model, ("stgae",), "interpolation.groups")


def test_recomputed_batchnorm_statistics_change_the_curve(digits, trained_resnet):
    model, init = trained_resnet
    context = metric_context(digits, init, resnet)
    kept = measure(model, InterpolationOptions(points=3, groups=(), eval_samples=256), context)
    fresh = measure(model, InterpolationOptions(points=3, groups=(), eval_samples=256, bn_stats="recompute"),
                    context)
    loss = {run: [r["loss"] for r in result.curves if r["split"] == "train"]
            for run, result in (("kept", kept), ("fresh", fresh))}
    assert loss["kept"][1] != loss["fresh"][1] and all(math.isfinite(v) for v in loss["fresh"])


@pytest.mark.parametrize("key, value", [
    ("interpolation.bn_stats", "average"), ("interpolation.points", 1),
    ("interpolation.others_at", "middle"), ("interpolation.groups", "stage,stage"),
])
def test_bad_options_name_the_field(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        TrialConfig.from_flat({key: value})


def test_run_trial_records_metrics_that_load_sweep_reads(tiny, tmp_path):
    from analysis.load import load_sweep

    tiny.update({"metrics": ["hessian", "interpolation"], "hessian.n_samples": 128, "hessian.groups": "head",
                 "interpolation.points": 5, "interpolation.group_points": 3, "interpolation.eval_samples": 128,
                 "interpolation.groups": "stage", "interpolation.others_at": "final,init"})
    cfg = TrialConfig.from_flat(tiny)
    row = run_trial(cfg, RunContext(storage=str(tmp_path / "sweep"), sweep="t"))
    assert row["hessian_top_eigenvalue"] > 0 and row["hessian_eig_hvps"] >= 1

    sweep = load_sweep(str(tmp_path / "sweep"))
    trial = sweep.trials.iloc[0]
    for column in ("hessian_top_eigenvalue", "hessian_trace", "hessian_trace_se", "hessian_eig_hvps",
                   "interpolation_train_monotone", "interpolation_train_barrier",
                   "interpolation_group_max_train_barrier"):
        assert column in sweep.trials.columns and trial[column] == row[column], column
    kinds = sweep.curves.groupby("kind").size()
    assert kinds["interp_full"] == 5 * 2  # 5 points x (train, test)
    assert kinds["interp_group"] == kinds["interp_group_mirror"] == 6 * 3 * 2  # 6 stages
    assert kinds["hessian_group"] == 1
    full = sweep.curves[sweep.curves["kind"] == "interp_full"]
    assert set(full["split"]) == {"train", "test"} and full["t2"].isna().all()
    assert sweep.curves[sweep.curves["kind"] == "hessian_group"]["group"].tolist() == ["head"]
