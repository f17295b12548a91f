"""Scale benchmark: how the driver and the analysis cope with large sweeps.

    python bench/scale.py            # 10,000-trial grid, 10,000-model records (~45 min on 2 cores)
    python bench/scale.py --quick    # 1,000-trial grid, 500-model records (< 6 min)

1. Driver: a grid of real trial configs (the taxonomy's width x batch_size x lr x seed)
   runs through `sweeps.run.driver.run_jobs` with a placeholder trainable that returns at
   once, on an embedded Ray with 2 CPUs, so what is timed is the driver's and Tune's
   own work. Figures: driver peak RSS, wall time per trial (with and without start-up).
2. Analysis: a synthetic 100,000-row trials table (width x batch_size x lr x label_noise
   x seed, with its 200,000 seed pairs) stored as 100 Parquet files per table is loaded
   with `analysis.load_sweep` and classified with `analysis.phases`: once as a phase
   diagram (width x batch_size, 400 cells, other axes pooled; the < 2 s target) and once
   cell by cell (20,000 cells). A real sweep writes one file per model, so the per-file
   read cost is measured too (1,000 one-row files).
3. Consolidated tables (`bench/consolidated.py`): a synthetic 10,000-model sweep as the record
   files a sweep writes (55,000 files), opened and summarised before and after the
   driver's end-of-run compaction, the driver's start-up on a rerun, the sizes, and a
   smaller sweep on a local moto S3 server.

Prints one line per figure and returns them from `run(quick)`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import record
from bench.consolidated import run as table_figures

ROWS = 100_000
ONE_ROW_FILES = 1_000
RSS_LIMIT_MB = 2048  # targets of the scale issue
OVERHEAD_LIMIT_S = 0.1
LOAD_LIMIT_S = 2.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def grid_jobs(n_trials: int) -> list:
    """`n_trials` training jobs with real, validated configs and the driver's job shape."""
    from sweeps.run.plan import Job
    from sweeps.run.spec import SweepSpec
    from workers.jobs.runtime import RunContext

    seeds = 5
    lrs = [0.05, 0.1]
    widths = list(range(1, 11))
    batches = list(range(16, 16 + n_trials // (seeds * len(lrs) * len(widths))))
    values = {"dataset": "digits", "model": "resnet18k", "width": widths, "batch_size": batches,
              "lr": lrs, "seed": list(range(seeds)), "epochs": 1, "milestones": [1]}
    configs = SweepSpec("taxonomy", "bench", "bench", "unused", values).trials()
    assert len(configs) == n_trials, len(configs)
    context = asdict(RunContext(storage="unused", sweep="bench"))
    return [Job(c.trial_key, {"kind": "train", "trial": c.to_flat(), "context": context}) for c in configs]


def driver_figures(n_trials: int) -> dict[str, Any]:
    import ray
    from ray import tune

    from sweeps.run.driver import RunOptions
    from sweeps.run.execute import SHARD_SIZE, run_jobs

    def placeholder(config: dict[str, Any]) -> None:  # nested: Ray ships it by value
        tune.report({"status": "ok"})

    class Stamps(tune.Callback):
        def __init__(self) -> None:
            self.first = self.last = 0.0

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.last = time.perf_counter()
            self.first = self.first or self.last

    jobs = grid_jobs(n_trials)
    stamps = Stamps()
    start = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        with tempfile.TemporaryDirectory() as tune_dir:
            failed = run_jobs(jobs, finished=set(), options=RunOptions(), tune_dir=tune_dir, name="scale",
                              callbacks=[stamps], trainable=placeholder)
    finally:
        ray.shutdown()
    wall = time.perf_counter() - start
    return {
        "trials": n_trials,
        "failed": failed,
        "shards": -(-n_trials // SHARD_SIZE),
        "wall_s": round(wall, 1),
        "per_trial_s": round(wall / n_trials, 4),  # including Ray and Tune start-up
        "per_trial_steady_s": round((stamps.last - stamps.first) / max(1, n_trials - 1), 4),
        "driver_peak_rss_mb": round(peak_rss_mb()),
    }


def synthetic_sweep(folder: Path, rows: int, files: int) -> None:
    """A taxonomy-shaped sweep: trials (width x batch x lr x noise x seed) and seed pairs."""
    rng = np.random.default_rng(0)
    seeds = 5
    axes = {"width": np.arange(1, 21), "batch_size": 16 * np.arange(1, 21), "lr": np.geomspace(0.01, 0.5, 10),
            "label_noise": np.linspace(0.0, 0.4, rows // (seeds * 20 * 20 * 10))}
    mesh = np.meshgrid(*axes.values(), np.arange(seeds), indexing="ij")
    trials = pd.DataFrame({k: m.ravel() for k, m in zip([*axes, "seed"], mesh)})
    assert len(trials) == rows, len(trials)
    cell = trials.groupby(list(axes), sort=False).ngroup()
    trials.insert(0, "cell_key", cell.map("{:016x}".format))
    trials.insert(0, "trial_key", [f"{i:016x}" for i in range(rows)])
    trials.insert(0, "sweep", "synthetic")
    trials["dataset"], trials["model"], trials["epochs"] = "cifar10", "resnet18k", 100
    trials["status"] = np.where(rng.random(rows) < 0.01, "diverged", "ok")
    trials["train_loss"] = rng.lognormal(-3, 1, rows)
    trials["train_acc"] = 1 - rng.uniform(0, 0.2, rows)
    trials["test_loss"], trials["test_acc"] = rng.lognormal(-1, 0.3, rows), rng.uniform(0.5, 0.95, rows)
    trials["hessian_top_eigenvalue"] = rng.lognormal(3, 1, rows)
    trials["host"], trials["node_id"], trials["device"] = "node-1", "ab" * 28, "cuda"
    trials["written_at"] = "2026-01-01T00:00:00+00:00"
    first, second = np.triu_indices(seeds, 1)  # the 10 seed pairs of a cell
    starts = np.flatnonzero(trials["seed"].to_numpy() == 0)
    a, b = (starts[:, None] + first).ravel(), (starts[:, None] + second).ravel()
    pairs = trials.loc[a, ["sweep", "cell_key", *axes]].reset_index(drop=True)
    pairs["seed_a"], pairs["seed_b"] = trials["seed"].to_numpy()[a], trials["seed"].to_numpy()[b]
    pairs["status"], pairs["mc"] = "ok", rng.normal(0, 0.1, len(pairs))
    pairs["cka_softmax"], pairs["l2_distance"] = rng.uniform(0, 1, len(pairs)), rng.lognormal(2, 0.5, len(pairs))
    for name, table in (("trials", trials), ("pairs", pairs)):
        (folder / name).mkdir(parents=True)
        for i, part in enumerate(np.array_split(np.arange(len(table)), files)):
            table.iloc[part].to_parquet(folder / name / f"part-{i:04d}.parquet", index=False)
    spec = {"values": {k: [float(v) for v in vals] for k, vals in axes.items()} | {"seed": list(range(seeds))}}
    (folder / "spec.json").write_text(json.dumps(spec))


def analysis_figures(rows: int) -> dict[str, Any]:
    from analysis import load_sweep
    from analysis.phases import PHASES, cell_metrics, classify

    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big", Path(tmp) / "small"
        synthetic_sweep(big, rows, files=100)
        start = time.perf_counter()
        sweep = load_sweep(str(big))
        loaded = time.perf_counter()
        diagram = classify(cell_metrics(sweep, ["width", "batch_size"]))  # other axes pooled
        diagram_done = time.perf_counter()
        cells = classify(cell_metrics(sweep, ["width", "batch_size", "lr", "label_noise"]))
        classified = time.perf_counter()
        assert len(sweep.trials) == rows and cells["phase"].isin(PHASES).mean() > 0.5
        assert len(diagram) == 400

        # The layout a sweep writes: one small file per model.
        (small / "trials").mkdir(parents=True)
        for i, row in enumerate(sweep.trials.head(ONE_ROW_FILES).itertuples(index=False)):
            pd.DataFrame([row._asdict()]).to_parquet(small / "trials" / f"{i:016x}.parquet", index=False)
        start_files = time.perf_counter()
        assert len(load_sweep(str(small)).trials) == ONE_ROW_FILES
        per_file = (time.perf_counter() - start_files) / ONE_ROW_FILES
    return {
        "rows": rows,
        "cells": len(cells),
        "load_s": round(loaded - start, 2),
        "load_and_classify_diagram_s": round(diagram_done - start, 2),  # width x batch: 400 cells
        "classify_all_cells_s": round(classified - diagram_done, 2),  # every setting: 20,000 cells
        "one_row_file_read_ms": round(1000 * per_file, 2),
    }


def run(quick: bool) -> dict[str, Any]:
    """All figures: a 1,000-trial (quick) or 10,000-trial driver run, the analysis, the
    consolidated tables (see `bench.consolidated`)."""
    driver = driver_figures(1_000 if quick else 10_000)
    analysis = analysis_figures(ROWS)
    tables = table_figures(quick)
    return {
        "driver": driver,
        "analysis": analysis,
        "tables_local": tables["local"],
        "tables_s3": tables["s3"],
        "targets_met": {
            "driver_rss": driver["driver_peak_rss_mb"] < RSS_LIMIT_MB,
            "per_trial_overhead": driver["per_trial_s"] <= OVERHEAD_LIMIT_S,
            "analysis_100k_rows": analysis["load_and_classify_diagram_s"] < LOAD_LIMIT_S,
            **{f"tables_{k}": v for k, v in tables["targets_met"].items()},
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000-trial grid and 500-model records instead of 10,000")
    quick = parser.parse_args(argv).quick
    figures = record("scale", run(quick), quick)
    for part in ("driver", "analysis", "tables_local", "tables_s3", "targets_met"):
        for key, value in figures[part].items():
            print(f"{part}.{key}: {value}")
    return 0 if all(figures["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
