"""Shared fixtures: one real Ray session for the whole test run, tiny trial configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
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

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")  # never someone else's
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """`host:port` of a moto S3 server with bucket `sweeps` (bench.s3server); AWS env set."""
    from bench.s3server import CREDENTIALS, moto_server

    with pytest.MonkeyPatch.context() as env:
        for key, value in CREDENTIALS.items():
            env.setenv(key, value)
        with moto_server() as endpoint:
            yield endpoint


@pytest.fixture
def tiny() -> dict[str, Any]:
    return dict(TINY)


@pytest.fixture
def kill_trial_at():
    """Run a trial in a child process that SIGKILLs itself after `epoch` (the fault
    switch of `workers.jobs.trial`); returns the child's exit code (-SIGKILL when it fired)."""

    def run(flat: dict[str, Any], storage: str, trial_key: str, epoch: int) -> int:
        script = ("import sys, json; from workers.catalog import TrialConfig; "
                  "from workers.jobs.runtime import RunContext; from workers.jobs.trial import run_trial; "
                  "run_trial(TrialConfig.from_flat(json.loads(sys.argv[1])), "
                  "RunContext(storage=sys.argv[2], sweep='test', threads=1))")
        env = {**os.environ, "LANDSCAPE_FAULT_KILL": f"{trial_key}:{epoch}"}
        return subprocess.run([sys.executable, "-c", script, json.dumps(flat), storage], env=env).returncode

    return run


@pytest.fixture
def figures(request):
    """Say what a test measured, for the README's Reliability table:
    `figures(row, "{kills} kill at epoch {epoch} of 4", kills=1, epoch=2)`. The wording
    sits in the test, beside the assertions that prove it; `bench/reliability.py` (which names a
    file in `LANDSCAPE_FIGURES`) collects one JSON line per call, from a run in which
    every test passed, and `bench/readme.py` puts the text in the row's cell. In an
    ordinary test run nothing is written. Values are what the test observed (a count, a
    loss, an exit code), not constants restated, so a figure that regresses fails its
    test before it reaches the README. Calls with the same row and wording (the cases of
    a parametrized test, each saying `cases=1`) become one part with their values summed."""
    path = os.environ.get("LANDSCAPE_FIGURES")

    def record(row: str, text: str, **values: Any) -> None:
        line = json.dumps({"row": row, "test": request.node.nodeid, "template": text,
                           "text": text.format(**values), "values": values})  # a value that is not JSON fails here, in every run
        if path:
            with open(path, "a") as out:
                out.write(line + "\n")

    return record
