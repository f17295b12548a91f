"""The command line shared by every study (`sweeps/taxonomy.py` and siblings).

Everything is validated before Ray starts or a file is written: bad input exits with
code 2 and one line naming the field and what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
from collections import Counter

from analysis.refine import RefineSettings
from sweeps.preflight.feasibility import LOCAL_ADDRESSES, check_before_start
from sweeps.preflight.memory import check_memory
from sweeps.preflight.resources import AUTO, job_gpus
from sweeps.run import driver
from sweeps.run.arguments import EXIT_BAD_INPUT, OneLineParser, number
from sweeps.run.growth import Refiner
from sweeps.run.interrupt import Interrupted
from sweeps.run.presets import PRESETS, preset_values
from sweeps.run.spec import SweepSpec, parse_assignment
from sweeps.watch.loggers import LOGGERS, parse_loggers
from sweeps.watch.terminal import job_label
from workers.core.errors import ConfigError, StorageError, StorageFull
from workers.core.storage import is_uri
from workers.packing.policy import PackPlan, plan_packs


def _gpus_setting(text: str) -> float | str:
    """`auto` (each trial's share derived from its width, `sweeps.preflight.resources`) or a number >= 0."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return number(float, 0)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a finite number >= 0, got {text!r}") from None


def build_parser(study: str, description: str) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=f"python sweeps/{study}.py",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Keys for --set: any trial config key, e.g. width, batch_size, lr, weight_decay,\n"
        "label_noise, data_fraction, seed, dataset, model, epochs, optimizer, momentum,\n"
        "schedule, milestones, metrics, and metric options such as hessian.n_samples.\n"
        "A comma-separated value makes an axis of the grid: --set width=2,4,8.",
    )
    parser.add_argument("--preset", default="demo", help=f"starting values: {', '.join(PRESETS[study])} (default: demo)")
    parser.add_argument("--storage", default="results", help="local folder or URI (s3://bucket/prefix) holding sweeps (default: ./results)")
    parser.add_argument("--name", help=f"sweep folder name under --storage (default: {study}-<preset>)")
    parser.add_argument("--address", help="Ray cluster to connect to (e.g. auto); default: start an embedded local Ray")
    parser.add_argument("--max-concurrent", type=number(int, 0), default=0, help="trials running at once (default: as resources allow)")
    parser.add_argument("--cpus-per-trial", type=number(float, 0), default=1.0, help="CPUs reserved per trial; also torch's thread count (default: 1)")
    parser.add_argument("--gpus-per-trial", type=_gpus_setting, default=0.0,
                        help="GPUs per trial: a number (fractions share a GPU) or 'auto' to derive it "
                        "from each model's width, see sweeps/preflight/resources.py (default: 0)")
    parser.add_argument("--wait-for-resources", type=number(float, 0), default=300.0, metavar="SECONDS",
                        help="with --address: how long to wait for a node that can run one trial (an autoscaler "
                        "may be adding it) before stopping the sweep (default: 300)")
    parser.add_argument("--max-retries", type=number(int, 0), default=2,
                        help="retries of a failing trial (a killed worker resumes from its last epoch; default: 2)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value; repeatable; a comma list makes an axis")
    parser.add_argument("--dry-run", action="store_true", help="print the grid, trial count and resources; start nothing")
    parser.add_argument("--in-process", action="store_true", help="run trials one by one in this process, without Ray (for debugging)")
    parser.add_argument("--estimate", action="store_true",
                        help="a dry run that also times a few training steps of the grid's shapes on this "
                        "machine's device (packed as --pack says there) and projects the grid's device-hours, "
                        "packed and solo (sweeps/preflight/estimate.py)")
    parser.add_argument("--pack", default=AUTO, metavar="auto|off|N",
                        help="train same-shaped models as one fused network: 'auto' where it pays on the "
                        "training device, 'off', or packs of up to N (default: auto; see workers/packing)")
    parser.add_argument("--refine", nargs="?", const="", metavar="budget=F,stride=N",
                        help="adaptive phase diagram: train every stride-th value of the two diagram axes "
                        "(both ends), then, round after round, the cells whose trained neighbours disagree, "
                        "until none is left or a share F of the grid's models is spent; the report infers "
                        "the other cells (default: budget=0.5,stride=2; x=AXIS,y=AXIS pick the diagram's axes; "
                        "see analysis/refine.py)")
    parser.add_argument("--log", default="", metavar="NAME,...",
                        help=f"log every model and seed pair as a run of its own to any of {', '.join(LOGGERS)}: "
                        "its params, each epoch, its outcome; files under the sweep's _tune/runs/ (MLflow: "
                        "_tune/mlflow.db unless MLFLOW_TRACKING_URI is set; W&B: WANDB_MODE=offline keeps runs "
                        "there); mlflow and wandb are extras: pip install -e \".[mlflow]\" (default: none)")
    parser.add_argument("--thresholds", choices=("paper", "auto"),
                        help="phase thresholds of the report and of --refine: paper (calibrated on Yang et al. "
                        "2021) or auto (split at this sweep's own metrics) (default: paper for --preset paper, "
                        "else auto)")
    return parser


