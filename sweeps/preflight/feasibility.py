"""Resource requests that can never be met fail in seconds, naming the option.

Ray queues a trial whose request no node can satisfy and warns now and then, forever: a
sweep asking 4 CPUs per trial of a 2-CPU machine, or a GPU of a machine without one,
used to run past 150 s with nothing done. So before anything is written the driver
checks what an embedded Ray will have (this machine) and that a cluster's address
answers at all; once connected to a cluster, it waits a bounded time for a node that can
run one trial (an autoscaler may be adding it) and then stops, saying what was asked and
what the cluster has.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from workers.core.errors import ConfigError

CONNECT_TIMEOUT_S = 10.0  # a Ray head that exists answers a TCP connect at once
LOCAL_ADDRESSES = (None, "local")  # ray.init starts a new Ray on this machine


@dataclass(frozen=True)
class Request:
    """What one trial asks of a node (GPUs: the largest share any of its jobs asks)."""

    cpus: float
    gpus: float

    def fits(self, node: dict[str, float]) -> bool:
        return node.get("CPU", 0.0) >= self.cpus and node.get("GPU", 0.0) >= self.gpus

    def text(self) -> str:
        return f"{self.cpus:g} CPU" + (f" and {self.gpus:g} GPU" if self.gpus else "")


def check_before_start(address: str | None, in_process: bool, request: Request) -> None:
    """Refuse contradictory options and requests this machine (for an embedded Ray) or
    an unreachable address can never serve."""
    if in_process and address is not None:
        raise ConfigError("--address", f"{address!r} asks for a Ray cluster, --in-process for none; give one of them")
    if in_process:
        return
    if address in LOCAL_ADDRESSES:
        _check_this_machine(request)
    elif address != "auto":
        _check_reachable(address)


def _check_this_machine(request: Request) -> None:
    cpus = os.cpu_count() or 1
    if request.cpus > cpus:
        raise ConfigError("--cpus-per-trial", f"{request.cpus:g} CPUs per trial, but this machine has {cpus} "
                                              "(an embedded Ray offers its CPUs); use at most that or --address")
    if request.gpus:
        import torch

        gpus = torch.cuda.device_count()
        if request.gpus > gpus:
            raise ConfigError("--gpus-per-trial", f"{request.gpus:g} GPU per trial, but this machine has {gpus} GPU(s); "
                                                  "use 0 or --address a cluster with GPUs")


def _check_reachable(address: str) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("--address", f"expected HOST:PORT, 'auto' or 'local', got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError("--address", f"no Ray cluster answers at {address} ({exc})") from None


def wait_for_capacity(request: Request, timeout_s: float, poll_s: float = 2.0) -> None:
    """Return once a live node of the connected cluster can run one trial; after
    `timeout_s` without one, raise a ConfigError saying what was asked and what the
    cluster's nodes have."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        if any(request.fits(node) for node in nodes):
            return
        if time.monotonic() >= deadline:
            have = "; ".join(f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for n in nodes) or "no live node"
            option = "--gpus-per-trial" if request.gpus and all(n.get("CPU", 0) >= request.cpus for n in nodes) \
                else "--cpus-per-trial"
            raise ConfigError(option, f"one trial asks {request.text()}, but no node of the cluster has that after "
                                      f"{timeout_s:g} s (nodes: {have})")
        time.sleep(poll_s)
