"""Benchmarks that print figures (not timed tests); `python bench/run.py` runs them all."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def main(run: Callable[[bool], dict[str, Any]], doc: str | None) -> dict[str, Any]:
    """The command line of one benchmark: `--quick`, then one line per figure; returns
    the figures."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    figures = run(parser.parse_args().quick)
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    return figures
