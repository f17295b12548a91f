"""What a sweep job asks of Slurm, and the checks that keep it consistent with the sweep.

The options keep Slurm's own names (`--nodes`, `--time`, `--partition`, `--account`);
`--sbatch-arg` passes anything else through (`--sbatch-arg=--mem=64G`). A request the
sweep could not use is refused before anything is queued: a trial that asks for more
CPUs or GPUs than a node has never starts (Ray waits for the resources for ever), and
GPUs that no trial asks for sit idle for the whole allocation.
"""

from __future__ import annotations

from dataclasses import dataclass

from sweeps.preflight.resources import AUTO
from sweeps.slurm.command import SweepCommand
from workers.core.errors import ConfigError

LAUNCHERS = ("symmetric", "explicit")
# Slurm sends the batch script USR1 this long before the time limit (--resubmit); its
# timer runs every 30-60 s, so the signal can come up to a minute early or late.
RESUBMIT_WARNING_S = 180
TIME_FORMATS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
# sbatch options the script sets itself, and the submit option that sets each.
OWN_OPTIONS = {
    "--nodes": "--nodes", "-N": "--nodes", "--time": "--time", "-t": "--time",
    "--partition": "--partition", "-p": "--partition", "--account": "--account", "-A": "--account",
    "--cpus-per-task": "--cpus-per-node", "-c": "--cpus-per-node", "--gpus-per-task": "--gpus-per-node",
    "--gpus-per-node": "--gpus-per-node", "--gpus": "--gpus-per-node", "-G": "--gpus-per-node",
    "--gres": "--gpus-per-node", "--ntasks": "--nodes", "-n": "--nodes", "--ntasks-per-node": "--nodes",
    "--signal": "--resubmit", "--output": "the script (slurm-%j.out beside it)", "-o": "the script",
    "--chdir": "the script (the submit directory)", "-D": "the script",
}


@dataclass(frozen=True)
class JobRequest:
    nodes: int = 1
    cpus_per_node: int = 0  # 0: whole nodes, and Ray takes the CPUs Slurm gives each
    gpus_per_node: int = 0
    time: str | None = None  # Slurm's format; None: the partition's default
    partition: str | None = None
    account: str | None = None
    launcher: str = "symmetric"  # how Ray starts: see sweeps.slurm.script
    resubmit: bool = False  # queue the next job when the time limit nears, until the grid is done
    max_resubmits: int = 10
    setup: tuple[str, ...] = ()  # shell lines run first in the job (module load ..., source ...)
    sbatch_args: tuple[str, ...] = ()

    @property
    def exclusive(self) -> bool:
        """Whole nodes: symmetric-run needs them (it refuses a node where any Ray runs
        and ends with `ray stop`, which stops every Ray of the user's there), and without
        a CPU count a job would get Slurm's default of one CPU per node."""
        return self.launcher == "symmetric" or self.cpus_per_node == 0


def time_limit_seconds(text: str) -> int:
    """Seconds in a Slurm time limit (`--time`), in any of Slurm's formats."""
    days, dash, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if (dash and not days.isdigit()) or len(parts) > 3 or not all(p.isdigit() for p in parts):
        raise ConfigError("--time", f"expected {TIME_FORMATS}, got {text!r}")
    numbers = [int(p) for p in parts]
    if days:
        hours, minutes, seconds = (numbers + [0, 0])[:3]
    else:  # Slurm reads a lone number as minutes and two as minutes:seconds
        hours, minutes, seconds = {1: [0, numbers[0], 0], 2: [0, *numbers], 3: numbers}[len(numbers)]
    total = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ConfigError("--time", f"must be longer than zero, got {text!r}")
    return total


def check_request(request: JobRequest) -> None:
    """The request on its own: time format, pass-through options, resubmission."""
    if request.launcher not in LAUNCHERS:
        raise ConfigError("--launcher", f"expected one of {', '.join(LAUNCHERS)}, got {request.launcher!r}")
    seconds = time_limit_seconds(request.time) if request.time else None
    for arg in request.sbatch_args:
        option = arg.split("=", 1)[0]
        if not arg.startswith("-"):
            raise ConfigError("--sbatch-arg", f"expected an sbatch option such as --mem=64G, got {arg!r}")
        if option in OWN_OPTIONS:
            raise ConfigError("--sbatch-arg", f"{option} is set by {OWN_OPTIONS[option]}, not --sbatch-arg")
    if request.resubmit and seconds is not None and seconds <= 2 * RESUBMIT_WARNING_S:
        raise ConfigError("--time", f"--resubmit queues the next job {RESUBMIT_WARNING_S} s before the time "
                          f"limit, so the limit must be longer than {2 * RESUBMIT_WARNING_S} s, got {request.time}")


def check_fits(request: JobRequest, command: SweepCommand) -> None:
    """The request against what the sweep's trials ask for (`ConfigError` naming the
    submit option to change)."""
    gpus = command.gpus_per_trial
    wants_gpus = gpus == AUTO or float(gpus) > 0
    if wants_gpus and request.gpus_per_node == 0:
        raise ConfigError("--gpus-per-node", f"the sweep's trials ask for GPUs (--gpus-per-trial {gpus}) "
                          "but the job's nodes would have none; give them some, e.g. --gpus-per-node 4")
    if gpus != AUTO and float(gpus) > request.gpus_per_node > 0:
        raise ConfigError("--gpus-per-node", f"a trial asks for {gpus:g} GPUs (--gpus-per-trial), more than "
                          f"a node's {request.gpus_per_node}")
    if request.gpus_per_node > 0 and not wants_gpus:
        raise ConfigError("--gpus-per-node", f"{request.gpus_per_node} GPUs per node would sit idle: the sweep "
                          "trains on CPUs (--gpus-per-trial 0); add --gpus-per-trial auto (or a number) to the "
                          "sweep command, or leave out --gpus-per-node")
    if 0 < request.cpus_per_node < command.cpus_per_trial:
        raise ConfigError("--cpus-per-node", f"a trial asks for {command.cpus_per_trial:g} CPUs "
                          f"(--cpus-per-trial), more than a node's {request.cpus_per_node}")
