"""Mode connectivity of a seed pair: a quadratic Bezier curve between the two models,
its bend trained for low loss (Garipov et al. 2018), evaluated along t and summarised as
the taxonomy paper's mc on training error, training loss and test error
(`workers.core.mc.curve_summary`). Only the first `pairs.mc_pairs` pairs of a cell get one."""

from __future__ import annotations

import copy
import math

from torch import nn

from workers.base.data import DATASETS
from workers.base.footprint import Need
from workers.core.config import TrialConfig
from workers.core.mc import curve_summary
from workers.metrics import Cost
from workers.pair_metrics import PAIR_METRICS, PairConfig, PairContext, PairMeasurement, pairwise
from workers.training.augment import Augment

CURVE_COLUMNS = ("t", "split", "loss", "acc", "err")  # what the summary reads of a stored curve


def passes(options: PairConfig, cfg: TrialConfig) -> float:
    """The curve's evaluation: per point, BatchNorm statistics on the training set,
    then both splits. Its fit is training, which `sweeps.preflight.estimate` times as a step of its
    own (the Bezier step)."""
    n_train, n_test = cfg.data.n_train(), DATASETS.meta(cfg.data.dataset)["n_test"]
    return options.bezier_points * (2 * n_train + n_test)


def memory(options: PairConfig, cfg: TrialConfig) -> Need:
    """At least: the two models, the curve's module, the bend with its gradient and
    momentum, and the point theta(t); the graph of one curve batch."""
    return Need(7, min(options.bezier_batch_size, cfg.data.n_train()), "pairs.bezier_batch_size")


@PAIR_METRICS.register("bezier", scalars=("mc", "mc_loss", "mc_test", "bezier_objective"), live=("mc", "mc_loss", "mc_test"),
                       cost=Cost(passes), memory=memory, mc_only=True)
def bezier(model_a: nn.Module, model_b: nn.Module, options: PairConfig, context: PairContext) -> PairMeasurement:
    """Fit and evaluate the curve, or summarise the one stored before a crash."""
    if context.stored_curve is not None:  # the fit's objective rides on every point of its curve
        points = [{k: p[k] for k in CURVE_COLUMNS} for p in context.stored_curve]
        objective = context.stored_curve[0].get("objective", math.nan)
        return PairMeasurement({"curve_reused": True, "bezier_objective": objective, **curve_summary(points)})
    cfg, splits = context.cfg, context.splits
    module = copy.deepcopy(model_a)  # the curve's module: its weights and BatchNorm statistics get overwritten
    w_a, w_b = pairwise.trainable_weights(model_a), pairwise.trainable_weights(model_b)
    batch_size = min(options.bezier_batch_size, len(splits.y_train))
    bend, objective = pairwise.fit_bend(
        module, w_a, w_b, splits.x_train, splits.y_train, epochs=options.bezier_epochs, lr=options.bezier_lr,
        momentum=options.bezier_momentum, weight_decay=options.bezier_weight_decay, batch_size=batch_size,
        seed=1_000 * context.seeds[0] + context.seeds[1], augment=Augment.of(cfg.data),
    )
    if not math.isfinite(objective):
        return PairMeasurement({"curve_reused": False, "bezier_objective": objective},
                               diverged="the Bezier curve fit diverged (non-finite loss)")
    ts = [i / (options.bezier_points - 1) for i in range(options.bezier_points)]
    points = pairwise.evaluate_curve(
        module, w_a, bend, w_b, ts, {"train": (splits.x_train, splits.y_train), "test": (splits.x_test, splits.y_test)},
        x_bn=splits.x_train, bn_batch_size=batch_size, chunk=cfg.measure.eval_batch_size,
    )
    return PairMeasurement({"curve_reused": False, "bezier_objective": objective, **curve_summary(points)},
                           curves=[{"group": "", "objective": objective, **p} for p in points])