MAX_NAME = 100  # characters of a sweep's folder name: it prefixes every Tune experiment's name
PSEUDO_FILE_SYSTEMS = ("/proc", "/sys", "/dev")  # accept writes of a kind, keep nothing


def spec_from_args(study: str, args: argparse.Namespace) -> SweepSpec:
    values = preset_values(study, args.preset)
    given: set[str] = set()
    for text in args.overrides:
        key, value = parse_assignment(text)
        if key in given:
            raise ConfigError(key, "given twice with --set; give it once (a comma list makes an axis)")
        given.add(key)
        values[key] = value
    spec = SweepSpec(study=study, preset=args.preset, name=f"{study}-{args.preset}" if args.name is None else args.name,
                     storage=args.storage, values=values)
    if "/" in spec.name or spec.name.startswith((".", "_")) or not spec.name or len(spec.name) > MAX_NAME:
        raise ConfigError("--name", f"must be a plain folder name of 1 to {MAX_NAME} characters (no '/', not "
                                    f"starting with . or _), got {spec.name!r}")
    return spec


def check_storage_writable(location: str) -> None:
    """Fail before any work if a local storage folder cannot be created or written."""
    if is_uri(location):
        return
    path = os.path.abspath(os.path.expanduser(location))
    if any(path == root or path.startswith(f"{root}/") for root in PSEUDO_FILE_SYSTEMS):
        raise ConfigError("--storage", f"{path} is on a kernel pseudo file system ({', '.join(PSEUDO_FILE_SYSTEMS)}); "
                                       "give a folder on a disk or an s3:// URI")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("--storage", f"{path} is not writable (checked {existing})")


