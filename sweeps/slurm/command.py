"""The sweep command a Slurm job runs, checked on the login node before it is queued.

`submit` takes the command a user would run on one machine (`python sweeps/taxonomy.py
--preset paper --storage /shared/sweeps ...`). The study's own command line checks it
in a dry run, so everything a local run checks (keys, values, `--pack`, ...) fails in
seconds here instead of after hours in the queue. The script keeps it verbatim and adds
only `--address`, the Ray the job starts.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sweeps.run.presets import PRESETS
from workers.core.errors import ConfigError
from workers.core.storage import is_uri

FIELD = "sweep command"
# Options the job sets itself (the Ray it starts) or that would not run the sweep on Ray.
JOB_OWNED = {"address": "--address", "in_process": "--in-process", "dry_run": "--dry-run",
             "estimate": "--estimate"}


@dataclass(frozen=True)
class SweepCommand:
    argv: tuple[str, ...]
    study: str
    name: str  # the sweep's name (--name), also the job's
    storage: str  # --storage as given; the job runs in the submit directory, so relative paths agree
    folder: str  # the sweep folder: an absolute path or a URI
    cpus_per_trial: float
    gpus_per_trial: float | str  # a number or "auto" (sweeps.preflight.resources)
    headline: tuple[str, ...]  # the dry run's lines naming the sweep and its trial count


def _study_and_args(argv: list[str]) -> tuple[str, list[str]]:
    """`python sweeps/<study>.py ARGS` or `python -m sweeps.<study> ARGS` -> (study, ARGS)."""
    usage = (f"expected 'python sweeps/<study>.py ...' or 'python -m sweeps.<study> ...' with a study in "
             f"{', '.join(PRESETS)}, got {shlex.join(argv)!r}")
    if len(argv) < 2 or not os.path.basename(argv[0]).startswith("python"):
        raise ConfigError(FIELD, usage)
    if argv[1] == "-m":
        match = re.fullmatch(r"sweeps\.(\w+)", argv[2] if len(argv) > 2 else "")
        rest = argv[3:]
    else:
        match = re.fullmatch(r"(?:.*/)?sweeps/(\w+)\.py", argv[1])
        rest = argv[2:]
        if match and not os.path.isfile(argv[1]):
            raise ConfigError(FIELD, f"{argv[1]} not found from {os.getcwd()}, where the job will run; "
                              "submit from the project folder")
    if not match or match.group(1) not in PRESETS:
        raise ConfigError(FIELD, usage)
    return match.group(1), rest


def _quietly(call: Callable[[], Any]) -> tuple[Any, str, str]:
    """Run `call` with its output captured: (its result or exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result = call()
        except SystemExit as exc:  # argparse reports bad options this way
            result = exc.code
    return result, out.getvalue(), err.getvalue()


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return (lines[-1] if lines else "rejected by the study's command line").removeprefix("error: ")


def sweep_folder(storage: str, name: str) -> str:
    """The sweep's folder as `python -m analysis` takes it (an object store is not
    contacted: a URI keeps its query options at the end, as `Storage.child` writes it)."""
    if not is_uri(storage):
        return os.path.join(os.path.abspath(os.path.expanduser(storage)), name)
    base, sep, options = storage.partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{options}"


def parse_sweep_command(argv: list[str]) -> SweepCommand:
    """Check `argv` as the study's CLI would and learn what the job needs from it
    (`ConfigError` naming the sweep command, or `--storage`)."""
    study, args = _study_and_args(argv)
    from sweeps.run import cli  # imports torch and Ray Tune (seconds): only after the cheap checks

    parsed, _, err = _quietly(lambda: cli.build_parser(study, "").parse_args(args))
    if not hasattr(parsed, "storage"):
        raise ConfigError(FIELD, _error_line(err))
    for attr, option in JOB_OWNED.items():
        if getattr(parsed, attr):
            raise ConfigError(FIELD, f"{option} cannot be used here: the job runs the sweep on the Ray it "
                              "starts across its nodes; remove it")
    code, out, err = _quietly(lambda: cli.main(study, "", [*args, "--dry-run"]))
    if code != 0:
        raise ConfigError(FIELD, _error_line(err))
    spec = cli.spec_from_args(study, parsed)
    cli.check_storage_writable(spec.storage)
    headline = tuple(line for line in out.splitlines() if line.startswith(("sweep ", "trials:")))
    return SweepCommand(argv=tuple(argv), study=study, name=spec.name, storage=spec.storage,
                        folder=sweep_folder(spec.storage, spec.name),
                        cpus_per_trial=parsed.cpus_per_trial, gpus_per_trial=parsed.gpus_per_trial,
                        headline=headline)
