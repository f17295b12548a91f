"""Helpers shared by the metric tests: a reproducibly trained model and a metric context."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from workers.base.data import Splits
from workers.catalog import TrialConfig
from workers.metrics import MetricContext


def fit_full_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
                   weight_decay: float = 0.0) -> nn.Module:
    """Plain full-batch gradient descent: a reproducible trained model for metric tests."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def metric_context(splits: Splits, init_state: dict, new_model) -> MetricContext:
    """What `workers.jobs.trial` hands a metric, for a model built outside the registry."""
    return MetricContext(cfg=TrialConfig.from_flat({}), splits=splits, init_state=init_state,
                         new_model=new_model, device="cpu")
