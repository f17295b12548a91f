"""`python -m sweeps.slurm submit [OPTIONS] -- SWEEP COMMAND`: a sweep as one Slurm job.

    python -m sweeps.slurm submit --nodes 2 --gpus-per-node 4 --cpus-per-node 32 --time 2-00:00:00 \\
        --partition gpu --resubmit -- python sweeps/taxonomy.py --preset paper \\
        --storage /shared/sweeps --gpus-per-trial auto

Everything is checked before anything is written or queued: exit code 2 and one line
naming the option on bad input, 1 when Slurm cannot be reached, 0 once the job is
queued (or, with --dry-run, its script printed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from datetime import datetime, timezone

from sweeps.run.arguments import EXIT_BAD_INPUT, OneLineParser, number
from sweeps.slurm import queue
from sweeps.slurm.command import SweepCommand, parse_sweep_command
from sweeps.slurm.request import LAUNCHERS, JobRequest, check_fits, check_request
from sweeps.slurm.script import ScriptPlace, render
from sweeps.slurm.shared_folder import check_shared
from workers.core.errors import ConfigError
from workers.core.storage import is_uri

EXIT_SLURM_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m sweeps.slurm", description="Run a sweep on a Slurm cluster (docs/slurm.md).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="submit")
    submit = commands.add_parser(
        "submit", help="queue a sweep as one Slurm job", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="python -m sweeps.slurm submit [options] -- python sweeps/<study>.py [sweep options]",
        description="Write an sbatch script that starts Ray on every node of the allocation, runs the sweep "
        "command against it and stops Ray; queue it and print how to follow it.", epilog=__doc__)
    submit.add_argument("--nodes", type=number(int, 1), default=1, metavar="N", help="nodes of the allocation (default: 1)")
    submit.add_argument("--gpus-per-node", type=number(int, 0), default=0, metavar="G", help="GPUs of each node given to Ray (default: 0)")
    submit.add_argument("--cpus-per-node", type=number(int, 0), default=0, metavar="C",
                        help="CPUs of each node given to Ray (default: whole nodes, --exclusive)")
    submit.add_argument("--time", metavar="HH:MM:SS", help="time limit, Slurm's format, e.g. 12:00:00 or 2-00:00:00 "
                        "(default: the partition's)")
    submit.add_argument("--partition", metavar="P", help="partition (checked against sinfo)")
    submit.add_argument("--account", metavar="A", help="account to charge")
    submit.add_argument("--sbatch-arg", action="append", default=[], metavar="OPTION",
                        help="another sbatch option, written as --sbatch-arg=--mem=64G; repeatable")
    submit.add_argument("--setup", action="append", default=[], metavar="LINE",
                        help="a shell line the job runs first, e.g. --setup 'module load cuda/12.1'; repeatable")
    submit.add_argument("--launcher", choices=LAUNCHERS, default=LAUNCHERS[0],
                        help="how Ray starts: 'symmetric' (ray symmetric-run, whole nodes) or 'explicit' "
                        "(ray start --head/--address --block steps, for shared nodes; default: symmetric)")
    submit.add_argument("--resubmit", action="store_true",
                        help="queue the job again shortly before its time limit, until the grid is complete")
    submit.add_argument("--max-resubmits", type=number(int, 1), default=10, metavar="N", help="at most this many follow-up jobs "
                        "(default: 10)")
    submit.add_argument("--allow-local-storage", action="store_true",
                        help="accept a --storage local to this machine (/tmp, ...): only when it is the "
                        "cluster's only node")
    submit.add_argument("--dry-run", action="store_true",
                        help="print the script; write and queue nothing, ask Slurm nothing")
    return parser


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """Own options before the first `--`, the sweep command after it."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def script_folder(command: SweepCommand) -> str:
    """Where scripts and job output files are kept: the sweep folder's `_slurm/` when it
    is a local path (the underscore keeps it out of the records), else `slurm/<name>/` in
    the submit directory."""
    if is_uri(command.folder):
        return os.path.join(os.getcwd(), "slurm", command.name)
    return os.path.join(command.folder, "_slurm")


def _new_script_path(folder: str, now: datetime) -> str:
    stem = os.path.join(folder, f"job-{now:%Y%m%d-%H%M%S}")
    path, n = f"{stem}.sbatch", 1
    while os.path.exists(path):
        n += 1
        path = f"{stem}-{n}.sbatch"
    return path


def _missing_folders(folder: str) -> list[str]:
    """The folders `os.makedirs(folder)` creates, deepest first."""
    missing = []
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def _write_and_submit(path: str, text: str) -> str:
    """Write the script and queue it; if Slurm refuses it, remove what was written."""
    made = _missing_folders(os.path.dirname(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "x") as out:
        out.write(text)
    try:
        return queue.submit(path)
    except BaseException:
        os.remove(path)
        with contextlib.suppress(OSError):  # a folder something else wrote into since stays
            for folder in made:
                os.rmdir(folder)
        raise


def _report(job: str, request: JobRequest, command: SweepCommand, place: ScriptPlace, where: str) -> None:
    cpus = f"{request.cpus_per_node} CPUs" if request.cpus_per_node else "all CPUs"
    resubmit = f", queued again before it up to {request.max_resubmits} times" if request.resubmit else ""
    lines = [*command.headline, f"storage: {command.folder} ({where})", f"script: {place.script}",
             f"submitted job {job}: {request.nodes} node(s) with {cpus} and {request.gpus_per_node} GPUs each, "
             f"Ray by {request.launcher}, time limit {request.time or 'the partition default'}{resubmit}",
             "follow it:", f"  squeue -j {job}", f"  tail -f {place.output.replace('%j', job)}",
             f"  python -m analysis status {command.folder}",
             f"stop it with `scancel {job}`; submitting the same command again continues the sweep "
             "(only missing models and pairs run)"]
    print("\n".join(lines))


def submit(args: argparse.Namespace, sweep_argv: list[str]) -> int:
    request = JobRequest(nodes=args.nodes, cpus_per_node=args.cpus_per_node, gpus_per_node=args.gpus_per_node,
                         time=args.time, partition=args.partition, account=args.account, launcher=args.launcher,
                         resubmit=args.resubmit, max_resubmits=args.max_resubmits, setup=tuple(args.setup),
                         sbatch_args=tuple(args.sbatch_arg))
    check_request(request)
    if not args.dry_run:  # the cheap checks against Slurm first: the sweep command takes seconds
        queue.require("sbatch")
        if request.partition:
            queue.check_partition(request.partition)
    command = parse_sweep_command(sweep_argv)
    check_fits(request, command)
    where = check_shared(command.storage, args.allow_local_storage)
    now = datetime.now(timezone.utc)
    place = ScriptPlace(script=_new_script_path(script_folder(command), now), workdir=os.getcwd(),
                        python_bin=os.path.dirname(sys.executable))
    text = render(request, command, place, now)
    if args.dry_run:
        print(text, end="")
        return 0
    _report(_write_and_submit(place.script, text), request, command, place, where)
    return 0


def main(argv: list[str] | None = None) -> int:
    own, sweep_argv = _split(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own)
    if not sweep_argv:
        parser.error("submit: expected the sweep command after the options: -- python sweeps/<study>.py ...")
    try:
        return submit(args, sweep_argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except queue.SlurmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SLURM_FAILED


if __name__ == "__main__":
    sys.exit(main())
