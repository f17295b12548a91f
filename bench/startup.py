"""Driver start-up at scale: planning a rerun of a 10,000-model sweep with nothing to do.

    python bench/startup.py                # the folder is built once, then reused
    python bench/startup.py --rebuild      # build it again

A complete synthetic sweep of 10,000 models (`bench.consolidated`: real configs, every
record a sweep writes, nothing trained, and placeholder checkpoints, whose presence a
rerun checks) is rerun with `sweeps.run.driver.run` in process,
twice: the first rerun compacts the records into the consolidated tables (on a freshly
built folder), the second is timed from before `spec.trials()` to the driver's first
log line, its plan. The folder takes minutes to write (55,000 record files), so it is
kept (`--folder`, default under ~/.cache/landscape-sweeps/bench) and reused while its
records still make a rerun with nothing to do.

Then the same steps are timed one by one, for where the time goes: expansion
(`spec.trials()`: building, validating and hashing every config), keys (cell, measure
and seed-pair keys; trial keys are part of expansion), listing (the names of the three
tables whose records mark work done) and the rest (the driver's own work: lock,
damage check, lineage, plan, spec file), the remainder of the whole.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

MODELS = 10_000
LIMIT_S = 1.0  # issue 22: planning a rerun of 10,000 models with nothing to do
DEFAULT_FOLDER = Path(os.path.expanduser("~/.cache/landscape-sweeps/bench/startup"))
MARKER = "bench-startup.json"  # in the sweep folder once it is complete and compacted
LAYOUT = 3  # in MARKER: 3 has every model's checkpoints written before its records (workers.core.lineage)
HEADLINE = "start-up: {:.2f} s to plan a rerun of {:,} models with nothing to do"


class WouldRun(RuntimeError):
    """The driver planned work on a folder that should be complete."""


def rerun(spec) -> tuple[float, list[str]]:
    """Seconds from before `spec.trials()` to the driver's first log line, and its lines.
    The first line must plan nothing: otherwise the run is stopped there (raising from
    the log) rather than training every model."""
    from sweeps.run.driver import RunOptions, run

    lines: list[str] = []
    stamps: list[float] = []

    def log(line: str) -> None:
        stamps.append(time.perf_counter())
        lines.append(line)
        if len(lines) == 1 and not re.search(r"\b0 to run\b", line):
            raise WouldRun(line)

    gc.collect()  # an earlier rerun's garbage: a fresh process would not collect it here
    start = time.perf_counter()
    summary = run(spec, spec.trials(), RunOptions(in_process=True), log=log)
    assert summary.ran == 0 and summary.skipped == summary.total, summary
    return stamps[0] - start, lines


def sweep_folder(folder: Path, rebuild: bool, models: int = MODELS) -> tuple[Any, str, float]:
    """The spec of a complete, compacted sweep of `models` models under `folder`, how it
    was had ("reused", or "built in N s") and the start-up of its first rerun (which on
    a built folder compacts the records)."""
    from bench.consolidated import scale_spec, write_records

    spec = scale_spec(str(folder), models)
    sweep = folder / spec.name
    marker = json.loads((sweep / MARKER).read_text()) if (sweep / MARKER).exists() else {}
    if not rebuild and marker.get("layout") == LAYOUT and marker.get("models") == models:
        try:
            return spec, "reused", rerun(spec)[0]
        except WouldRun as exc:  # records of older code: build them again
            print(f"stored folder is not complete ({exc}); building it again", flush=True)
    if sweep.exists():
        shutil.rmtree(sweep)
    print(f"writing {models:,} models' records to {sweep} (minutes at 10,000) ...", flush=True)
    start = time.perf_counter()
    files = write_records(spec)
    seconds = time.perf_counter() - start
    first_s, _ = rerun(spec)  # its end-of-run compaction writes the consolidated tables
    (sweep / MARKER).write_text(json.dumps({"layout": LAYOUT, "models": models, "files": files,
                                            "built_s": round(seconds)}))
    return spec, f"built in {seconds:.0f} s", first_s


def breakdown(spec) -> dict[str, float]:
    """The start-up's steps timed one by one, outside the driver."""
    from sweeps.run.pairs import plan_pairs
    from workers.core.records import DONE_TABLES, measure_key
    from workers.core.storage import Storage

    t0 = time.perf_counter()
    configs = spec.trials()  # trial keys included: they are checked for duplicates
    t1 = time.perf_counter()
    for cfg in configs:
        cfg.cell_key  # noqa: B018 (computed and cached)
        [measure_key(cfg, m) for m in cfg.measure.metrics]
    t2 = time.perf_counter()
    pair_keys = [p.key for p in plan_pairs(configs)]
    t3 = time.perf_counter()
    storage = Storage.open(spec.storage).child(spec.name)
    names = sum(len(storage.list_names(table, ".parquet")) for table in DONE_TABLES)
    t4 = time.perf_counter()
    assert names == len(configs) * 3 + len(pair_keys), names  # 2 metrics per model
    return {"expansion_s": t1 - t0, "cell_and_measure_keys_s": t2 - t1, "pair_keys_s": t3 - t2,
            "keys_s": t3 - t1, "listing_s": t4 - t3}


def run(quick: bool = False, folder: Path = DEFAULT_FOLDER, rebuild: bool = False, models: int = MODELS) -> dict[str, Any]:
    """Figures of the second rerun (quick or not: the issue's figure is at 10,000 models)."""
    spec, made, first_s = sweep_folder(folder, rebuild, models)
    startup_s, lines = rerun(spec)  # the second rerun: after the compaction
    steps = breakdown(spec)
    rest_s = startup_s - steps["expansion_s"] - steps["keys_s"] - steps["listing_s"]
    headline = HEADLINE.format(startup_s, models)
    print(headline)
    print(f"  expansion (spec.trials(), trial keys) {steps['expansion_s']:.3f} s | keys {steps['keys_s']:.3f} s "
          f"(cell and measure {steps['cell_and_measure_keys_s']:.3f}, seed pairs {steps['pair_keys_s']:.3f}) | "
          f"listing 3 tables {steps['listing_s']:.3f} s | the rest (driver) {rest_s:.3f} s")
    print(f"  plan: {lines[0]}", flush=True)
    return {
        "headline": headline,
        "models": models,
        "folder": made,
        "startup_s": round(startup_s, 3),
        "first_rerun_startup_s": round(first_s, 3),
        **{k: round(v, 3) for k, v in steps.items()},
        "rest_s": round(rest_s, 3),
        "limit_s": LIMIT_S,
        "targets_met": {"startup": startup_s <= LIMIT_S},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="where the sweep is kept (%(default)s)")
    parser.add_argument("--rebuild", action="store_true", help="write the sweep's records again")
    args = parser.parse_args(argv)
    figures = run(folder=args.folder, rebuild=args.rebuild)
    print(json.dumps(figures, indent=1))
    return 0 if all(figures["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
