"""Loss surfaces around the trained weights along random directions (Li et al., NeurIPS 2018).

A random Gaussian direction is meaningless across models of different scale (BatchNorm
makes a network invariant to its filters' norms), so each filter of the direction is
rescaled to the norm of the same filter of theta_T ("filter normalisation"). The slices
theta_T + a d1 (1D) and theta_T + a d1 + b d2 (2D), a and b in [-span, span], are
evaluated on fixed seeded subsets of both splits and stored as `surface1d` /
`surface2d` curve rows (t = a, t2 = b). Directions come from `direction_seed` alone, so
the same seed gives the same raw directions for every model of a sweep. BatchNorm
running statistics stay at theta_T, as in Li et al.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.base.footprint import Need
from workers.core.config import Section, TrialConfig, option, section
from workers.core.errors import ConfigError
from workers.metrics import METRICS, Cost, Measurement, MetricContext
from workers.metrics.common import EvalSets, curve_row, trainable

State = dict[str, torch.Tensor]


@section("surface", prefix="surface", training=False)
@dataclass(frozen=True)
class SurfaceOptions(Section):
    dims: tuple[int, ...] = (1, 2)  # which slices: 1D and/or 2D
    points: int = option(21, ge=2, note="both end points")  # grid points of the 1D slice
    points_2d: int = option(11, ge=2, note="both end points")  # grid points per axis of the 2D slice
    span: float = option(1.0, gt=0)  # coordinates in [-span, span], in filter-normalised units
    eval_samples: int = option(256, ge=1)  # fixed subset of each split (capped at the split's size)
    eval_seed: int = 0
    direction_seed: int = 0
    # 1-D parameters (biases, BatchNorm): "zero" or "filter" (one filter)
    bias_bn: str = option("zero", choices=("zero", "filter"))

    def check(self) -> None:
        if not self.dims or any(d not in (1, 2) for d in self.dims) or len(set(self.dims)) != len(self.dims):
            raise ConfigError("surface.dims", f"got {list(self.dims)}; use 1, 2 or both")


def filter_normalised(weights: State, generator: torch.Generator, bias_bn: str) -> State:
    """A Gaussian direction with each filter (slice along dim 0) scaled to the norm of the
    same filter of `weights`; 1-D tensors get zeros or are treated as one filter."""
    direction = {}
    for name, w in weights.items():
        d = torch.randn(w.shape, generator=generator).to(device=w.device, dtype=w.dtype)
        if w.dim() <= 1:
            d = torch.zeros_like(w) if bias_bn == "zero" else d * (w.norm() / d.norm().clamp_min(1e-12))
        else:
            dims = tuple(range(1, w.dim()))
            d = d * (torch.linalg.vector_norm(w, dim=dims, keepdim=True)
                 / torch.linalg.vector_norm(d, dim=dims, keepdim=True).clamp_min(1e-12))
        direction[name] = d
    return direction


def shifted(final: State, steps: list[tuple[float, State]]) -> State:
    """theta_T plus sum of coefficient * direction on the parameters; the rest copied."""
    state = {k: v.clone() for k, v in final.items()}
    for coefficient, direction in steps:
        for name, d in direction.items():
            state[name] += coefficient * d
    return state


def _rise(rows: list[dict[str, Any]], centre: float) -> tuple[float, float]:
    rises = np.array([r["loss"] for r in rows if r["split"] == "train"]) - centre
    return float(rises.max()), float(rises.mean())


def memory(options: SurfaceOptions, cfg: TrialConfig) -> Need:
    """The model, theta_T, two directions, the shifted state and the working model;
    evaluation keeps no graph."""
    return Need(6, 0, "surface.eval_samples")


def passes(options: SurfaceOptions, cfg: TrialConfig) -> float:
    """Forward-pass equivalents of one measurement: theta_T and every point of each
    slice, evaluated on both subsets (the directions cost one pass over the weights)."""
    points = 1 + options.points * (1 in options.dims) + options.points_2d ** 2 * (2 in options.dims)
    return points * 2 * min(options.eval_samples, cfg.data.n_train())


@METRICS.register("surface", options=SurfaceOptions, cost=Cost(passes), memory=memory, live=())
def measure(model: nn.Module, options: SurfaceOptions, context: MetricContext) -> Measurement:
    """1D and 2D slices of the loss around theta_T; the rise of the training loss above
    its value at theta_T (max and mean over each grid) as scalars."""
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    weights = {k: final[k] for k in trainable(model)}
    generator = torch.Generator().manual_seed(options.direction_seed)
    d1 = filter_normalised(weights, generator, options.bias_bn)
    d2 = filter_normalised(weights, generator, options.bias_bn)
    sets = EvalSets.from_splits(context.splits, options.eval_samples, options.eval_seed,
                                context.cfg.measure.eval_batch_size)
    work = context.new_model()

    def rows_at(kind: str, steps: list[tuple[float, State]], t: float, t2: float) -> list[dict[str, Any]]:
        work.load_state_dict(shifted(final, steps))
        return [curve_row(kind, "all", split, t, loss, acc, t2) for split, (loss, acc) in sets.evaluate(work).items()]

    centre = sets.evaluate(model)["train"][0]
    scalars: dict[str, Any] = {"train_center_loss": centre}
    curves: list[dict[str, Any]] = []
    if 1 in options.dims:
        grid = np.linspace(-options.span, options.span, options.points)
        rows = [r for a in grid for r in rows_at("surface1d", [(float(a), d1)], a, float("nan"))]
        scalars["train_max_rise_1d"], scalars["train_mean_rise_1d"] = _rise(rows, centre)
        curves += rows
    if 2 in options.dims:
        grid = np.linspace(-options.span, options.span, options.points_2d)
        rows = [r for a in grid for b in grid for r in rows_at("surface2d", [(float(a), d1), (float(b), d2)], a, b)]
        scalars["train_max_rise_2d"], scalars["train_mean_rise_2d"] = _rise(rows, centre)
        curves += rows
    return Measurement(scalars, curves)
