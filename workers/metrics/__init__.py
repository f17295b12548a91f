"""Per-model landscape metrics, by name.

A metric entry is `measure(model, options, context) -> Measurement`, registered
with `METRICS.register(name, options=OptionsSection)` in its own module
(`workers.metrics.hessian`, ...); its options section is addressed in a spec as
`name.field` (e.g. `hessian.n_samples=2000`). `workers.catalog` imports every metric
module. Metrics run on the final model after training, or later on stored checkpoints
(see `workers.trial`). `MeasureConfig` says which metrics a trial measures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workers.config import Section, TrialConfig, option, section
from workers.errors import ConfigError
from workers.registry import Registry

if TYPE_CHECKING:
    import torch

    from workers.data import Splits

METRICS = Registry("metric")


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

