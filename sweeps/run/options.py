"""How to run a sweep, not what: never part of a trial's identity.

Its own module because both the driver and the executors read it (`sweeps.run.driver`,
`sweeps.run.execute`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sweeps.preflight.feasibility import Request
from workers.packing.policy import PackPolicy


@dataclass(frozen=True)
class RunOptions:
    """How to run, not what: never part of a trial's identity."""

    address: str | None = None  # existing Ray cluster; None starts an embedded local Ray
    max_concurrent: int = 0  # 0: as many as resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | str = 0.0  # or "auto": each trial's share from its width (sweeps.preflight.resources)
    in_process: bool = False  # run trials one by one in this process (debugging)
    max_retries: int = 2  # attempts after the first for a failing job (e.g. a lost node)
    pack: str = "auto"  # "auto", "off" or a pack size: see workers.packing.policy
    wait_for_resources_s: float = 300.0  # on a cluster: how long a trial may find no node that fits
    loggers: tuple[str, ...] = ()  # Ray Tune logger callbacks to attach (`--log`, sweeps.watch.loggers)

    def request(self) -> Request:
        """What one trial asks of a node (`auto`: up to a whole GPU, sweeps.preflight.resources)."""
        return Request(self.cpus_per_trial, 1.0 if self.gpus_per_trial == "auto" else float(self.gpus_per_trial))

    def training_device(self) -> str:
        """Where trials train, for `--pack auto`: a GPU when the jobs ask for one (or,
        in process, when this machine has one), else the CPU."""
        if self.in_process:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return "cuda" if self.gpus_per_trial == "auto" or float(self.gpus_per_trial) > 0 else "cpu"

    def pack_policy(self) -> PackPolicy:
        return PackPolicy.parse(self.pack, self.training_device())
