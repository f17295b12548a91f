"""Hessian estimators against exact answers: a dense Hessian of a small model, PyHessian,
and quadratics with a known trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from tests.helpers import fit_full_batch, metric_context
from workers.base.data import DataConfig, prepare
from workers.catalog import TrialConfig
from workers.core.errors import ConfigError
from workers.core.records import to_table
from workers.metrics.common import fixed_subset
from workers.metrics.hessian import (
    HessianOperator,
    HessianOptions,
    affine_batchnorm,
    density,
    hutchinson,
    lanczos,
    measure,
    spectrum,
)

N_SAMPLES = 256


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10))


@pytest.fixture(scope="module")
def problem():
    """A small trained model, its samples and its exact dense Hessian (float64 eigen-solve)."""
    splits = prepare(DataConfig(dataset="digits"))
    x, y = fixed_subset(splits.x_train, splits.y_train, N_SAMPLES, seed=0)  # what `measure` uses
    model = fit_full_batch(small_mlp(), x, y, steps=200, lr=0.5)
    dense = dense_hessian(model, x, y)
    return splits, model, x, y, dense, torch.linalg.eigvalsh(dense.double())


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The exact Hessian of the mean cross-entropy w.r.t. all parameters, flattened in
    parameter order, by `torch.func.hessian` on the model's own forward."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, [p.numel() for p in params])
        weights = {n: c.view_as(p) for n, c, p in zip(names, parts, params)}
        return F.cross_entropy(functional_call(model, weights, (x,)), y)

    return torch.func.hessian(loss)(torch.cat([p.reshape(-1) for p in params]))


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_products_match_the_dense_hessian_with_one_or_many_chunks(problem):
    _, model, x, y, dense, _ = problem
    v = torch.randn(dense.shape[0], generator=torch.Generator().manual_seed(0))
    expected = dense @ v
    for chunk in (N_SAMPLES, 100):  # retained graph / rebuilt per chunk (bounded memory)
        got = HessianOperator(model, list(model.parameters()), x, y, chunk)(v)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), chunk


def test_products_through_batchnorm_match_the_dense_hessian_of_the_unchanged_model(problem):
    """HVPs run eval-mode BatchNorm as an explicit affine map (cheaper to differentiate
    twice); the dense Hessian here goes through `batch_norm` itself."""
    splits, _, x, y, _, _ = problem
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 10))
    model = fit_full_batch(model, x.view(-1, 1, 8, 8), y, steps=20, lr=0.1)  # non-trivial running stats
    images = x.view(-1, 1, 8, 8)
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    expected = dense_hessian(model, images, y) @ v
    got = HessianOperator(model, list(model.parameters()), images, y, N_SAMPLES)(v)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert all("forward" not in vars(m) for m in model.modules())  # the model's own forward is back
    norm, plain = model[1], model(images)
    with affine_batchnorm(model):
        assert "forward" in vars(norm)  # the layer really runs as the affine map here
        assert torch.allclose(model(images), plain, atol=1e-5)
        with affine_batchnorm(model):  # nesting leaves the outer patch in place
            pass
        assert "forward" in vars(norm)
    assert "forward" not in vars(norm)


def test_top_eigenvalues_match_the_exact_dense_hessian(problem):
    _, model, x, y, _, exact = problem
    for start in ("gradient", "random"):
        options = HessianOptions(top_k=3, start=start)
        operator = HessianOperator(model, list(model.parameters()), x, y, 1024)
        result = spectrum(operator, options, torch.Generator().manual_seed(0))
        assert result.krylov.converged
        for got, want in zip(result.krylov.eigenvalues, exact.flip(0)[:3].tolist()):
            assert relative(got, want) < 1e-3, (start, got, want)
        assert result.krylov.hvps < 60  # far fewer than the 910 a dense Hessian needs


def test_trace_lies_within_three_standard_errors_of_the_exact_trace(problem):
    _, model, x, y, _, exact = problem
    for deflate in (True, False):
        options = HessianOptions(trace_probes=30, trace_deflate=deflate)
        operator = HessianOperator(model, list(model.parameters()), x, y, 1024)
        trace = spectrum(operator, options, torch.Generator().manual_seed(1)).trace
        assert abs(trace.value - exact.sum().item()) <= 3 * trace.stderr, deflate


def test_top_eigenvalue_agrees_with_pyhessian(problem):
    from pyhessian import hessian

    _, model, x, y, _, _ = problem
    theirs_model = small_mlp()
    theirs_model.load_state_dict(model.state_dict())
    torch.manual_seed(0)  # PyHessian draws its start vector from the global generator
    theirs = hessian(theirs_model, nn.CrossEntropyLoss(), data=(x, y), cuda=False).eigenvalues(top_n=1)[0][0]
    operator = HessianOperator(model, list(model.parameters()), x, y, 1024)
    ours = spectrum(operator, HessianOptions(trace_probes=0), torch.Generator().manual_seed(0))
    assert relative(ours.krylov.eigenvalues[0], theirs) < 1e-2


def test_hutchinson_mean_on_a_quadratic_with_known_trace():
    """H = Q diag(lambda) Q^T with a few outliers, like a network's Hessian."""
    generator = torch.Generator().manual_seed(0)
    dim = 400
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    spectrum_ = torch.cat([torch.tensor([80.0, 40.0, 20.0], dtype=torch.float64),
                           torch.randn(dim - 3, generator=generator, dtype=torch.float64).abs()])
    h = q @ torch.diag(spectrum_) @ q.T
    like = torch.empty(dim, dtype=torch.float64)
    plain = hutchinson(lambda v: h @ v, like, generator, max_probes=50, min_probes=50)
    assert plain.probes == 50
    assert abs(plain.value - spectrum_.sum().item()) <= 3 * plain.stderr
    krylov = lanczos(lambda v: h @ v, torch.randn(dim, generator=generator, dtype=torch.float64), max_iter=10)
    deflated = hutchinson(lambda v: h @ v, like, generator, max_probes=50, min_probes=50,
                          basis=krylov.basis, basis_trace=krylov.basis_trace)
    assert abs(deflated.value - spectrum_.sum().item()) <= 3 * deflated.stderr
    assert deflated.stderr < 0.5 * plain.stderr  # the outliers no longer add variance


