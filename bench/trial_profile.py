"""Where the time of one demo trial goes (the README's "Where the time goes").

    python bench/trial_profile.py [--quick]

One trial of the demo preset (ResNet18-8, batch 32, digits, 12 epochs, Hessian and
interpolation), run by `workers.jobs.trial.run_trial` in this process on 1 thread, under
cProfile, after a warm-up trial in the same process (so imports, `torch._dynamo` and
the dataset's first load are not in it: those are paid once per worker process). The
profile is split by the functions that do each part, each taken with its callees:
training is `workers.training.train.fit` less the epoch checkpoints its callback writes,
checkpoints every `checkpoints.save`, the final evaluation `workers.jobs.trial._losses`, each
metric its registered `measure`, records `Storage.write_table`. Shares are of the whole
`run_trial`. `quick` changes nothing: the trial is the figure.
"""

from __future__ import annotations

import cProfile
import pstats
import tempfile
from typing import Any

WIDTH, BATCH_SIZE = 8, 32

# (part, file suffix, function name): the profiled functions each part is made of
PARTS = {
    "training": ("workers/training/train.py", "fit"),
    "hessian": ("workers/metrics/hessian.py", "measure"),
    "interpolation": ("workers/metrics/paths.py", "measure"),
    "checkpoints": ("workers/base/checkpoints.py", "save"),
    "final_evaluation": ("workers/jobs/trial.py", "_losses"),
    "records": ("workers/core/storage.py", "write_table"),
}
EPOCH_CALLBACK = ("workers/jobs/trial.py", "__call__")  # EpochLog: saves `last` inside `fit`
TOTAL = ("workers/jobs/trial.py", "run_trial")


def demo_trial(seed: int):
    from sweeps.run.presets import preset_values
    from workers.catalog import TrialConfig

    values = preset_values("taxonomy", "demo")
    return TrialConfig.from_flat({**values, "width": WIDTH, "batch_size": BATCH_SIZE, "seed": seed})


def cumulative(stats: pstats.Stats, where: tuple[str, str], caller: tuple[str, str] | None = None) -> float:
    """Seconds in the functions named `where` with their callees; with `caller`, only
    the calls made from it."""
    total = 0.0
    for (file, _, name), (_, _, _, cum, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if not (file.endswith(where[0]) and name == where[1]):
            continue
        if caller is None:
            total += cum
        else:
            total += sum(c[3] for (f, _, n), c in callers.items() if f.endswith(caller[0]) and n == caller[1])
    return total


def run(quick: bool = False) -> dict[str, Any]:
    """Seconds and share of each part (module docstring); `quick` is accepted for
    `bench/run.py`."""
    import torch

    from workers.jobs.runtime import RunContext
    from workers.jobs.trial import run_trial

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        run_trial(demo_trial(seed=1), RunContext(storage=folder, sweep="warm-up"))
        profiler = cProfile.Profile()
        profiler.runcall(run_trial, demo_trial(seed=0), RunContext(storage=folder, sweep="profiled"))
    stats = pstats.Stats(profiler)
    seconds = {part: cumulative(stats, where) for part, where in PARTS.items()}
    seconds["training"] -= cumulative(stats, PARTS["checkpoints"], caller=EPOCH_CALLBACK)
    total = cumulative(stats, TOTAL)
    return {"model": f"resnet18k-{WIDTH}", "batch_size": BATCH_SIZE, "trial_s": round(total, 2),
            **{f"{part}_s": round(s, 3) for part, s in seconds.items()},
            **{f"{part}_share": round(s / total, 4) for part, s in seconds.items()}}


if __name__ == "__main__":
    from bench import main

    main(run, __doc__)
