"""Random-direction loss surfaces: filter normalisation, seeding, and the curve rows."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.helpers import fit_full_batch, metric_context
from workers.base.data import DataConfig, prepare
from workers.catalog import TrialConfig
from workers.core.errors import ConfigError
from workers.metrics.common import fixed_subset
from workers.metrics.surface import SurfaceOptions, filter_normalised, measure
from workers.training.train import evaluate


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


@pytest.fixture(scope="module")
def trained():
    splits = prepare(DataConfig(dataset="digits"))
    model = fit_full_batch(small_net(), splits.x_train[:512], splits.y_train[:512], steps=40, lr=0.1)
    return splits, model


def test_filter_normalised_directions_match_each_filter_norm():
    weights = {"conv": torch.randn(4, 3, 3, 3) * torch.tensor([0.1, 1.0, 5.0, 0.0]).view(4, 1, 1, 1),
               "bias": torch.randn(4)}
    d = filter_normalised(weights, torch.Generator().manual_seed(0), "zero")
    norms = d["conv"].flatten(1).norm(dim=1)
    assert torch.allclose(norms, weights["conv"].flatten(1).norm(dim=1), atol=1e-6)
    assert torch.equal(d["bias"], torch.zeros(4))
    whole = filter_normalised(weights, torch.Generator().manual_seed(0), "filter")["bias"]
    assert whole.norm().item() == pytest.approx(weights["bias"].norm().item(), rel=1e-6)
    again = filter_normalised(weights, torch.Generator().manual_seed(0), "zero")
    other = filter_normalised(weights, torch.Generator().manual_seed(1), "zero")
    assert torch.equal(d["conv"], again["conv"]) and not torch.equal(d["conv"], other["conv"])


def test_slices_are_stored_as_curve_rows_centred_on_the_trained_model(trained):
    splits, model = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = SurfaceOptions(points=5, points_2d=3, span=0.5, eval_samples=200)
    result = measure(model, options, metric_context(splits, {}, small_net))

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    one = [r for r in result.curves if r["kind"] == "surface1d"]
    two = [r for r in result.curves if r["kind"] == "surface2d"]
    assert len(one) == 5 * 2 and len(two) == 3 * 3 * 2  # points x (train, test)
    assert sorted({r["t"] for r in one}) == [-0.5, -0.25, 0.0, 0.25, 0.5]
    assert all(math.isnan(r["t2"]) for r in one) and {r["t2"] for r in two} == {-0.5, 0.0, 0.5}
    assert all(v is not None for r in result.curves for v in r.values())

    x, y = fixed_subset(splits.x_train, splits.y_train, 200, seed=0)
    centre = next(r for r in one if r["t"] == 0.0 and r["split"] == "train")
    assert (centre["loss"], centre["accuracy"]) == evaluate(model, x, y)
    rises = [r["loss"] - centre["loss"] for r in one if r["split"] == "train"]
    assert result.scalars["train_max_rise_1d"] == pytest.approx(max(rises)) and max(rises) > 0
    assert not set(result.scalars) & set(SurfaceOptions.__dataclass_fields__)  # column names


def test_same_seed_same_surface_other_seed_other_surface(trained):
    splits, model = trained
    context = metric_context(splits, {}, small_net)

    def losses(seed: int) -> list[float]:
        options = SurfaceOptions(dims=(1,), points=3, eval_samples=100, direction_seed=seed)
        return [r["loss"] for r in measure(model, options, context).curves]

    assert losses(0) == losses(0) and losses(0) != losses(1)


@pytest.mark.parametrize("key, value", [
    ("surface.dims", "3"), ("surface.span", 0), ("surface.points", 1), ("surface.bias_bn", "keep"),
])
def test_bad_options_name_the_field(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        TrialConfig.from_flat({key: value})