def test_hutchinson_stops_at_the_requested_standard_error():
    h = torch.diag(torch.linspace(1.0, 2.0, 100, dtype=torch.float64))
    like = torch.empty(100, dtype=torch.float64)
    estimate = hutchinson(lambda v: h @ v, like, torch.Generator().manual_seed(0), max_probes=500,
                          min_probes=4, tol=0.01)
    assert 4 <= estimate.probes < 500 and estimate.stderr <= 0.01 * abs(estimate.value)


def test_density_is_a_histogram_of_the_spectrum():
    eigenvalues = torch.cat([torch.full((50,), 1.0), torch.full((50,), 5.0)]).double()
    h = torch.diag(eigenvalues)
    edges, mass = density(lambda v: h @ v, torch.empty(100, dtype=torch.float64),
                          torch.Generator().manual_seed(0), runs=4, steps=10, bins=4)
    assert mass.sum() == pytest.approx(1.0)
    assert edges[0] == pytest.approx(1.0) and edges[-1] == pytest.approx(5.0)
    assert mass[0] == pytest.approx(0.5, abs=0.2) and mass[-1] == pytest.approx(0.5, abs=0.2)


def test_group_and_density_rows_share_one_record_file(problem):
    splits, model, _, _, dense, _ = problem
    options = HessianOptions(n_samples=N_SAMPLES, groups=("3",), trace_probes=0, density_runs=1,
                             density_steps=8, density_bins=5)
    result = measure(model, options, metric_context(splits, model.state_dict(), small_mlp))
    to_table(result.curves)  # one schema for both kinds of row, no None
    histogram = [r for r in result.curves if r["kind"] == "hessian_density"]
    assert len(histogram) == 5 and sum(r["mass"] for r in histogram) == pytest.approx(1.0)
    assert result.scalars["density_hvps"] == 8
    (row,) = [r for r in result.curves if r["kind"] == "hessian_group"]
    assert row["group"] == "3" and row["n_params"] == 12 * 10 + 10
    head = slice(dense.shape[0] - 130, dense.shape[0])  # the last Linear's weight and bias
    block_top = torch.linalg.eigvalsh(dense[head, head].double())[-1].item()
    assert relative(row["top_eigenvalue"], block_top) < 1e-3
    assert np.isnan(row["trace"]) and result.scalars["samples_used"] == N_SAMPLES
    # `hessian_<scalar>` columns must not shadow the `hessian_<option>` config columns
    assert not set(result.scalars) & set(HessianOptions.__dataclass_fields__)


@pytest.mark.parametrize("key, value", [
    ("hessian.start", "power"), ("hessian.tol", 0), ("hessian.n_samples", 0), ("hessian.groups", "stage,stage"),
])
def test_bad_options_name_the_field(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        TrialConfig.from_flat({key: value})
