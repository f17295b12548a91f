"""What the landscape metrics cost relative to training, on the demo preset.

    python bench/metric_cost.py [--quick]

Runs the demo preset's 16 models and 8 seed pairs in this process (1 thread, the same
code a trial runs, solo (`--pack off`) so each model's training time is its own; also under `--quick`, as the target is defined on this preset and the
run takes about 1.5 minutes), then reads their records: per model, (Hessian +
interpolation time) / training time, target <= 0.25; per seed pair, the pair's time
(Bezier fit + CKA + L2) / training one model of its cell.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

TARGET = 0.25


def run(quick: bool = False) -> dict[str, Any]:
    """`quick` is accepted for `bench/run.py` and changes nothing (see the docstring)."""
    import torch

    from analysis import load_sweep
    from sweeps.run.driver import RunOptions
    from sweeps.run.driver import run as run_sweep
    from sweeps.run.presets import preset_values
    from sweeps.run.spec import SweepSpec

    torch.set_num_threads(1)
    values = preset_values("taxonomy", "demo")
    with tempfile.TemporaryDirectory() as tmp:
        spec = SweepSpec("taxonomy", "demo", "cost", tmp, values)
        run_sweep(spec, spec.trials(), RunOptions(in_process=True, pack="off"), log=lambda line: None)
        sweep = load_sweep(str(Path(tmp) / "cost"))
    trials, pairs = sweep.trials, sweep.pairs
    metric_s = trials["hessian_time_s"] + trials["interpolation_time_s"]
    fraction = metric_s / trials["time_train_s"]
    train_per_cell = trials.groupby("cell_key")["time_train_s"].mean()
    pair_ratio = pairs["time_total_s"].to_numpy() / train_per_cell.loc[pairs["cell_key"]].to_numpy()
    by_batch = fraction.groupby(trials["batch_size"]).agg(["min", "max"]).round(2)
    most = trials.loc[fraction.idxmax()]
    figures = {
        "models": len(trials),
        "train_s_mean": round(float(trials["time_train_s"].mean()), 2),
        "hessian_s_mean": round(float(trials["hessian_time_s"].mean()), 2),
        "interpolation_s_mean": round(float(trials["interpolation_time_s"].mean()), 2),
        "metric_fraction_mean": round(float(fraction.mean()), 3),
        "metric_fraction_max": round(float(fraction.max()), 3),
        "metric_fraction_max_at": {"width": int(most["width"]), "batch_size": int(most["batch_size"])},
        "metric_fraction_by_batch": {str(b): [float(lo), float(hi)] for b, (lo, hi) in by_batch.iterrows()},
        "pair_vs_training_mean": round(float(pair_ratio.mean()), 3),
        "pair_vs_training_max": round(float(pair_ratio.max()), 3),
    }
    figures["target_met"] = figures["metric_fraction_max"] <= TARGET
    return figures


if __name__ == "__main__":
    from bench import main

    main(run, __doc__)
