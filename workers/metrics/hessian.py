"""Hessian of the mean training loss: top eigenvalues, trace, spectral density.

The taxonomy paper (Yang et al. 2021) measured the top eigenvalue by power iteration and
the trace by plain Hutchinson (PyHessian), on one batch of 200 samples. We keep the
quantities and make them cheaper and better defined:

- Top-k eigenvalues by Lanczos with full reorthogonalisation. A Krylov space of m
  Hessian-vector products (HVPs) holds the best polynomial of degree m in H, where power
  iteration uses only H^m, so Lanczos needs fewer HVPs, most of all when the top of the
  spectrum is crowded; starting from the gradient (plus a random part) saves a few more.
  It stops when each Ritz value theta has residual ||H y - theta y|| <= tol * |theta|:
  then an eigenvalue lies within that distance, and in practice within about
  residual^2 / gap (Parlett, The Symmetric Eigenvalue Problem, ch. 11). PyHessian stops
  when the estimate "changed by less than tol since the last step", which bounds nothing.
- Trace by Hutchinson with Rademacher probes on the part of H outside the Lanczos basis
  Q: tr(H) = tr(Q^T H Q) + E[z^T P H P z], P = I - Q Q^T. The first term is exact (the
  sum of the Lanczos diagonal), so the outlier eigenvalues that dominate the variance of
  plain Hutchinson cost no probes ("deflated Hutchinson", cf. Hutch++, Meyer et al.
  2021). The standard error is reported; `trace_deflate=False` gives plain Hutchinson.
- Optional spectral density by stochastic Lanczos quadrature, stored as a histogram.

HVPs are taken w.r.t. all trainable parameters (or one group of them), model in eval mode
(BatchNorm uses its running statistics, run as the explicit affine map it then is, whose
double backward is cheaper than `batch_norm`'s), over a fixed seeded subset of training
samples processed in chunks, so memory is that of one chunk's double-backward graph.

Defaults are sized for the cost budget of a sweep (Hessian + interpolation about a
quarter of the training on average): 256 samples, Lanczos to residual 1e-2 (3-9 HVPs on the demo
models), 4 trace probes. Measured on the taxonomy demo models (resnet18k widths 2-16 on
digits, 12 epochs, 1 CPU thread), both metrics with their defaults (no layer-wise paths)
cost 8-25% of the training time at batch 32 and 26-40% at batch 128 (where training is
cheapest), 24% on average; the Hessian's share is 15-23% at batch 128. 256 samples
fit one chunk, so the gradient graph is built once and reused by every HVP; paper-scale
runs on a GPU can raise `hessian.n_samples` (e.g. 1000) and `hessian.chunk_size`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from workers.base.footprint import TRAIN_PASSES, Need
from workers.core.config import Section, TrialConfig, option, section
from workers.core.errors import ConfigError
from workers.metrics import METRICS, Cost, Measurement, MetricContext
from workers.metrics.common import (
    NAN,
    check_group_specs,
    curve_row,
    fixed_subset,
    group_count,
    parameter_groups,
    same_columns,
    trainable,
)

MatVec = Callable[[torch.Tensor], torch.Tensor]

# The cost model's two assumptions (`--estimate`), where counting cannot settle them.
HVP_PASSES = 2  # one Hessian-vector product ~ two training passes (double backward)
LANCZOS_STEPS = 10  # HVPs per top eigenvalue (5-8 measured at tol 1e-2, above; max_iter caps it)


@section("hessian", prefix="hessian", training=False)
@dataclass(frozen=True)
class HessianOptions(Section):
    n_samples: int = option(256, ge=1)  # training samples (fixed subset; capped at the training-set size)
    sample_seed: int = option(0, ge=0)  # chooses the subset; the same for every model of a sweep
    chunk_size: int = option(1024, ge=1)  # samples per double-backward graph: bounds memory
    top_k: int = option(1, ge=1)  # eigenvalues from the top of the spectrum
    max_iter: int = option(100, ge=1)  # Lanczos steps (HVPs) at most
    tol: float = option(1e-2, gt=0, lt=1)  # stop when each eigenvalue's residual <= tol * |eigenvalue|
    # Lanczos start: "gradient" (+ a random part) or "random"
    start: str = option("gradient", choices=("gradient", "random"))
    trace_probes: int = option(4, ge=0)  # Hutchinson probes at most; 0 skips the trace
    trace_min_probes: int = option(3, ge=0)
    trace_tol: float = option(0.02, gt=0)  # stop when the standard error <= trace_tol * |trace|
    trace_deflate: bool = True  # exact trace on the Lanczos basis, probes on the rest
    density_runs: int = option(0, ge=0)  # stochastic Lanczos quadrature runs; 0 skips the density
    density_steps: int = option(30, ge=1)  # Lanczos steps per density run
    density_bins: int = option(50, ge=1)
    groups: tuple[str, ...] = ()  # per-group Hessians: `module`, `stage`, `block` or globs
    seed: int = option(0, ge=0)  # start vectors and probes

    def check(self) -> None:
        if self.top_k > self.max_iter:
            raise ConfigError("hessian.top_k", f"{self.top_k} is more than max_iter ({self.max_iter})")
        check_group_specs(self.groups, "hessian.groups")


# ---------------------------------------------------------------- Hessian-vector products


def _affine_batchnorm_forward(norm: nn.modules.batchnorm._NormBase, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode BatchNorm written as the affine map it is: x * scale + shift, per channel."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    shift = -norm.running_mean * scale
    if norm.weight is not None:
        scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
    shape = (1, -1) + (1,) * (x.dim() - 2)  # broadcast over (N, C, ...)
    return x * scale.view(shape) + shift.view(shape)


_PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # not subclasses: their forward may differ


@contextmanager
def affine_batchnorm(model: nn.Module) -> Iterator[None]:
    """Run eval-mode BatchNorm layers as explicit products and sums while inside.

    The function and all its derivatives are unchanged, but autograd differentiates a
    product twice cheaply, while the double backward of `batch_norm` (written for training
    mode, where the batch statistics depend on the input) costs about a sixth of an HVP in
    a ResNet on the CPU. Layers without running statistics, or whose instance already has
    its own forward (e.g. inside another such block), are left alone.
    """
    patched = [m for m in model.modules() if type(m) in _PLAIN_BATCHNORMS
               and not m.training and m.running_var is not None and "forward" not in vars(m)]
    for norm in patched:
        norm.forward = partial(_affine_batchnorm_forward, norm)
    try:
        yield
    finally:
        for norm in patched:
            del norm.forward


class HessianOperator:
    """v -> H v for H the Hessian of the mean cross-entropy over (x, y) w.r.t. `params`.

    Vectors are flat (dim,) tensors in the order of `params`. With a single chunk the
    gradient's graph is built once and every product reuses it (as PyHessian does for its
    one batch); with several chunks each product rebuilds each chunk's graph in turn, so
    memory stays that of one chunk at about twice the cost per product.
    """

    def __init__(self, model: nn.Module, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor,
                 chunk_size: int) -> None:
        self.model, self.params, self.x, self.y, self.chunk_size = model, params, x, y, chunk_size
        self.dim = sum(p.numel() for p in params)
        self.calls = 0
        model.eval()
        self._graph = self._gradient(x, y) if len(y) <= chunk_size else None

    def _gradient(self, x: torch.Tensor, y: torch.Tensor, graph: bool = True) -> tuple[torch.Tensor, ...]:
        with affine_batchnorm(self.model):
            loss = F.cross_entropy(self.model(x), y)
        return torch.autograd.grad(loss, self.params, create_graph=graph, allow_unused=True,
                                   materialize_grads=True)

    def _chunks(self):
        for start in range(0, len(self.y), self.chunk_size):
            xb, yb = self.x[start : start + self.chunk_size], self.y[start : start + self.chunk_size]
            yield xb, yb, len(yb) / len(self.y)  # weight of the chunk in the mean loss

    def _flat(self, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in parts])

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [c.view_as(p) for c, p in zip(torch.split(v, [p.numel() for p in self.params]), self.params)]

    def empty(self) -> torch.Tensor:
        """An uninitialised (dim,) vector of the parameters' device and dtype."""
        return torch.empty(self.dim, device=self.params[0].device, dtype=self.params[0].dtype)

    def gradient(self) -> torch.Tensor:
        """The flat gradient of the mean loss (not counted as an HVP)."""
        if self._graph is not None:
            return self._flat(self._graph).detach()
        total = self.empty().zero_()
        for xb, yb, weight in self._chunks():
            total += weight * self._flat(self._gradient(xb, yb, graph=False))
        return total

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        vs = self._split(v)
        if self._graph is not None:
            return self._flat(self._hvp(self._graph, vs, retain=True))
        total = torch.zeros_like(v)
        for xb, yb, weight in self._chunks():
            total += weight * self._flat(self._hvp(self._gradient(xb, yb), vs, retain=False))
        return total

    def _hvp(self, grads: tuple[torch.Tensor, ...], vs: list[torch.Tensor], retain: bool) -> tuple[torch.Tensor, ...]:
        # A gradient that does not depend on the parameters (e.g. a loss linear in them)
        # has no graph and contributes nothing; autograd refuses it as an output.
        pairs = [(g, v) for g, v in zip(grads, vs) if g.requires_grad]
        return torch.autograd.grad([g for g, _ in pairs], self.params, grad_outputs=[v for _, v in pairs],
                                   retain_graph=retain, allow_unused=True, materialize_grads=True)


