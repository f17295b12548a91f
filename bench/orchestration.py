"""Orchestration efficiency: the demo grid through Ray (2 at a time) vs one after another.

    python bench/orchestration.py [--quick]

All runs execute the same worker code (`workers.jobs.trial.run_trial`, 1 torch thread per
trial, solo: `--pack off`, since this measures orchestration and `bench/packing.py`
measures packing) on the demo grid's 16 configs (its 12 epochs also under `--quick`: the target is
defined on this grid, and halving the epochs would double the weight of the one-off
costs) into fresh storage. Figures:
- speed-up = sequential wall time / Ray wall time. The baseline runs the trials one
  after another in this process, after one warm-up trial so it has torch and the data
  loaded; the Ray run uses the driver with 2 concurrent trials on an embedded 2-CPU Ray
  started beforehand (its start-up, a one-off per sweep, is reported on its own);
- the machine's ceiling = sequential wall time / the wall time of two warm processes
  each running half of the trials at the same time, without Ray: what any orchestrator
  could reach here (2 on two real, uncontended cores), and `speedup_of_ceiling`, the
  share of it Ray reaches;
- per-trial orchestration overhead: the mean gap between one trial's end and the next
  trial's start in the same worker process (Tune's scheduling, reporting, actor reuse),
  read off the records (a trial ends when its `trials` file is written and started
  `time_total_s` before that);
- once per worker process, not per trial: `worker_start_s`, from the sweep's launch to
  the worker's first trial (Tune's set-up, the actor's process, importing torch and
  ray.tune), and `first_trial_extra_s`, what the first trial in a process takes beyond
  the same trial in the warm sequential run (it imports torch's optimizer machinery,
  torch._dynamo, about 2 s);
- `all_in_overhead_per_trial_s` = (2 x Ray wall - sum of in-trial times) / trials: all
  of the above and the idle tail, spread over the trials.
"""

from __future__ import annotations

import multiprocessing
import queue
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

SPEEDUP_TARGET = 1.8
OVERHEAD_TARGET_S = 0.1
HALF_TIMEOUT_S = 1800  # a warm process that takes longer has failed: the bench reports it, not hangs


def demo_spec(storage: str):
    from sweeps.run.presets import preset_values
    from sweeps.run.spec import SweepSpec

    values = preset_values("taxonomy", "demo") | {"metrics": [], "measure_pairs": False}
    return SweepSpec("taxonomy", "demo", "bench", storage, values)


def warm_sequential(root: Path, configs: list, before: Callable[[], object] = lambda: None) -> float:
    """Warm this process with one trial, then run `configs` one after another in it;
    returns the seconds of the second part (records under `root / "seq"`)."""
    from sweeps.run.driver import RunOptions
    from sweeps.run.driver import run as run_sweep

    warm = demo_spec(str(root / "warm"))
    run_sweep(warm, warm.trials()[:1], RunOptions(in_process=True, pack="off"), log=lambda line: None)
    spec = demo_spec(str(root / "seq"))
    before()
    start = time.perf_counter()
    run_sweep(spec, configs, RunOptions(in_process=True, pack="off"), log=lambda line: None)
    return time.perf_counter() - start


def _half_of_the_trials(root: str, configs: list, barrier, seconds) -> None:
    seconds.put(warm_sequential(Path(root), configs, before=partial(barrier.wait, HALF_TIMEOUT_S)))


def two_warm_processes(root: Path, configs: list) -> float:
    """Wall time of two warm processes, started together, each running every other config
    (the grid alternates seeds, so both halves hold the same cells)."""
    context = multiprocessing.get_context("spawn")
    barrier, seconds = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_half_of_the_trials, args=(str(root / f"half{i}"), configs[i::2],
                                                                    barrier, seconds)) for i in range(2)]
    for process in processes:
        process.start()
    deadline, times = time.monotonic() + HALF_TIMEOUT_S, []
    try:
        while len(times) < len(processes):
            try:
                times.append(seconds.get(timeout=1))
            except queue.Empty:
                failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    raise RuntimeError(f"a warm process failed (exit codes {failed}) or gave no time "
                                       f"within {HALF_TIMEOUT_S} s") from None
        return max(times)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join()
        seconds.close()


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
    """`quick` is accepted for `bench/run.py` and changes nothing (see the docstring)."""
    import ray

    from sweeps.run.driver import RunOptions
    from sweeps.run.driver import run as run_sweep

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        configs = demo_spec(tmp).trials()
        sequential = warm_sequential(Path(tmp), configs)
        warm_rows = timeline(Path(tmp) / "seq" / "bench", 0.0)
        two_processes = two_warm_processes(Path(tmp), configs)

        ray_spec = demo_spec(str(Path(tmp) / "ray"))
        start = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        figures["ray_start_s"] = round(time.perf_counter() - start, 2)
        start, launched = time.perf_counter(), time.time()
        run_sweep(ray_spec, configs, RunOptions(max_concurrent=2, pack="off"), log=lambda line: None)
        parallel = time.perf_counter() - start
        ray.shutdown()
        rows = timeline(Path(tmp) / "ray" / "bench", launched)
    figures["trials"] = len(configs)
    figures["sequential_s"] = round(sequential, 2)
    figures["ray_2_concurrent_s"] = round(parallel, 2)
    figures["speedup"] = round(sequential / parallel, 3)
    figures["two_warm_processes_s"] = round(two_processes, 2)
    figures["machine_ceiling"] = round(sequential / two_processes, 3)
    figures["speedup_of_ceiling"] = round(two_processes / parallel, 3)
    figures |= worker_figures(rows, {r["key"]: r["busy"] for r in warm_rows})
    figures["all_in_overhead_per_trial_s"] = round((2 * parallel - sum(r["busy"] for r in rows)) / len(configs), 3)
    figures["speedup_target_met"] = figures["speedup"] >= SPEEDUP_TARGET
    figures["overhead_target_met"] = figures["overhead_per_trial_s"] <= OVERHEAD_TARGET_S
    figures["all_in_overhead_target_met"] = figures["all_in_overhead_per_trial_s"] <= OVERHEAD_TARGET_S
    return figures


if __name__ == "__main__":
    from bench import main

    main(run, __doc__)
