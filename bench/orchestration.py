"""Orchestration efficiency: the demo grid through Ray (2 at a time) vs one after another.

    python bench/orchestration.py [--quick]

Both runs execute the same worker code (`workers.trial.run_trial`, 1 torch thread per
trial) on the same configs into fresh storage. The baseline runs them sequentially in
this process (`--in-process`, after one warm-up trial so it too has torch and the data
loaded); the Ray run uses the driver with 2 concurrent trials on an embedded 2-CPU Ray
started beforehand (its start-up, a one-off per sweep, is reported on its own). Figures:
- speed-up = sequential wall time / Ray wall time (ideal: 2 on 2 CPUs),
- per-trial orchestration overhead: the mean gap between one trial's end and the next
  trial's start in the same worker process (Tune's scheduling, reporting, actor reuse),
  read off the records (a trial ends when its `trials` file is written and started
  `time_total_s` before that),
- once per worker process, not per trial: `worker_start_s`, from the sweep's launch to
  the worker's first trial (Tune's set-up, the actor's process, importing torch), and
  `first_trial_extra_s`, what the first trial in a process takes beyond the same trial
  in the warm sequential run (it imports torch's optimizer machinery, torch._dynamo,
  about 2 s, and pandas via pyarrow);
- `all_in_overhead_per_trial_s` = (2 x Ray wall - sum of in-trial times) / trials: all
  of the above and the idle tail, spread over the trials.
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


def timeline(folder: Path, launched: float):
    """Per trial: its key, worker pid, start and end (s after `launched`), time in the trial."""
    import pyarrow.parquet as pq

    rows = []
    for path in (folder / "trials").glob("*.parquet"):
        row = pq.read_table(path).to_pylist()[0]
        end = path.stat().st_mtime - launched
        rows.append({"key": row["trial_key"], "pid": row["pid"], "start": end - row["time_total_s"], "end": end,
                     "busy": row["time_total_s"]})
    return sorted(rows, key=lambda r: (r["pid"], r["start"]))


def worker_figures(rows: list[dict[str, Any]], warm_busy: dict[str, float]) -> dict[str, float]:
    """One-off and per-trial costs of the worker processes, from their trial timelines;
    `warm_busy`: in-trial seconds of each trial key in a process that was already warm."""
    workers: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        workers.setdefault(row["pid"], []).append(row)
    gaps = [b["start"] - a["end"] for trials in workers.values() for a, b in zip(trials, trials[1:])]
    extras = [trials[0]["busy"] - warm_busy[trials[0]["key"]] for trials in workers.values()]
    mean = lambda xs: round(sum(xs) / len(xs), 3) if xs else float("nan")  # noqa: E731
    return {"workers": len(workers), "worker_start_s": mean([t[0]["start"] for t in workers.values()]),
            "first_trial_extra_s": mean(extras), "overhead_per_trial_s": mean(gaps)}


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
        warm_rows = timeline(Path(tmp) / "seq" / "bench", 0.0)

        ray_spec = demo_spec(str(Path(tmp) / "ray"), quick)
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        figures["ray_start_s"] = round(time.perf_counter() - start, 2)
        start, launched = time.perf_counter(), time.time()
        run_sweep(ray_spec, configs, RunOptions(max_concurrent=2), log=lambda line: None)
        parallel = time.perf_counter() - start
        ray.shutdown()
        rows = timeline(Path(tmp) / "ray" / "bench", launched)
    figures["trials"] = len(configs)
    figures["sequential_s"] = round(sequential, 2)
    figures["ray_2_concurrent_s"] = round(parallel, 2)
    figures["speedup"] = round(sequential / parallel, 3)
    figures |= worker_figures(rows, {r["key"]: r["busy"] for r in warm_rows})
    figures["all_in_overhead_per_trial_s"] = round((2 * parallel - sum(r["busy"] for r in rows)) / len(configs), 3)
    figures["speedup_target_met"] = figures["speedup"] >= SPEEDUP_TARGET
    figures["overhead_target_met"] = figures["overhead_per_trial_s"] <= OVERHEAD_TARGET_S
    figures["all_in_overhead_target_met"] = figures["all_in_overhead_per_trial_s"] <= OVERHEAD_TARGET_S
    return figures


if __name__ == "__main__":
    from bench import main

    main(run, __doc__)
