"""Metrics of two trained models of the same grid cell (a seed pair), by name.

The same shape as the per-model metrics (`workers.metrics`): an entry is
`measure(model_a, model_b, options, context) -> PairMeasurement`, registered with
`PAIR_METRICS.register(name, scalars=(...), live=(...), cost=..., memory=..., mc_only=...)`
in its own module (`similarity`: CKA and L2 on every pair; `bezier`: mode connectivity
on the first `pairs.mc_pairs` pairs of a cell). `scalars` are the columns it fills in
the pairs row; `live`, `cost` and `memory` mean what they mean for a per-model metric,
with `options` the `pairs` section and `cfg` the lower seed's config. `workers.jobs.pair_trial` runs them and writes the
records; `workers.catalog` imports every module. Their options are one section,
`pairs.*` (below), because the pair's record key hashes them together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from workers.base.data import Splits
from workers.core.config import Section, TrialConfig, option, section
from workers.core.registry import Registry
from workers.metrics import Measurement

PAIR_METRICS = Registry("pair metric", requires=("scalars", "live", "cost", "memory"))


@section("pairs", prefix="pairs", training=False)
@dataclass(frozen=True)
class PairConfig(Section):
    """Options of the pair metrics. Defaults are sized for the offline demo (digits,
    1,437 training samples): 8 epochs at lr 0.05 is 88 steps of the bend, about half the
    cost of training one demo model; 4 epochs at lr 0.01 left a 4.7-point barrier between
    two width-16 models that an 8-epoch fit brings to 0.9 and a 20-epoch fit to 0.3. The
    paper fitted 50 epochs of CIFAR-10 at lr 0.01 (`bezier_epochs=50 bezier_lr=0.01`)."""

    unhashed: ClassVar[tuple[str, ...]] = ("mc_pairs",)  # which pairs, not how

    mc_pairs: int = option(1, ge=0)  # seed pairs per cell that get a Bezier curve (the first ones)
    bezier_epochs: int = option(8, ge=1)
    bezier_lr: float = option(0.05, gt=0)
    bezier_momentum: float = option(0.9, ge=0, lt=1)
    bezier_weight_decay: float = option(5e-4, ge=0)  # penalty 0.5 * wd * ||theta(t)||^2
    bezier_batch_size: int = option(128, ge=1)  # capped at the training-set size
    # evaluated t: linspace(0, 1, points), end points included
    bezier_points: int = option(5, ge=3, note="both end points and one inside")
    cka_samples: int = option(768, ge=1)  # probe inputs from the training set (capped at its size)
    cka_mixup_alpha: float = option(16.0, ge=0, note="0: no mixup")  # lambda ~ Beta(a, a)

    def settings(self, with_mc: bool) -> dict[str, Any]:
        """The options that determine a pair's results (curve options only with mc)."""
        return {k: v for k, v in self.identity().items() if with_mc or not k.startswith("bezier_")}


@dataclass
class PairMeasurement(Measurement):
    """A pair metric's scalars (for the pairs row) and curve points (for `curves`)."""

    diverged: str = ""  # why the metric could not finish; the pair is then recorded as diverged


@dataclass(frozen=True)
class PairContext:
    """What a pair metric may need besides the two models."""

    cfg: TrialConfig  # the lower seed's config: the cell's options
    splits: Splits
    seeds: tuple[int, int]  # (lower, higher)
    stored_curve: list[dict[str, Any]] | None = None  # this metric's curve written before a crash


def pair_metrics(with_mc: bool) -> list[str]:
    """The metrics a pair measures, in registration order: all of them, or those that
    need no curve fit when the pair is not one of its cell's mode-connectivity pairs."""
    return [name for name in PAIR_METRICS.registered() if with_mc or not PAIR_METRICS.meta(name).get("mc_only")]


def live_columns() -> tuple[str, ...]:
    """The pairs-row columns every pair metric reports live, in registration order."""
    return tuple(scalar for name in PAIR_METRICS.registered() for scalar in PAIR_METRICS.meta(name)["live"])
