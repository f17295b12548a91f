"""Per-model landscape metrics, by name.

A metric entry is `measure(model, options, context) -> Measurement`, registered
in its own module (`workers.metrics.hessian`, ...) with everything the code around it
needs to know without running it:

    @METRICS.register(name, options=OptionsSection, cost=Cost(...), memory=need, live=(...))

- `options`: its section, addressed in a spec as `name.field` (`hessian.n_samples=2000`);
- `cost`: its cost model for `--estimate` (`Cost`); None: not modelled, and the
  estimate says it left the metric out;
- `memory`: `need(options, cfg) -> workers.base.footprint.Need`, what measuring one model
  holds on the device at once, for the memory check before a sweep; None: no more than
  training;
- `live`: the names of its scalars a job reports when it ends (to Ray Tune, the driver's
  lines and the trackers of `--log`), as record columns `<name>_<scalar>`
  (`live_columns`); the records always hold every scalar.

`workers.catalog` imports every metric module. Metrics run on the final model after
training, or later on stored checkpoints (see `workers.jobs.trial`). `MeasureConfig` says
which metrics a trial measures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workers.core.config import Section, TrialConfig, option, section
from workers.core.errors import ConfigError
from workers.core.registry import Registry

if TYPE_CHECKING:
    import torch

    from workers.base.data import Splits

METRICS = Registry("metric", requires=("cost", "memory", "live"))


@dataclass(frozen=True)
class Cost:
    """A metric's cost model for `--estimate` (`sweeps.preflight.estimate`). `passes(options, cfg)`
    is the work of measuring one model (a pair metric: one pair) in forward-pass
    equivalents, samples x passes through the model (a training pass, forward and
    backward, is `workers.base.footprint.TRAIN_PASSES` of them); the estimate prices them at
    the seconds per FLOP it timed. `assumes` is what the model takes for granted beyond
    counting, printed under the estimate."""

    passes: Callable[[Any, TrialConfig], float]
    assumes: str = ""


def live_columns() -> tuple[str, ...]:
    """The record columns of every metric's `live` scalars, in registration order: what
    a job reports of its metrics when it ends."""
    return tuple(f"{name}_{scalar}" for name in METRICS.registered() for scalar in METRICS.meta(name)["live"])


@section("measure", training=False)
@dataclass(frozen=True)
class MeasureConfig(Section):
    metrics: tuple[str, ...] = ()  # per-model metrics computed after training
    measure_pairs: bool = False  # seed pairs of each cell: CKA, L2, mode connectivity
    eval_batch_size: int = option(1024, ge=1)  # chunk size for evaluation passes (memory bound)

    def check(self) -> None:
        for name in self.metrics:
            METRICS.check(name, "metrics")
        if len(set(self.metrics)) != len(self.metrics):
            raise ConfigError("metrics", f"duplicate names in {list(self.metrics)}")


@dataclass
class Measurement:
    """What a metric returns: scalars for the trials table, rows for the curves table."""

    scalars: dict[str, Any]
    curves: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class MetricContext:
    """What a metric may need besides the trained model."""

    cfg: TrialConfig
    splits: Splits
    init_state: dict[str, Any]  # state_dict of theta_0
    new_model: Callable[[], torch.nn.Module]  # a fresh model of the same architecture
    device: str