# ---------------------------------------------------------------- estimators


def rademacher(dim: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """A (dim,) vector of +-1, drawn on the CPU (reproducible on any device)."""
    signs = torch.randint(0, 2, (dim,), generator=generator).to(device=like.device, dtype=like.dtype)
    return signs * 2 - 1


def _orthogonalise(w: torch.Tensor, basis: Sequence[torch.Tensor]) -> torch.Tensor:
    """w minus its components along the orthonormal `basis`, Gram-Schmidt done twice
    ("twice is enough": one pass loses orthogonality in float32)."""
    for _ in range(2):
        for q in basis:
            w = w - torch.dot(q, w) * q
    return w


@dataclass(frozen=True)
class Krylov:
    """A Lanczos run: Ritz values (descending) with error bounds, and its basis."""

    eigenvalues: list[float]  # top Ritz values, largest first
    residuals: list[float]  # ||H y - theta y|| of each: an eigenvalue lies this close
    top_history: list[float]  # the largest Ritz value after each step (convergence trace)
    converged: bool
    hvps: int
    basis: list[torch.Tensor]  # orthonormal q_1..q_m with T = Q^T H Q
    basis_trace: float  # tr(Q^T H Q): the sum of T's diagonal
    nodes: np.ndarray  # all eigenvalues of T (ascending): quadrature nodes
    weights: np.ndarray  # squared first components of T's eigenvectors: quadrature weights


def _ritz(alphas: list[float], betas: list[float], beta_next: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues (ascending), eigenvectors and residual norms of the Lanczos matrix T.

    Ritz pair i has residual ||H y_i - theta_i y_i|| = beta_m |s_mi|, and some eigenvalue
    of H lies within that distance of theta_i. (The sharper r^2 / gap estimate is not
    used: a gap measured between Ritz values misses eigenvalues the Krylov space has not
    found yet, and stopped too early on clustered spectra in our tests.)
    """
    tri = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    theta, vectors = np.linalg.eigh(tri)
    return theta, vectors, abs(beta_next) * np.abs(vectors[-1])


def lanczos(matvec: MatVec, start: torch.Tensor, max_iter: int, top_k: int = 1, tol: float = 0.0) -> Krylov:
    """Lanczos with full reorthogonalisation from `start`, until the top `top_k` Ritz
    values each have a residual <= tol * |value|, the Krylov space is invariant, or
    `max_iter` HVPs were spent (tol=0: always `max_iter`, for quadrature)."""
    dim = start.numel()
    basis = [start / start.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    converged = False
    for step in range(1, min(max_iter, dim) + 1):
        w = matvec(basis[-1])
        alphas.append(float(torch.dot(basis[-1], w)))
        w = _orthogonalise(w, basis)
        beta = float(w.norm())
        theta, vectors, residuals = _ritz(alphas, betas, beta)
        history.append(float(theta[-1]))
        top = np.argsort(theta)[::-1][:top_k]  # indices of the largest, descending
        scale = max(float(np.max(np.abs(theta))), np.finfo(np.float32).tiny)
        invariant = beta <= 1e-6 * scale
        converged = step >= top_k and (invariant or bool(np.all(residuals[top] <= tol * np.abs(theta[top]))))
        if converged or step == min(max_iter, dim):
            break
        betas.append(beta)
        basis.append(w / beta)
    return Krylov(
        eigenvalues=[float(t) for t in theta[top]],
        residuals=[float(r) for r in residuals[top]],
        top_history=history,
        converged=converged,
        hvps=len(alphas),
        basis=basis,
        basis_trace=float(sum(alphas)),
        nodes=theta,
        weights=vectors[0] ** 2,
    )


@dataclass(frozen=True)
class TraceEstimate:
    value: float
    stderr: float  # standard error of the mean over probes (NaN with one probe)
    probes: int


def _stderr(samples: list[float]) -> float:
    """Standard error of the mean (NaN for a single sample)."""
    return float(np.std(samples, ddof=1)) / math.sqrt(len(samples)) if len(samples) > 1 else NAN


def hutchinson(matvec: MatVec, like: torch.Tensor, generator: torch.Generator, max_probes: int,
               min_probes: int = 2, tol: float = 0.0, basis: Sequence[torch.Tensor] = (),
               basis_trace: float = 0.0) -> TraceEstimate:
    """tr(H) = basis_trace + E[z^T P H P z] with Rademacher z and P the projector off the
    orthonormal `basis` (empty: plain Hutchinson). Stops once the standard error is at most
    tol * |estimate| after at least `min_probes` probes, or after `max_probes`."""
    samples: list[float] = []
    while len(samples) < max_probes:
        z = _orthogonalise(rademacher(like.numel(), generator, like), basis)
        samples.append(float(torch.dot(z, matvec(z))))
        estimate = basis_trace + float(np.mean(samples))
        if len(samples) >= max(min_probes, 2) and _stderr(samples) <= tol * abs(estimate):
            break
    return TraceEstimate(basis_trace + float(np.mean(samples)), _stderr(samples), len(samples))


def density(matvec: MatVec, like: torch.Tensor, generator: torch.Generator, runs: int, steps: int,
            bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Spectral density by stochastic Lanczos quadrature: (bin edges, mass per bin).

    Each run's Gauss quadrature puts weight s_1j^2 on Ritz value theta_j; the histogram of
    all runs' nodes with those weights (divided by `runs`) sums to 1.
    """
    nodes, weights = [], []
    for _ in range(runs):
        run = lanczos(matvec, rademacher(like.numel(), generator, like), steps)
        nodes.append(run.nodes)
        weights.append(run.weights / runs)
    mass, edges = np.histogram(np.concatenate(nodes), bins=bins, weights=np.concatenate(weights))
    return edges, mass


# ---------------------------------------------------------------- the metric


@dataclass(frozen=True)
class Spectrum:
    """What the estimators found for one set of parameters."""

    krylov: Krylov
    trace: TraceEstimate | None

    def scalars(self) -> dict[str, float]:
        """Named numbers for a record (floats, so that rows of several kinds share columns)."""
        krylov, trace = self.krylov, self.trace
        top = krylov.eigenvalues[0]
        scalars = {
            "top_eigenvalue": top,
            "eig_rel_residual": krylov.residuals[0] / abs(top) if top else NAN,
            "eig_converged": float(krylov.converged),
            "eig_hvps": float(krylov.hvps),
            "trace": trace.value if trace else NAN,
            "trace_se": trace.stderr if trace else NAN,
            "trace_hvps": float(trace.probes if trace else 0),
        }
        scalars.update({f"eigenvalue_{i}": v for i, v in enumerate(krylov.eigenvalues[1:], start=2)})
        return scalars


def _start_vector(operator: HessianOperator, start: str, generator: torch.Generator) -> torch.Tensor:
    """Random start, or the gradient (which lies mostly in the top eigenspace, Gur-Ari et
    al. 2018) plus an equal-norm random part, so that no eigenvector is missing from it."""
    noise = rademacher(operator.dim, generator, operator.empty())
    noise = noise / noise.norm()
    if start == "random":
        return noise
    grad = operator.gradient()
    norm = grad.norm()
    return noise + grad / norm if norm > 0 else noise


def spectrum(operator: HessianOperator, options: HessianOptions, generator: torch.Generator) -> Spectrum:
    """Top eigenvalues, then the trace (deflated by the same Lanczos basis if asked)."""
    krylov = lanczos(operator, _start_vector(operator, options.start, generator), options.max_iter,
                     options.top_k, options.tol)
    if not options.trace_probes:
        return Spectrum(krylov, None)
    basis, offset = (krylov.basis, krylov.basis_trace) if options.trace_deflate else ([], 0.0)
    trace = hutchinson(operator, krylov.basis[0], generator, options.trace_probes,
                       options.trace_min_probes, options.trace_tol, basis, offset)
    return Spectrum(krylov, trace)


def passes(options: HessianOptions, cfg: TrialConfig) -> float:
    """Forward-pass equivalents of one measurement: a gradient over the subset, then
    every HVP (Lanczos, trace probes, density runs; all again per group) at HVP_PASSES
    training passes each."""
    hvps = min(options.max_iter, LANCZOS_STEPS * options.top_k) + options.trace_probes
    hvps += options.density_runs * options.density_steps
    hvps *= 1 + group_count(cfg, options.groups, "hessian.groups")
    return min(options.n_samples, cfg.data.n_train()) * TRAIN_PASSES * (1 + HVP_PASSES * hvps)


def memory(options: HessianOptions, cfg: TrialConfig) -> Need:
    """At least: the model, the gradient and top_k Lanczos vectors (it keeps every one
    for reorthogonalisation), and the double-backward graph of one chunk."""
    return Need(2 + options.top_k, min(options.chunk_size, options.n_samples, cfg.data.n_train()),
                "hessian.chunk_size")


@METRICS.register("hessian", options=HessianOptions, memory=memory, live=("top_eigenvalue", "trace"),
                  cost=Cost(passes, f"a Hessian-vector product = {HVP_PASSES} training passes, {LANCZOS_STEPS} "
                                    "Lanczos steps per eigenvalue plus the trace probes"))
def measure(model: nn.Module, options: HessianOptions, context: MetricContext) -> Measurement:
    """Hessian scalars of the whole model; per-group rows and the density as curves."""
    splits = context.splits
    x, y = fixed_subset(splits.x_train, splits.y_train, options.n_samples, options.sample_seed)
    params = trainable(model)
    groups = parameter_groups(model, options.groups, "hessian.groups")  # fail fast on a typo
    generator = torch.Generator().manual_seed(options.seed)

    operator = HessianOperator(model, list(params.values()), x, y, options.chunk_size)
    scalars = {**spectrum(operator, options, generator).scalars(), "samples_used": len(y)}
    curves = []
    if options.density_runs:
        before = operator.calls
        edges, mass = density(operator, operator.empty(), generator, options.density_runs,
                              options.density_steps, options.density_bins)
        scalars["density_hvps"] = operator.calls - before
        centres = (edges[:-1] + edges[1:]) / 2
        curves += [curve_row("hessian_density", "all", "train", c, mass=float(m)) for c, m in zip(centres, mass)]
    del operator  # frees the retained gradient graph before the groups build theirs

    for name, members in groups.items():
        group_operator = HessianOperator(model, [params[n] for n in members], x, y, options.chunk_size)
        curves.append(curve_row("hessian_group", name, "train", NAN, n_params=float(group_operator.dim),
                                **spectrum(group_operator, options, generator).scalars()))
    return Measurement(scalars, same_columns(curves))
