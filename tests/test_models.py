"""Models: the published parameter count and a forward pass for every registered model."""

from __future__ import annotations

import pytest
import torch

from workers.base.models import MODELS, build_model, n_parameters


def test_resnet18_width_64_has_the_standard_parameter_count():
    assert n_parameters(build_model("resnet18k", 64, (3, 32, 32), 10)) == 11_173_962


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_every_model_maps_a_batch_to_logits(name, shape):
    model = build_model(name, 4, shape, 10)
    assert model(torch.randn(5, *shape)).shape == (5, 10)


def test_width_scales_the_resnet_quadratically():
    small, large = (n_parameters(build_model("resnet18k", w, (3, 32, 32), 10)) for w in (8, 16))
    assert 3.5 < large / small < 4.1
