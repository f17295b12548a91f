"""Shared fixtures: one real Ray session for the whole test run, tiny trial configs."""

from __future__ import annotations

import os
from typing import Any

import pytest

# Tests talk to a Ray they start themselves on this machine; shipped config never sets this.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# A trial that trains in about a second on one CPU: real data (digits), real ResNet18-k.
TINY: dict[str, Any] = {
    "dataset": "digits",
    "model": "resnet18k",
    "width": 2,
    "batch_size": 128,
    "epochs": 2,
    "lr": 0.05,
    "milestones": [1],
    "seed": 0,
}


@pytest.fixture(scope="session")
def ray_session():
    """The one Ray runtime of the test session: 2 CPUs, no dashboard."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny() -> dict[str, Any]:
    return dict(TINY)
