"""The Slurm commands `submit` calls (`sinfo`, `sbatch`), each failure as one line.

A job Slurm refuses (a time limit over the partition's, an unknown account) is bad input
like any other (`ConfigError`); a Slurm that cannot be reached is not (`SlurmError`).
"""

from __future__ import annotations

import shutil
import subprocess

from workers.core.errors import ConfigError

NOT_ON_PATH = "not found on PATH; run submit on a Slurm login node, or add --dry-run to print the script"
TIMEOUT_S = 60


class SlurmError(RuntimeError):
    """A Slurm command failed for another reason than the request (e.g. no controller)."""


def require(tool: str) -> str:
    """The path of a Slurm command, or a `ConfigError` naming it."""
    path = shutil.which(tool)
    if path is None:
        raise ConfigError(tool, NOT_ON_PATH)
    return path


def _run(tool: str, *args: str) -> str:
    try:
        done = subprocess.run([require(tool), *args], capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{tool}: no answer within {TIMEOUT_S} s; is the Slurm controller up?") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or [f"exit status {done.returncode}"]
        message = lines[-1].removeprefix(f"{tool}: ").removeprefix("error: ")
        if "submission failed" in message:  # Slurm's words for a request it refuses
            raise ConfigError(tool, message)
        raise SlurmError(f"{tool}: {message}")
    return done.stdout


def partitions() -> list[str]:
    """The cluster's partitions, as `sinfo` names them."""
    return sorted(set(_run("sinfo", "--noheader", "--format=%R").split()))


def check_partition(name: str) -> None:
    known = partitions()
    if name not in known:
        raise ConfigError("--partition", f"unknown partition {name!r}; this cluster has: {', '.join(known)}")


def submit(script: str) -> str:
    """Queue `script`; its job id."""
    return _run("sbatch", "--parsable", script).strip().split(";")[0]
