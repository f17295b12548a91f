"""Per-model landscape metrics, by name.

A metric entry is `measure(model, options, context) -> Measurement`, registered
with `METRICS.register(name, options=OptionsSection)`; its options section is addressed
in a spec as `name.field` (e.g. `hessian.n_samples=2000`). Metrics run on the final
model after training, or later on stored checkpoints (see `workers.trial`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workers.registry import Registry

if TYPE_CHECKING:
    import torch

    from workers.config import TrialConfig
    from workers.data import Splits

METRICS = Registry("metric")


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


def _register_builtin() -> None:
    """Import the modules whose import registers each metric (kept in one place)."""
    from workers.metrics import hessian, interpolation, surface  # noqa: F401


_register_builtin()
