"""Loss along straight lines from the initial weights theta_0 to the trained theta_T.

Vlaar & Frankle (ICML 2022) ask whether the loss on the path (1 - a) theta_0 + a theta_T
says anything about training; Lucas et al. (2021) call "the loss decreases along it"
monotonic linear interpolation (MLI). We record, on a fixed seeded subset of each split:

- the full path (`kind="interp_full"`, group `all`);
- layer-wise paths: one group of parameters moves from theta_0 to theta_T while every
  other entry of the state stays exactly at theta_T (`interp_group`) or at theta_0
  (`interp_group_mirror`); groups are chosen as in `common.parameter_groups`;
- per curve and split, from the loss on the points with a in [0, 1]: monotone (no rise
  above `monotone_tol` nats), the largest bump (a loss minus the lowest loss before it),
  the barrier over the chord between the end points, and the a of the highest loss.

BatchNorm running statistics are either interpolated with the weights (and then the end
points reproduce theta_0 and theta_T exactly) or recomputed on the training subset at
every point (`bn_stats`); the choice changes the curve and is part of the record.

Defaults are sized for the sweep's cost budget (see `workers.metrics.hessian`): the full
path on 21 points and 256 samples per split costs 3-16% of a demo model's training. The
layer-wise paths are off by default (each group costs `group_points / points` of the full
path, per `others_at` value); `interpolation.groups=stage` turns them on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from workers.base.footprint import Need
from workers.core.config import Section, TrialConfig, option, section
from workers.core.errors import ConfigError
from workers.metrics import METRICS, Cost, Measurement, MetricContext
from workers.metrics.common import (
    EvalSets,
    check_group_specs,
    curve_row,
    group_count,
    parameter_groups,
    state_keys,
)
from workers.training.train import recompute_bn

State = dict[str, torch.Tensor]


@section("interpolation", prefix="interpolation", training=False)
@dataclass(frozen=True)
class InterpolationOptions(Section):
    points: int = option(21, ge=2, note="both end points")  # alphas i / (points - 1) in [0, 1]
    extend: float = option(0.0, ge=0)  # also alphas up to `extend` beyond each end, same spacing
    eval_samples: int = option(256, ge=1)  # fixed subset of each split (capped at the split's size)
    eval_seed: int = 0
    # BatchNorm running statistics along the path
    bn_stats: str = option("interpolate", choices=("interpolate", "recompute"))
    groups: tuple[str, ...] = ()  # layer-wise paths: `module`, `stage`, `block` or globs
    group_points: int = option(11, ge=2, note="both end points")  # points in [0, 1] of each layer-wise path
    others_at: tuple[str, ...] = ("final",)  # where the other groups stay: "final" and/or "init"
    monotone_tol: float = option(1e-3, ge=0)  # nats of loss increase still counted as monotone

    OTHERS_AT: ClassVar[dict[str, str]] = {"final": "interp_group", "init": "interp_group_mirror"}

    def check(self) -> None:
        unknown = [o for o in self.others_at if o not in self.OTHERS_AT]
        if unknown or len(set(self.others_at)) != len(self.others_at):
            raise ConfigError("interpolation.others_at",
                              f"got {list(self.others_at)}; use distinct values of {', '.join(self.OTHERS_AT)}")
        check_group_specs(self.groups, "interpolation.groups")


def alpha_grid(points: int, extend: float = 0.0) -> list[float]:
    """`points` alphas spanning [0, 1] exactly, plus the same spacing up to `extend` beyond."""
    steps = points - 1
    beyond = int(np.floor(extend * steps + 1e-9))
    return [i / steps for i in range(-beyond, steps + beyond + 1)]


@torch.no_grad()
def write_path_state(target: State, init: State, final: State, alpha: float, moving: set[str], base: State) -> None:
    """Set `target` (a model's `state_dict()`, whose tensors are the model's own) to the
    path's state at `alpha`: the `moving` entries at (1 - alpha) init + alpha final, every
    other entry copied from `base` bit for bit. Integer entries (BatchNorm's batch counter)
    never move. Writing in place with a few foreach kernels replaces building a state
    and `load_state_dict` per point, which walked every module in Python: on the demo's
    small models that walk was a fifth of the interpolation's time."""
    move = [k for k, v in target.items() if k in moving and v.is_floating_point()]
    stay = [k for k, v in target.items() if not (k in moving and v.is_floating_point())]
    if stay:
        torch._foreach_copy_([target[k] for k in stay], [base[k] for k in stay])
    if move:
        mixed = torch._foreach_add(torch._foreach_mul([init[k] for k in move], 1 - alpha),
                                   torch._foreach_mul([final[k] for k in move], alpha))
        torch._foreach_copy_([target[k] for k in move], mixed)


@dataclass(frozen=True)
class PathShape:
    """Scalars of one loss curve, from its points with alpha in [0, 1]."""

    monotone: bool
    max_bump: float  # max over alpha of L(alpha) minus the lowest loss before it (>= 0)
    barrier: float  # max over alpha of L(alpha) minus the chord (1-a) L(0) + a L(1) (>= 0)
    argmax_alpha: float  # alpha of the highest loss

    @classmethod
    def of(cls, alphas: list[float], losses: list[float], tol: float) -> PathShape:
        inside = [(a, loss) for a, loss in zip(alphas, losses) if 0.0 <= a <= 1.0]
        a = np.array([p[0] for p in inside])
        loss = np.array([p[1] for p in inside])
        running_min = np.minimum.accumulate(loss)
        bump = float(np.max(loss[1:] - running_min[:-1], initial=0.0))
        chord = (1 - a) * loss[0] + a * loss[-1]
        return cls(bump <= tol, bump, float(np.max(loss - chord)), float(a[np.argmax(loss)]))

    def columns(self) -> dict[str, Any]:
        return {"monotone": self.monotone, "max_bump": self.max_bump, "barrier": self.barrier,
                "argmax_alpha": self.argmax_alpha}


class PathEvaluator:
    """Writes path points into a working model and evaluates them on the fixed subsets.

    Paths share end points: every layer-wise path with the others at theta_T ends at
    theta_T (alpha = 1), every mirror path starts at theta_0. Those states are the end
    models bit for bit, so each end model is evaluated once (`end_of`).
    """

    def __init__(self, model: nn.Module, sets: EvalSets, measure_bn: bool, init: State, final: State) -> None:
        self.model, self.sets, self.measure_bn = model, sets, measure_bn
        self.init, self.final = init, final
        self._state = model.state_dict()  # the working model's tensors, written in place
        if self._state.keys() != final.keys():  # what load_state_dict(strict=True) checked
            raise ValueError(f"working model and trained model differ in state entries: "
                             f"{sorted(self._state.keys() ^ final.keys())}")
        self._ends: dict[str, dict[str, tuple[float, float]]] = {}

    def point(self, moving: set[str], base: State, alpha: float) -> dict[str, tuple[float, float]]:
        """split -> (loss, accuracy) at `alpha` of the path moving `moving`, the rest at `base`."""
        write_path_state(self._state, self.init, self.final, alpha, moving, base)
        if self.measure_bn:  # statistics of the point's own weights on the training subset
            recompute_bn(self.model, self.sets.x_train, self.sets.chunk)
        return self.sets.evaluate(self.model)

    def _at(self, end: str | None, evaluate: Callable[[], dict[str, tuple[float, float]]]):
        if end is None:
            return evaluate()
        if end not in self._ends:
            self._ends[end] = evaluate()
        return self._ends[end]

    def curve(self, kind: str, group: str, alphas: list[float], moving: set[str], base: State,
              end_of: Callable[[float], str | None], tol: float) -> list[dict[str, Any]]:
        """Rows of one path (both splits), each carrying its curve's shape scalars.
        `end_of(alpha)` names the end model ("init", "final") the path is at, or None."""
        results = [self._at(end_of(a), partial(self.point, moving, base, a)) for a in alphas]
        rows = []
        for split in ("train", "test"):
            losses = [r[split][0] for r in results]
            shape = PathShape.of(alphas, losses, tol)
            rows += [curve_row(kind, group, split, a, r[split][0], r[split][1], **shape.columns())
                     for a, r in zip(alphas, results)]
        return rows


def end_model(alpha: float, moves_everything: bool, others_at: str) -> str | None:
    """Which end model the path's state at `alpha` is, bit for bit: "init" or "final"
    (the moving part at that end, and the rest too), else None."""
    if alpha == 0.0 and (moves_everything or others_at == "init"):
        return "init"
    if alpha == 1.0 and (moves_everything or others_at == "final"):
        return "final"
    return None


def _shape_scalars(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The shape columns of a curve's first row per split, as `<split>_<name>` scalars."""
    scalars = {}
    for split in ("train", "test"):
        first = next(r for r in rows if r["split"] == split)
        scalars.update({f"{split}_{k}": first[k] for k in PathShape.__dataclass_fields__})
    return scalars


def passes(options: InterpolationOptions, cfg: TrialConfig) -> float:
    """Forward-pass equivalents of one measurement: every point of the full and the
    layer-wise paths evaluated on both subsets (plus the BatchNorm statistics pass)."""
    points = len(alpha_grid(options.points, options.extend))
    points += group_count(cfg, options.groups, "interpolation.groups") * options.group_points * len(options.others_at)
    per_point = 2 + (options.bn_stats == "recompute")  # train and test subsets (+ BN statistics)
    return points * per_point * min(options.eval_samples, cfg.data.n_train())


def memory(options: InterpolationOptions, cfg: TrialConfig) -> Need:
    """The model, the working model and theta_0 and theta_T; evaluation keeps no graph."""
    return Need(4, 0, "interpolation.eval_samples")


@METRICS.register("interpolation", options=InterpolationOptions, cost=Cost(passes), memory=memory, live=())
def measure(model: nn.Module, options: InterpolationOptions, context: MetricContext) -> Measurement:
    """Full and layer-wise interpolation curves between theta_0 and theta_T."""
    groups = parameter_groups(model, options.groups, "interpolation.groups")
    init = context.init_state
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sets = EvalSets.from_splits(context.splits, options.eval_samples, options.eval_seed,
                                context.cfg.measure.eval_batch_size)
    evaluator = PathEvaluator(context.new_model(), sets, options.bn_stats == "recompute", init, final)
    tol = options.monotone_tol

    alphas = alpha_grid(options.points, options.extend)
    curves = evaluator.curve("interp_full", "all", alphas, set(final), final,
                             lambda a: end_model(a, True, "final"), tol)
    scalars = _shape_scalars(curves)

    group_alphas = alpha_grid(options.group_points)
    worst: tuple[float, str] = (-np.inf, "")  # the most sensitive group, others at theta_T
    for others in options.others_at:
        base = final if others == "final" else init
        for name, members in groups.items():
            moving = state_keys(model, members)
            rows = evaluator.curve(InterpolationOptions.OTHERS_AT[others], name, group_alphas, moving, base,
                                   partial(end_model, moves_everything=False, others_at=others), tol)
            curves += rows
            if others == "final":
                worst = max(worst, (_shape_scalars(rows)["train_barrier"], name))
    if worst[1]:
        scalars["group_max_train_barrier"], scalars["group_max_train_barrier_name"] = worst
    return Measurement(scalars, curves)