def print_dry_run(spec: SweepSpec, options: driver.RunOptions, trials: list) -> None:
    print(f"sweep {spec.name} ({spec.study}, preset {spec.preset}) -> {spec.storage}")
    print(f"trials: {len(trials)}")
    print("grid:")
    for key, values in spec.axes().items():
        print(f"  {key} ({len(values)}): {', '.join(map(str, values))}")
    fixed = {k: v[0] for k, v in spec.grid().items() if len(v) == 1}
    print("fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    gpus = options.gpus_per_trial
    gpus_text = f"{gpus:g} GPU" if gpus != AUTO else "GPU by model width (auto)"
    print(f"resources per trial: {options.cpus_per_trial:g} CPU, {gpus_text}")
    print_packs(plan_packs(trials, options.pack_policy()), options, list(spec.axes()))


def print_packs(packs: list[PackPlan], options: driver.RunOptions, axes: list[str]) -> None:
    """The training jobs `--pack` makes: each pack with its GPU share, and the solo
    trials counted by their reason."""
    policy = options.pack_policy()
    grouped = [p for p in packs if len(p.members) > 1]
    print(f"packing ({policy.why}): {sum(len(p.members) for p in grouped)} models in {len(grouped)} packs, "
          f"{len(packs) - len(grouped)} solo")
    for plan in grouped:
        job = {"kind": "pack", "members": [c.to_flat() for c in plan.members], "pairs": []}
        print(f"  {job_label(job, axes)}  {options.cpus_per_trial:g} CPU, "
              f"{job_gpus(job, options.gpus_per_trial):g} GPU")
    reasons = Counter(p.solo_reason for p in packs if len(p.members) == 1)
    for reason, count in reasons.most_common():
        print(f"  solo: {count} ({reason})")


def print_estimate(trials: list, options: driver.RunOptions) -> None:
    """The grid's projected device-hours on the device this command runs on."""
    import torch

    from sweeps.preflight.estimate import estimate
    from workers.packing.policy import PackPolicy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = PackPolicy.parse(options.pack, device)
    print(estimate(trials, policy, device, threads=max(1, int(options.cpus_per_trial))).format())


def main(study: str, description: str, argv: list[str] | None = None) -> int:
    args = build_parser(study, description).parse_args(argv)
    options = driver.RunOptions(address=args.address, max_concurrent=args.max_concurrent,
                                cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                                in_process=args.in_process, max_retries=args.max_retries, pack=args.pack,
                                wait_for_resources_s=args.wait_for_resources)
    try:
        options.pack_policy()  # a bad --pack fails here, before anything runs
        options = dataclasses.replace(options, loggers=parse_loggers(args.log))
        spec = spec_from_args(study, args)
        trials = spec.trials()
        thresholds = args.thresholds or ("paper" if spec.preset == "paper" else "auto")
        refiner = None if args.refine is None else Refiner(spec, trials, RefineSettings.parse(args.refine), thresholds)
        if refiner:
            spec = dataclasses.replace(spec, refine=refiner.spec_entry())
        if args.dry_run or args.estimate:
            print_dry_run(spec, options, trials)
            if refiner:
                print(refiner.describe())
            if args.estimate:
                print_estimate(trials, options)
            return 0
        check_before_start(options.address, options.in_process, options.request())
        if options.in_process or options.address in LOCAL_ADDRESSES:  # the trials train on this machine
            check_memory(trials, gpus=options.request().gpus > 0)
        check_storage_writable(spec.storage)
        if refiner:
            print(refiner.describe())
        summary = driver.run(spec, trials, options, grow=refiner.grow if refiner else None)
    except StorageFull as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Interrupted as exc:
        print(exc.message, file=sys.stderr)
        return exc.exit_code
    print(f"done: {summary.ran} trained or measured, {summary.skipped} skipped, "
          f"{summary.failed} failed, {summary.seconds:.1f}s")
    if refiner:
        print(refiner.outcome())
    print_report(study, summary.path, thresholds=thresholds)
    return driver.exit_code(summary)


def print_report(study: str, path: str, thresholds: str) -> None:
    """End a sweep with its result: the phase table and diagram, or the study's report.

    `thresholds`: "paper" (calibrated on the published CIFAR-10 grid) for the paper
    preset; "auto" (split at the sweep's own metric distribution) elsewhere, since other
    datasets and budgets put the metrics on other absolute scales.
    """
    from analysis.studies import default_out, write_study_report

    if study != "taxonomy":
        written = write_study_report(path, study=study)
        print(f"report: {written['summary']}")
        return
    from analysis import load_sweep
    from analysis.report import ReportOptions, phase_grid, refined_per, write_report
    from analysis.summary import cell_table, format_cells

    sweep = load_sweep(path)
    if len(sweep.axes()) < 2:  # a phase diagram needs two axes; show the cells instead
        print(format_cells(cell_table(sweep)))
        return
    per = refined_per(sweep.spec)  # a refined sweep's slices are diagrams of their own, never pooled
    for values in itertools.product(*(sorted(sweep.trials[axis].unique()) for axis in per)):
        fixed = {axis: str(value) for axis, value in zip(per, values)}
        name = "-".join(f"{k}={v}" for k, v in fixed.items())
        report = write_report(path, os.path.join(default_out(path), name) if name else default_out(path),
                              ReportOptions(thresholds=thresholds, fixed=fixed))
        print(f"phases ({thresholds} thresholds; {report.y} down, {report.x} across; ? = near a threshold"
              f"{'; ' + name if name else ''}):")
        print(phase_grid(report.cells, report.x, report.y).to_string())
        print(f"phase diagram: {report.files['phase_diagram']}\nreport: {report.files['summary']}\n"
              f"explore it in a browser: {report.files['page']}")
