"""`python -m analysis COMMAND PATH`: read a sweep's records and report on them."""

from __future__ import annotations

import argparse
import sys

from analysis.load import load_sweep
from analysis.summary import cell_table, format_cells


def cmd_summary(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.path)
    print(f"{sweep.path}: {len(sweep.trials)} models")
    print(format_cells(cell_table(sweep)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="one row per grid cell: seeds, mean ± std of losses/accuracies")
    summary.add_argument("path", help="sweep folder (e.g. results/taxonomy-demo) or URI")
    summary.set_defaults(run=cmd_summary)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
