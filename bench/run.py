"""Run every benchmark of the project, print one table, record it in bench/results.json.

    python bench/run.py [--quick]
    python bench/run.py --gpu          # only the GPU benchmark: bench/results-gpu.json

Each benchmark runs in its own Python process (its own Ray session and thread
settings) through its `run(quick) -> dict` function; every figure it reports is a ratio
against a baseline measured in the same run, or an absolute figure next to its target.
Each benchmark's figures replace its own entry in `bench/results.json` (`bench.record`:
dated, with the machine; a full run under `full`), and `python bench/readme.py` renders
the README's tables from them. A benchmark's `headline`, if it returns one (`bench/startup.py`: "start-up: ... s to plan
a rerun of 10,000 models with nothing to do"), is printed as a line of its own.
`--gpu` runs `bench/gpu.py` (one CUDA device; a tiny CPU fallback without one) in its
own process, its progress on this terminal. This script imports no Ray: the GPU machine
has none.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import RESULTS, machine, record

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ("throughput", "packing", "metric_cost", "hessian", "orchestration", "scale", "refine", "startup",
           "report_page", "drift", "trial_profile")


def run_one(name: str, quick: bool) -> dict[str, Any]:
    code = f"import json; from bench.{name} import run; print('@@' + json.dumps(run(quick={quick})))"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed",
                "wall_s": round(time.perf_counter() - start, 1)}
    line = next(line for line in proc.stdout.splitlines() if line.startswith("@@"))
    return {**json.loads(line[2:]), "wall_s": round(time.perf_counter() - start, 1)}


def run_gpu(out: Path) -> dict[str, Any]:
    """bench/gpu.py in its own process, printing as it goes; its figures as written to `out`."""
    subprocess.run([sys.executable, "-m", "bench.gpu", "--out", str(out)], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.read_text())


def flatten(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in figures.items():
        if isinstance(value, dict):
            rows += flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller grids and fewer repeats (< 10 min)")
    parser.add_argument("--only", nargs="*", choices=BENCHES, help="run only these benchmarks")
    parser.add_argument("--gpu", action="store_true", help="run only the GPU benchmark (bench/gpu.py)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-gpu.json",
                        help="with --gpu: where to write its figures (default: %(default)s)")
    args = parser.parse_args()
    if args.gpu:
        figures = run_gpu(args.out)
        print("\n| benchmark | figure | value |\n|---|---|---|")
        for key, value in flatten(figures):
            print(f"| gpu | {key} | {value} |")
        print(f"\nwritten to {args.out}")
        return
    results: dict[str, Any] = {}
    for name in args.only or BENCHES:
        print(f"running {name} ...", flush=True)
        results[name] = run_one(name, args.quick)
        if "error" not in results[name]:  # a failed run leaves the last good figures in place
            record(name, results[name], args.quick)
    print("\n| benchmark | figure | value |\n|---|---|---|")
    for name in args.only or BENCHES:
        for key, value in flatten(results[name]):
            if key != "headline":
                print(f"| {name} | {key} | {value} |")
    for name in args.only or BENCHES:
        if "headline" in results[name]:  # a figure the issues quote as a line of its own
            print(f"\n{results[name]['headline']}")
    print(f"\nmachine: {machine()}; recorded in {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
