"""Orchestration efficiency: the demo grid through Ray (2 at a time) vs one after another.

    python bench/orchestration.py [--quick]

Both runs execute the same worker code (`workers.trial.run_trial`, 1 torch thread per
trial) on the same configs into fresh storage. The baseline runs them sequentially in
this process (`--in-process`, after one warm-up trial so it too has torch and the data
loaded); the Ray run uses the driver with 2 concurrent trials on an embedded 2-CPU Ray
started beforehand (its start-up, a one-off per sweep, is reported on its own). Figures:
- speed-up = sequential wall time / Ray wall time (ideal: 2 on 2 CPUs),
- per-trial orchestration overhead = (2 x Ray wall - sum of in-trial times) / trials,
  i.e. the time the 2 slots spent not running trial code: scheduling, actor start and
  reuse, each worker's first import of torch and the dataset.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

SPEEDUP_TARGET = 1.8
OVERHEAD_TARGET_S = 0.1


def demo_spec(storage: str, quick: bool):
    from sweeps.presets import preset_values
    from sweeps.spec import SweepSpec

    values = preset_values("taxonomy", "demo") | {"metrics": [], "measure_pairs": False}
    if quick:  # the same grid, half the epochs
        values |= {"epochs": 6, "milestones": [4]}
    return SweepSpec("taxonomy", "demo", "bench", storage, values)


def in_trial_seconds(path: str) -> float:
    from analysis import load_sweep

    return float(load_sweep(path).trials["time_total_s"].sum())


def run(quick: bool = False) -> dict[str, Any]:
    import ray

    from sweeps.driver import RunOptions
    from sweeps.driver import run as run_sweep

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        warm = demo_spec(str(Path(tmp) / "warm"), quick)
        run_sweep(warm, warm.trials()[:1], RunOptions(in_process=True), log=lambda line: None)
        seq_spec = demo_spec(str(Path(tmp) / "seq"), quick)
        configs = seq_spec.trials()
        start = time.perf_counter()
        run_sweep(seq_spec, configs, RunOptions(in_process=True), log=lambda line: None)
        sequential = time.perf_counter() - start

        ray_spec = demo_spec(str(Path(tmp) / "ray"), quick)
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        figures["ray_start_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        run_sweep(ray_spec, configs, RunOptions(max_concurrent=2), log=lambda line: None)
        parallel = time.perf_counter() - start
        ray.shutdown()
        busy = in_trial_seconds(str(Path(tmp) / "ray" / "bench"))
    figures["trials"] = len(configs)
    figures["sequential_s"] = round(sequential, 2)
    figures["ray_2_concurrent_s"] = round(parallel, 2)
    figures["speedup"] = round(sequential / parallel, 3)
    figures["overhead_per_trial_s"] = round((2 * parallel - busy) / len(configs), 3)
    figures["speedup_target_met"] = figures["speedup"] >= SPEEDUP_TARGET
    figures["overhead_target_met"] = figures["overhead_per_trial_s"] <= OVERHEAD_TARGET_S
    return figures


if __name__ == "__main__":
    from bench import main

    main(run, __doc__)
