"""`python -m analysis COMMAND PATH`: read a sweep's records and report on them."""

from __future__ import annotations

import argparse
import math
import os
import sys

import pyarrow as pa

from analysis.load import load_sweep
from analysis.summary import cell_table, format_cells
from analysis.yang2021 import ArchiveError, import_archive
from sweeps.run.arguments import OneLineParser, number
from workers.core.errors import ConfigError
from workers.core.safe_pickle import UnsafePickleError

ALL_HELP = "read the records of every spec run in the folder, not only the latest spec's"
MAX_EVERY_S = 86_400.0  # a day; time.sleep overflows near 1e10 s


def _threshold(text: str) -> str:
    """`--threshold NAME=VALUE` with VALUE a finite number (every comparison with NaN is
    false, so it would classify without a word); the name is checked by the report."""
    name, sep, value = text.partition("=")
    try:
        number(float, -math.inf)(value)
    except argparse.ArgumentTypeError:
        sep = ""
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with VALUE a finite number, got {text!r}")
    return text


def cmd_summary(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.path, args.all)
    print(f"{sweep.path}: {len(sweep.trials)} models")
    print(format_cells(cell_table(sweep)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from analysis.status import format_status, watch

    if args.every <= 0:
        raise ConfigError("--every", f"must be a number of seconds > 0, got {args.every:g}")
    if not args.watch:
        print(format_status(load_sweep(args.path, args.all)))
        return 0
    try:
        watch(args.path, args.every, all_specs=args.all)
    except KeyboardInterrupt:  # how a watch usually ends
        print()
    return 0


def _sweep_storage(path: str):
    """The storage of a sweep folder; ConfigError (exit 2) if it holds no sweep."""
    from workers.core.storage import Storage
    from workers.core.tables import TABLES

    storage = Storage.open(path)
    if not storage.exists("spec.json") and not any(storage.list_names(t, ".parquet") for t in TABLES):
        raise ConfigError("path", f"{storage.uri} holds no sweep (no spec.json, no record files)")
    return storage


def cmd_compact(args: argparse.Namespace) -> int:
    from workers.core.tables import compact_sweep, describe

    for table, read in compact_sweep(_sweep_storage(args.path)).items():
        print(describe(table, read))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """The scrub: every record the consolidated tables hold read back and compared with
    the hash compaction took, and every model's checkpoints with their checksums; exit 1
    when something was damaged (and set aside, to be recomputed by the next run)."""
    from workers.core.lineage import verify_checkpoints
    from workers.core.tables import verify

    storage = _sweep_storage(args.path)
    lines = verify(storage) + verify_checkpoints(storage)
    for line in lines:
        print(line)
    return 1 if any("moved to _quarantine/" in line for line in lines) else 0


def _pairs_of(items: list[str], flag: str) -> dict[str, str]:
    """`["a=1", "b=x"]` -> {"a": "1", "b": "x"} (repeatable `--flag key=value`)."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(flag, f"expected key=value, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import ReportOptions, phase_grid, write_report  # matplotlib: only when needed

    options = ReportOptions(x=args.x, y=args.y, fixed=_pairs_of(args.fix, "--fix"), thresholds=args.thresholds,
                            overrides=_pairs_of(args.threshold, "--threshold"), all_specs=args.all)
    report = write_report(args.path, args.out, options)
    print(phase_grid(report.cells, report.x, report.y).to_string())
    print(f"wrote {len(report.files)} files to {args.out} (summary: {report.files['summary']})")
    return 0


def cmd_study_report(args: argparse.Namespace) -> int:
    from analysis.studies import write_study_report  # matplotlib: only when needed

    written = write_study_report(args.path, args.out, args.study)
    print(open(written["summary"]).read())
    print(f"wrote {len(written)} files next to {written['summary']}")
    return 0


def cmd_refine_replay(args: argparse.Namespace) -> int:
    from analysis.refine import RefineSettings
    from analysis.replay import agreement, full_grid_phases, refined_phases, replay
    from analysis.report import ReportOptions, phase_grid, write_report  # matplotlib: only when needed

    result = replay(args.source, args.out, RefineSettings.parse(args.refine), args.thresholds)
    grid = result.grid
    out = args.report or f"{args.out.rstrip('/')}/report"
    for part in grid.slices:  # one diagram per slice of the other axes (() : the only one)
        fixed = {axis: str(value) for axis, value in zip(grid.other_axes, part)}
        name = "-".join(f"{k}={v}" for k, v in fixed.items())
        report = write_report(result.path, os.path.join(out, name) if name else out,
                              ReportOptions(x=grid.x, y=grid.y, thresholds=args.thresholds, fixed=fixed))
        if name:
            print(f"{name}:")
        print(phase_grid(report.cells, grid.x, grid.y).to_string())
        print(f"report: {report.files['summary']}")
    refined = refined_phases(result, args.thresholds)
    share, differ = agreement(full_grid_phases(load_sweep(args.source), grid, args.thresholds), refined, grid)
    print(f"rounds: {' + '.join(map(str, result.rounds))} cells; trained {result.cells} of {len(grid.cells)} cells, "
          f"{result.models} of {result.total_models} models ({result.models / result.total_models:.1%})")
    where = (*grid.other_axes, grid.x, grid.y)
    print(f"agreement with the full grid ({args.thresholds} thresholds): {share:.1%} of cells"
          + (f"; differ at {', '.join(' '.join(f'{a}={v}' for a, v in zip(where, place)) for place in differ)}"
             if differ else ""))
    return 0


def cmd_import_yang2021(args: argparse.Namespace) -> int:
    counts = import_archive(args.archive, args.out)
    print(f"imported {counts['cells']} cells, {counts['models']} models, {counts['pairs']} seed pairs, "
          f"{counts['curve_points']} curve points -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m analysis", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="one row per grid cell: seeds, mean ± std of losses/accuracies")
    summary.add_argument("path", help="sweep folder (e.g. results/taxonomy-demo) or URI")
    summary.add_argument("--all", action="store_true", help=ALL_HELP)
    summary.set_defaults(run=cmd_summary)
    status = commands.add_parser("status", help="done / diverged / failed / missing per table; failed jobs with "
                                 "errors; while a sweep runs, its progress, ETA and the jobs in progress")
    status.add_argument("path", help="sweep folder or URI")
    status.add_argument("--all", action="store_true", help=ALL_HELP)
    status.add_argument("--watch", action="store_true", help="refresh until the sweep is complete (Ctrl-C stops)")
    status.add_argument("--every", type=number(float, 0, above=True, maximum=MAX_EVERY_S), default=5.0,
                        metavar="SECONDS", help="seconds between refreshes with --watch (default: 5)")
    status.set_defaults(run=cmd_status)
    compact = commands.add_parser("compact", help="write each table as one Parquet file under PATH/tables/ "
                                  "(readers take it plus the records it lacks)")
    compact.add_argument("path", help="sweep folder or URI")
    compact.set_defaults(run=cmd_compact)
    scrub = commands.add_parser("verify", help="read back every consolidated record and every checkpoint and "
                                "compare each with its hash (bit rot); damaged ones go to _quarantine/ (exit 1)")
    scrub.add_argument("path", help="sweep folder or URI")
    scrub.set_defaults(run=cmd_verify)
    report = commands.add_parser("report", help="phase diagram, metric heatmaps and a Markdown summary")
    report.add_argument("path", help="sweep folder or URI (or an imported reference, see import-yang2021)")
    report.add_argument("--all", action="store_true", help=ALL_HELP)
    report.add_argument("--out", required=True, help="folder for index.html (the page to explore), the PNGs, "
                        "cells.csv and summary.md")
    report.add_argument("--x", help="horizontal axis (default: width)")
    report.add_argument("--y", help="vertical axis, small values at the top (default: batch_size)")
    report.add_argument("--fix", action="append", default=[], metavar="KEY=VALUE",
                        help="keep only models with this value; axes neither drawn nor fixed are pooled")
    report.add_argument("--thresholds", choices=("paper", "auto"), default="paper",
                        help="paper: calibrated on Yang et al. 2021; auto: derived from this sweep")
    report.add_argument("--threshold", type=_threshold, action="append", default=[], metavar="NAME=VALUE",
                        help="set one threshold: log_top_eigenvalue, mc, cka, train_loss")
    report.set_defaults(run=cmd_report)
    yang = commands.add_parser("import-yang2021", help="the published metrics of Yang et al. 2021 as a sweep folder")
    yang.add_argument("archive", help="their results.tar.gz")
    yang.add_argument("--out", required=True, help="folder (or URI) to write the records to")
    yang.set_defaults(run=cmd_import_yang2021)
    replay = commands.add_parser("refine-replay", help="what --refine would train on a finished full-grid sweep, "
                                 "each cell answered from its records; agreement with the full diagram")
    replay.add_argument("source", help="a full-grid sweep folder (e.g. the import of the published metrics)")
    replay.add_argument("--out", required=True, help="new folder for the refined sweep's records")
    replay.add_argument("--refine", default="", metavar="budget=F,stride=N",
                        help="as the sweeps' --refine (default: budget=0.5,stride=2)")
    replay.add_argument("--thresholds", choices=("paper", "auto"), default="paper",
                        help="for refining, the report and the full diagram alike (default: paper)")
    replay.add_argument("--report", help="folder for the refined report (default: OUT/report)")
    replay.set_defaults(run=cmd_refine_replay)
    study = commands.add_parser("study-report", help="report of the interpolation or optimizers study")
    study.add_argument("path", help="sweep folder or URI written by sweeps/interpolation.py or sweeps/optimizers.py")
    study.add_argument("--out", help="folder for the report (default: PATH/report; ./report-NAME for a URI)")
    study.add_argument("--study", choices=("interpolation", "optimizers"),
                       help="which report (default: the study named in the sweep's spec.json)")
    study.set_defaults(run=cmd_study_report)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, ArchiveError, UnsafePickleError, OSError) as exc:  # bad input: say what, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except pa.ArrowException as exc:  # records that cannot be read together, e.g. mismatched column types
        print(f"error: the sweep's records cannot be read as one table: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
