"""Benchmarks that print figures (not timed tests); `python bench/run.py` runs them all.

Every run of a benchmark, alone or through `bench/run.py`, records its figures in
`bench/results.json` with its date and machine: a `--quick` run under the benchmark's
name, a full run under `full`, each replacing only its own entry, so that the README's
tables (`python bench/readme.py`) are always rendered from the latest figure of each.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def load_results(path: Path = RESULTS) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def record(name: str, figures: dict[str, Any], quick: bool, path: Path = RESULTS) -> dict[str, Any]:
    """Write one benchmark's figures into `path` (`full.<name>` for a full run), dated;
    the other entries stay as they are. Returns the entry written."""
    entry = {**figures, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    results = load_results(path)
    if quick:
        results[name] = entry
    else:
        results.setdefault("full", {})[name] = entry
    path.write_text(json.dumps(results, indent=2) + "\n")
    return entry


def main(run: Callable[[bool], dict[str, Any]], doc: str | None) -> dict[str, Any]:
    """The command line of one benchmark: `--quick`, then one line per figure, recorded
    in `bench/results.json` under the name of the file that defines `run`; returns the
    figures."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    quick = parser.parse_args().quick
    figures = run(quick)
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    record(Path(inspect.getfile(run)).stem, figures, quick)
    return figures
