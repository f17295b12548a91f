"""What a sweep costs in device-hours, packed and solo, from a few timed training steps.

`estimate(trials, policy, device)` times a sample of the grid's training shapes on
`device` (random tensors of the dataset's shape: nothing is downloaded), fits one cost
model per kind of step,

    seconds per step = overhead + seconds per FLOP x FLOPs of the step,

one for solo steps and one for packed steps (a pack of G models: G times the FLOPs of a
member's step, one overhead), and projects every trial, pack, Bezier fit and per-model
metric of the grid with it. A model, not a timing of every shape, because the paper's
grid spans a factor of about 10^6 in FLOPs per step (width 1 at batch 16 to width 128 at
batch 1024): the wide shapes take minutes per step on a CPU. The sample is a ladder of
shapes of geometrically growing FLOPs, the widest at each rung, climbed until the budget
runs out: the cheap end pins the overhead, the dear (and wide) end the seconds per FLOP.
On a CPU a step is timed in process CPU time, which a busy machine inflates far less
than wall time; on a GPU in wall time after a synchronize.

FLOPs are counted, not assumed: multiply-adds of every convolution and linear layer in
one forward pass of the trial's own model, built on the meta device (no memory, no
arithmetic; `workers.base.footprint`), times 2 (a multiply-add is two FLOPs) and times 3 for
a training step (forward, input gradients, weight gradients). BatchNorm, ReLU and the
optimizer's elementwise work are left to the fitted overhead and slope. Evaluation and
metrics are priced in forward passes: each metric's registry entry carries its cost
model (`workers.metrics.Cost`), and one without is named as left out.

On a CPU the steps run with `threads` torch threads (default 1, what a sweep's trial
gets with `--cpus-per-trial 1`), so the hours are CPU core-hours.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sweeps.run.pairs import PairPlan, plan_pairs
from workers.base.data import DATASETS, Splits
from workers.base.footprint import TRAIN_PASSES, footprint
from workers.catalog import TrialConfig
from workers.core.registry import Registry
from workers.jobs.runtime import new_model, seed_everything
from workers.jobs.trial import training_hooks
from workers.metrics import METRICS
from workers.packing.modules import pack
from workers.packing.optim import build_packed_optimizer
from workers.packing.policy import PackPlan, PackPolicy, plan_packs
from workers.packing.train import PackedUpdate, pack_fast_path, train_packed_epoch
from workers.pair_metrics import PAIR_METRICS, pair_metrics
from workers.pair_metrics.pairwise import fit_bend, trainable_weights
from workers.training.augment import Augment
from workers.training.fast_path import FastPath
from workers.training.train import train_epoch

REPEATS = 3  # timed epochs per shape, after one warm-up epoch; the median counts
TARGET_EPOCH_S = 0.3  # steps per timed epoch are chosen to take about this long
MIN_STEPS, MAX_STEPS, FIRST_STEPS = 1, 20, 5
MIN_RUNG_RATIO = 2.0  # each timed shape has at least this many times the FLOPs of the last
MAX_RUNGS = 10  # shapes timed per kind at most; the rungs spread over the grid's FLOP range
SHARES = {"solo": 0.5, "packed": 0.4, "bezier": 0.1}  # of the timing budget; solo sets the headline slope


# ---------------------------------------------------------------- FLOPs and steps


def forward_macs(model: str, width: int, shape: tuple[int, ...], classes: int, batchnorm: bool = True) -> int:
    """Multiply-adds of one sample's forward pass through the conv and linear layers,
    counted on the model built on the meta device, so that a width-128 model costs
    nothing to count."""
    return footprint(model, width, tuple(shape), classes, batchnorm).macs


def forward_flops(cfg: TrialConfig) -> float:
    """FLOPs of one sample's forward pass of `cfg`'s model on its dataset's images."""
    meta = DATASETS.meta(cfg.data.dataset)
    m = cfg.model
    return 2.0 * forward_macs(m.model, m.width, tuple(meta["shape"]), meta["classes"], m.batchnorm)


def step_flops(cfg: TrialConfig, members: int = 1, batch_size: int | None = None) -> float:
    """FLOPs of one training step: a batch through forward and backward, for every
    member of a pack (a pack's grouped layers do exactly its members' arithmetic)."""
    batch = cfg.train.batch_size if batch_size is None else batch_size
    return TRAIN_PASSES * forward_flops(cfg) * batch * members


def steps_per_epoch(cfg: TrialConfig, batch_size: int | None = None) -> int:
    """Full batches per epoch: the loop drops the last partial batch (workers.training.train)."""
    batch = cfg.train.batch_size if batch_size is None else batch_size
    return cfg.data.n_train() // min(batch, cfg.data.n_train())


def steps_per_trial(cfg: TrialConfig) -> int:
    """Training steps of one trial: epochs x full batches of its training subset."""
    return cfg.train.epochs * steps_per_epoch(cfg)


# ---------------------------------------------------------------- the cost model


@dataclass(frozen=True)
class StepModel:
    """seconds per step = overhead_s + s_per_gflop x GFLOPs of the step."""

    overhead_s: float
    s_per_gflop: float

    def seconds(self, flops: float) -> float:
        return self.overhead_s + self.s_per_gflop * flops / 1e9


def fit_step_model(flops: Sequence[float], seconds: Sequence[float]) -> StepModel:
    """Least squares on relative error (each row divided by its measured time), so a
    1 ms shape counts as much as a 1 s one, with both coefficients kept >= 0: the exact
    two-variable non-negative solution is the unconstrained one if it is feasible, else
    the better of the two one-coefficient fits."""
    g = np.asarray(flops, dtype=float) / 1e9
    t = np.asarray(seconds, dtype=float)
    if len(t) == 1:
        return StepModel(0.0, float(t[0] / g[0]))
    a, b = np.stack([1 / t, g / t], axis=1), np.ones_like(t)
    candidates = [np.array([a[:, 0] @ b / (a[:, 0] @ a[:, 0]), 0.0]),
                  np.array([0.0, a[:, 1] @ b / (a[:, 1] @ a[:, 1])])]
    free = np.linalg.lstsq(a, b, rcond=None)[0]
    if (free >= 0).all():
        candidates.append(free)
    best = min(candidates, key=lambda x: float(np.sum((a @ x - b) ** 2)))
    return StepModel(float(best[0]), float(best[1]))


# ---------------------------------------------------------------- timing


@dataclass(frozen=True)
class Shape:
    """One kind of step to time: a solo step, a packed step of `members`, or a Bezier step."""

    kind: str  # "solo", "packed" or "bezier"
    width: int
    batch_size: int
    members: int
    flops: float  # per step
    configs: tuple[TrialConfig, ...] = field(compare=False, repr=False)


@dataclass(frozen=True)
class Timing:
    shape: Shape
    seconds: float  # median seconds per step (CPU time on a CPU, else wall time)
    steps: int  # steps per timed epoch
    wall_s: float  # wall seconds the whole timing took, model building included


def synthetic_splits(cfg: TrialConfig, n: int, device: str) -> Splits:
    """`n` random images of the dataset's shape with random labels: what a step costs
    does not depend on the pixels, and no dataset has to be downloaded."""
    meta = DATASETS.meta(cfg.data.dataset)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, *meta["shape"], generator=generator).to(device)
    y = torch.randint(meta["classes"], (n,), generator=generator).to(device)
    return Splits(x, y, x[:0], y[:0], meta["classes"], 0)


def _solo_runner(shape: Shape, device: str, steps: int) -> Callable[[int], object]:
    """One epoch of `steps` steps of the trial's own solo loop (its optimizer, fast path)."""
    cfg = shape.configs[0]
    splits = synthetic_splits(cfg, steps * shape.batch_size, device)
    seed_everything(cfg.train.seed)
    model = new_model(cfg, splits, device)
    fast = FastPath.for_device(cfg.train, device)
    fast.model(model)
    update = training_hooks(cfg, model, fast).update
    x, augment = fast.inputs(splits.x_train), Augment.of(cfg.data)
    return lambda epoch: train_epoch(model, update, x, splits.y_train, shape.batch_size, cfg.train.seed,
                                     epoch, augment)


def _packed_runner(shape: Shape, device: str, steps: int) -> Callable[[int], object]:
    """One epoch of the pack's loop, built as `workers.jobs.pack_job.train_pack` builds it."""
    cfgs = shape.configs
    splits = synthetic_splits(cfgs[0], steps * shape.batch_size, device)
    models = []
    for cfg in cfgs:
        seed_everything(cfg.train.seed)
        models.append(new_model(cfg, splits, device))
    packed = pack(models)
    fast = pack_fast_path(cfgs[0].train, device)
    fast.model(packed)
    optimizer = build_packed_optimizer(list(packed.parameters()), cfgs)
    update = PackedUpdate(packed, optimizer, fast)
    x, ys = fast.inputs(splits.x_train), [splits.y_train] * len(cfgs)
    seeds, augment = [c.train.seed for c in cfgs], Augment.of(cfgs[0].data)
    return lambda epoch: train_packed_epoch(update, x, ys, batch_size=shape.batch_size, seeds=seeds,
                                            epoch=epoch, lrs=optimizer.base_lrs, augment=augment)


def _bezier_runner(shape: Shape, device: str, steps: int) -> Callable[[int], object]:
    """One epoch of a pair's Bezier fit (`workers.pair_metrics.pairwise.fit_bend`) between two seeds."""
    cfg = shape.configs[0]
    options = cfg.pairs
    splits = synthetic_splits(cfg, steps * shape.batch_size, device)
    ends = []
    for seed in (0, 1):
        seed_everything(seed)
        ends.append(new_model(cfg, splits, device))
    w_a, w_b = trainable_weights(ends[0]), trainable_weights(ends[1])
    augment = Augment.of(cfg.data)
    return lambda epoch: fit_bend(ends[0], w_a, w_b, splits.x_train, splits.y_train, epochs=1, lr=options.bezier_lr,
                                  momentum=options.bezier_momentum, weight_decay=options.bezier_weight_decay,
                                  batch_size=shape.batch_size, seed=epoch, augment=augment)


RUNNERS = {"solo": _solo_runner, "packed": _packed_runner, "bezier": _bezier_runner}


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: str) -> Callable[[], float]:
    """The CPU time of this process on a CPU (CPU-hours are the work done, and other
    processes on a shared machine then inflate it far less than wall time), wall time
    on an accelerator (it is held for the whole step)."""
    return time.process_time if torch.device(device).type == "cpu" else time.perf_counter


def time_shape(shape: Shape, device: str, steps: int) -> Timing:
    """Median seconds per step over REPEATS epochs of `steps` steps, after a warm-up
    epoch that pays the first-call costs (allocator, oneDNN/cuDNN kernel choice)."""
    started = time.perf_counter()
    run, clock = RUNNERS[shape.kind](shape, device, steps), _clock(device)
    run(0)
    per_step = []
    for epoch in range(1, REPEATS + 1):
        _sync(device)
        start = clock()
        run(epoch)
        _sync(device)
        per_step.append((clock() - start) / steps)
    return Timing(shape, statistics.median(per_step), steps, time.perf_counter() - started)


def _steps(timings: list[Timing], flops: float) -> int:
    """Steps per timed epoch for a shape of `flops`: about TARGET_EPOCH_S by the fit of
    what was timed so far (with one timing: time proportional to FLOPs, an overestimate)."""
    if not timings:
        return FIRST_STEPS
    step_s = fit_step_model([t.shape.flops for t in timings], [t.seconds for t in timings]).seconds(flops)
    return min(MAX_STEPS, max(MIN_STEPS, math.ceil(TARGET_EPOCH_S / max(step_s, 1e-6))))


def _wall_cost(timings: list[Timing], shape: Shape, steps: int) -> float:
    """Predicted wall seconds to time `shape`: the fit of what was timed, turned into wall
    time by the last timing's wall-over-measured ratio (model building, a busy machine),
    plus half as a margin: on a CPU, large steps run at fewer FLOPs per second than small
    ones (memory traffic), so the fit of the smaller shapes runs low."""
    last = timings[-1]
    fit = fit_step_model([t.shape.flops for t in timings], [t.seconds for t in timings])
    inflation = last.wall_s / ((REPEATS + 1) * last.steps * max(last.seconds, 1e-9))
    return 1.5 * (REPEATS + 1) * steps * fit.seconds(shape.flops) * inflation


def _next_rung(ordered: list[Shape], last: Shape, ratio: float) -> Shape | None:
    """The widest shape with `ratio` to `ratio`^2 times the last one's FLOPs (the
    grid's cost sits in its widest models, so the slope is best measured on wide
    shapes), else the cheapest one above `ratio` times; None at the top."""
    above = [s for s in ordered if s.flops >= ratio * last.flops]
    if not above:
        return None
    window = [s for s in above if s.flops < ratio * above[0].flops]
    return max(window, key=lambda s: (s.width, -s.flops))


def ladder(shapes: list[Shape], device: str, budget_s: float, max_points: int = MAX_RUNGS,
           ratio: float | None = None) -> list[Timing]:
    """Time the cheapest shape, then shapes of geometrically growing FLOPs (`max_points`
    rungs would span the grid's range, unless `ratio` is given), while the predicted
    wall cost of the next fits in `budget_s` (the cheapest always runs). The budget decides how far up the grid the sample reaches (on a GPU: the
    top; on a CPU: the small and medium shapes); the model extrapolates the rest."""
    deadline = time.perf_counter() + budget_s
    ordered = sorted(shapes, key=lambda s: s.flops)
    span = ordered[-1].flops / ordered[0].flops
    ratio = ratio or max(MIN_RUNG_RATIO, span ** (1 / max(1, max_points - 1)))
    timings: list[Timing] = []
    shape: Shape | None = ordered[0]
    while shape is not None and len(timings) < max_points:
        steps = _steps(timings, shape.flops)
        if timings and time.perf_counter() + _wall_cost(timings, shape, steps) > deadline:
            break
        timings.append(time_shape(shape, device, steps))
        shape = _next_rung(ordered, shape, ratio)
    return timings


# ---------------------------------------------------------------- the grid's shapes


def solo_shapes(trials: Sequence[TrialConfig]) -> list[Shape]:
    """One solo shape per distinct (dataset, model, width, batch size) of the grid."""
    seen: dict[tuple, Shape] = {}
    for cfg in trials:
        key = (cfg.data.dataset, cfg.model.model, cfg.model.width, cfg.train.batch_size)
        if key not in seen:
            seen[key] = Shape("solo", cfg.model.width, cfg.train.batch_size, 1, step_flops(cfg), (cfg,))
    return list(seen.values())


def packed_shapes(plans: Sequence[PackPlan]) -> list[Shape]:
    """One packed shape per distinct (dataset, model, width, batch size, pack size) the plan uses."""
    seen: dict[tuple, Shape] = {}
    for plan in plans:
        cfg, size = plan.members[0], len(plan.members)
        key = (cfg.data.dataset, cfg.model.model, cfg.model.width, cfg.train.batch_size, size)
        if size > 1 and key not in seen:
            seen[key] = Shape("packed", cfg.model.width, cfg.train.batch_size, size, step_flops(cfg, size),
                              plan.members)
    return list(seen.values())


def bezier_batch(cfg: TrialConfig) -> int:
    return min(cfg.pairs.bezier_batch_size, cfg.data.n_train())


def bezier_shapes(pairs: Sequence[PairPlan]) -> list[Shape]:
    """One Bezier shape per distinct (dataset, model, width, curve batch size) with a curve."""
    seen: dict[tuple, Shape] = {}
    for pair in pairs:
        cfg = pair.a
        key = (cfg.data.dataset, cfg.model.model, cfg.model.width, bezier_batch(cfg))
        if pair.with_mc and key not in seen:
            batch = bezier_batch(cfg)
            seen[key] = Shape("bezier", cfg.model.width, batch, 1, step_flops(cfg, batch_size=batch), (cfg,))
    return list(seen.values())


# ---------------------------------------------------------------- per-model and per-pair work


def _costed(registry: Registry, names: Iterable[str], cfg: TrialConfig,
            section: str | None = None) -> tuple[float, list[str]]:
    """Forward-pass equivalents of the metrics `names` of `registry` on `cfg`, each from
    the cost model on its entry with its own options section (or all of them
    `section`), and the names of those that carry none."""
    passes, missing = 0.0, []
    for name in names:
        cost = registry.meta(name)["cost"]
        if cost is None:
            missing.append(name)
        else:
            passes += cost.passes(cfg.sections[section or name], cfg)
    return passes, missing


def metric_samples(cfg: TrialConfig) -> tuple[float, list[str]]:
    """Forward-pass equivalents (samples x passes) of one model's evaluation and metrics,
    and the names of selected metrics without a cost model."""
    n_train, n_test = cfg.data.n_train(), DATASETS.meta(cfg.data.dataset)["n_test"]
    passes, missing = _costed(METRICS, cfg.measure.metrics, cfg)
    return n_train + n_test + passes, missing  # final evaluation on both splits, then the metrics


def pair_samples(pair: PairPlan) -> tuple[float, list[str]]:
    """Forward-pass equivalents of one pair's metrics (the Bezier curve's fit is priced
    by the Bezier step model), and the names of those without a cost model."""
    return _costed(PAIR_METRICS, pair_metrics(pair.with_mc), pair.a, "pairs")


# ---------------------------------------------------------------- projection


@dataclass
class Estimate:
    """The timed shapes, the fitted models and the grid's projected seconds per part."""

    device: str
    threads: int
    n_trials: int
    wall_s: float
    timings: list[Timing]
    models: dict[str, StepModel]  # "solo", "packed" and "bezier" (the last two when timed)
    parts: dict[str, tuple[float, float]]  # part -> (packed seconds, solo seconds)
    notes: list[str]

    @property
    def unit(self) -> str:
        kind = torch.device(self.device).type
        return {"cpu": "CPU-hours", "cuda": "GPU-hours"}.get(kind, f"{kind}-hours")

    def total_hours(self) -> tuple[float, float]:
        """(packed, solo) device-hours of the whole grid."""
        return (sum(p for p, _ in self.parts.values()) / 3600, sum(s for _, s in self.parts.values()) / 3600)

    def format(self) -> str:
        """The lines to print under a dry run."""
        where = f"{self.device}, {self.threads} torch thread(s)" if self.unit == "CPU-hours" else self.device
        clock = "CPU time" if self.unit == "CPU-hours" else "wall time"
        lines = [f"cost estimate on {where}: {len(self.timings)} shapes timed in {self.wall_s:.0f} s "
                 f"(median {clock} per step)",
                 f"  {'kind':<7}{'width':>6}{'batch':>7}{'members':>8}{'GFLOP/step':>12}"
                 f"{'measured ms':>13}{'fitted ms':>11}{'error':>8}"]
        for t in self.timings:
            s = t.shape
            fitted = self.models[s.kind].seconds(s.flops)
            lines.append(f"  {s.kind:<7}{s.width:>6}{s.batch_size:>7}{s.members:>8}{s.flops / 1e9:>12.3f}"
                         f"{t.seconds * 1e3:>13.2f}{fitted * 1e3:>11.2f}{(fitted - t.seconds) / t.seconds:>+8.1%}")
        lines.append("cost per step (fit on relative error, coefficients >= 0):")
        for kind, model in self.models.items():
            lines.append(f"  {kind:<7}{model.overhead_s * 1e3:9.2f} ms + {model.s_per_gflop:.4g} s/GFLOP")
        packed, solo = self.total_hours()
        lines.append(f"projected {self.unit} of the grid ({self.n_trials} trials):")
        wide = max(len(part) for part in [*self.parts, "total"]) + 2
        lines.append(f"  {'part':<{wide}}{'packed':>12}{'solo':>12}")
        rows = [*((part, p / 3600, s / 3600) for part, (p, s) in self.parts.items()), ("total", packed, solo)]
        lines += [f"  {part:<{wide}}{_hours(p):>12}{_hours(s):>12}" for part, p, s in rows]
        lines.append(f"  solo / packed: {solo / packed:.2f}x" if packed > 0 else "  solo / packed: -")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _hours(value: float) -> str:
    """Thousands separated for a grid's thousands of hours, 3 significant digits below 100."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _training_seconds(trials: Sequence[TrialConfig], plans: Sequence[PackPlan], solo: StepModel,
                      packed: StepModel | None) -> tuple[float, float]:
    """(packed, solo) seconds of training: every trial alone, or every job of the plan."""
    solo_s = sum(steps_per_trial(c) * solo.seconds(step_flops(c)) for c in trials)
    packed_s = 0.0
    for plan in plans:
        cfg, size = plan.members[0], len(plan.members)
        model = solo if size == 1 or packed is None else packed
        packed_s += steps_per_trial(cfg) * model.seconds(step_flops(cfg, size))
    return packed_s, solo_s


def _bezier_seconds(pairs: Sequence[PairPlan], bezier: StepModel) -> float:
    """Seconds of every curve fit: `pairs.bezier_epochs` epochs at the curve's batch size."""
    total = 0.0
    for pair in pairs:
        if pair.with_mc:
            cfg, batch = pair.a, bezier_batch(pair.a)
            steps = cfg.pairs.bezier_epochs * steps_per_epoch(cfg, batch)
            total += steps * bezier.seconds(step_flops(cfg, batch_size=batch))
    return total


def _bezier_model(timings: list[Timing], solo: StepModel) -> StepModel:
    """A Bezier step does a training step's convolutions (same FLOPs) plus elementwise
    work on the weights (theta(t), its penalty, the bend's update): the solo seconds per
    FLOP and an overhead of its own, the median of the timed steps' excess over it."""
    excess = [t.seconds - solo.s_per_gflop * t.shape.flops / 1e9 for t in timings]
    return StepModel(max(0.0, statistics.median(excess)), solo.s_per_gflop)


def forward_seconds(cfg: TrialConfig, samples: float, solo: StepModel) -> float:
    """Seconds of `samples` forward passes, run in chunks of `eval_batch_size`: a third
    of a solo training step of that batch size per chunk (overhead included)."""
    chunk = cfg.measure.eval_batch_size
    return samples / chunk * solo.seconds(step_flops(cfg, batch_size=chunk)) / TRAIN_PASSES


def project(trials: Sequence[TrialConfig], plans: Sequence[PackPlan], pairs: Sequence[PairPlan],
            models: dict[str, StepModel]) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """Seconds of the grid per part, (packed, solo); evaluation, metrics and pairs run
    per model in both cases (a pack's members are measured one by one), so only
    training differs. Forward passes are priced by `forward_seconds`."""
    solo = models["solo"]
    n_jobs = len(plans)
    n_packed = sum(len(p.members) for p in plans if len(p.members) > 1)
    training = _training_seconds(trials, plans, solo, models.get("packed"))
    parts = {f"training: {n_packed} models in {sum(len(p.members) > 1 for p in plans)} packs, "
             f"{n_jobs - sum(len(p.members) > 1 for p in plans)} solo": training}
    metric_s, missing = 0.0, set()
    for cfg in trials:
        passes, unmodelled = metric_samples(cfg)
        metric_s += forward_seconds(cfg, passes, solo)
        missing.update(unmodelled)
    names = sorted({m for c in trials for m in c.measure.metrics} - missing)
    parts[f"evaluation + metrics ({', '.join(names) or 'none'})"] = (metric_s, metric_s)
    pair_s = 0.0
    for pair in pairs:
        passes, unmodelled = pair_samples(pair)
        pair_s += forward_seconds(pair.a, passes, solo)
        missing.update(unmodelled)
    notes = [f"metrics not modelled (left out): {', '.join(sorted(missing))}"] if missing else []
    with_mc = [p for p in pairs if p.with_mc]
    if pairs:
        fits = _bezier_seconds(pairs, models["bezier"]) if with_mc else 0.0
        label = f"seed pairs: {len(pairs)} (CKA, L2), {len(with_mc)} Bezier fits"
        if with_mc:
            epochs = sorted({p.a.pairs.bezier_epochs for p in with_mc})
            batches = sorted({bezier_batch(p.a) for p in with_mc})
            label += f" ({'/'.join(map(str, epochs))} ep. at batch {'/'.join(map(str, batches))})"
        parts[label] = (fits + pair_s, fits + pair_s)
    return parts, notes


def _assumption_notes(trials: Sequence[TrialConfig], timings: list[Timing], models: dict[str, StepModel],
                      threads: int, device: str) -> list[str]:
    """What the projection assumes beyond the timed steps, for the printout: the
    training step's passes and what the grid's metrics' cost models assume."""
    metrics = dict.fromkeys(m for c in trials for m in c.measure.metrics)
    assumed = [cost.assumes for cost in (METRICS.meta(m)["cost"] for m in metrics) if cost and cost.assumes]
    notes = ["; ".join([f"training step = {TRAIN_PASSES} forward passes of counted conv/linear FLOPs", *assumed])]
    if "bezier" in models:
        ratios = [t.seconds / models["solo"].seconds(t.shape.flops) for t in timings if t.shape.kind == "bezier"]
        notes.append("Bezier step = training step's FLOPs at the solo s/GFLOP plus its own overhead; timed at "
                     f"{'/'.join(f'{r:.2f}' for r in ratios)}x the fitted solo step of the same shape")
    top = max((t for t in timings if t.shape.kind == "solo"), key=lambda t: t.shape.flops)
    notes.append(f"largest timed solo step {top.shape.flops / 1e9:.3g} GFLOP (width {top.shape.width}, batch "
                 f"{top.shape.batch_size}): larger steps are extrapolated")
    if torch.device(device).type == "cpu":
        notes.append(f"{threads} torch thread(s) per step, as a trial with --cpus-per-trial {threads}")
    return notes


def _sensitivity(trials: Sequence[TrialConfig], timings: list[Timing], solo: StepModel) -> str:
    """How far the solo training hours move if every step ran at the seconds per GFLOP
    of the largest timed one (its time beyond the fitted overhead, over its FLOPs): on
    a CPU almost all of the grid's hours are in shapes beyond the timed range."""
    top = max((t for t in timings if t.shape.kind == "solo"), key=lambda t: t.shape.flops)
    rate = max(0.0, top.seconds - solo.overhead_s) / (top.shape.flops / 1e9)
    steep = StepModel(solo.overhead_s, rate)
    base = sum(steps_per_trial(c) * solo.seconds(step_flops(c)) for c in trials)
    alt = sum(steps_per_trial(c) * steep.seconds(step_flops(c)) for c in trials)
    return (f"sensitivity: the largest timed solo step ran at {rate:.4g} s/GFLOP (fit: {solo.s_per_gflop:.4g}); "
            f"at that rate solo training would be {alt / base:.2f}x the projection")


def estimate(trials: list[TrialConfig], policy: PackPolicy, device: str = "cpu", budget_s: float = 120.0,
             threads: int = 1) -> Estimate:
    """Time a sample of `trials`' shapes on `device` within about `budget_s` seconds,
    fit the step models and project the grid's device-hours, packed as `policy` says
    and solo. On a CPU the steps run on `threads` torch threads (restored after)."""
    started = time.perf_counter()
    saved_threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
    try:
        plans = plan_packs(trials, policy)
        pairs = plan_pairs(trials)
        timings, models = _time_and_fit(trials, plans, pairs, device, budget_s)
    finally:
        torch.set_num_threads(saved_threads)
    parts, notes = project(trials, plans, pairs, models)
    notes += [_sensitivity(trials, timings, models["solo"]), *_assumption_notes(trials, timings, models, threads, device)]
    return Estimate(device, threads, len(trials), time.perf_counter() - started, timings, models, parts, notes)


def _time_and_fit(trials: Sequence[TrialConfig], plans: Sequence[PackPlan], pairs: Sequence[PairPlan],
                  device: str, budget_s: float) -> tuple[list[Timing], dict[str, StepModel]]:
    """Warm the process up once (the first optimizer step imports torch._dynamo, ~2 s),
    then time each kind of step up its ladder, each kind's share of the budget rolling
    over to the kinds after it."""
    kinds = {"solo": solo_shapes(trials), "packed": packed_shapes(plans), "bezier": bezier_shapes(pairs)}
    kinds = {k: v for k, v in kinds.items() if v}
    deadline = time.perf_counter() + budget_s
    RUNNERS["solo"](min(kinds["solo"], key=lambda s: s.flops), device, MIN_STEPS)(0)
    timings: list[Timing] = []
    models: dict[str, StepModel] = {}
    waiting = {k: SHARES[k] for k in kinds}
    for kind, shapes in kinds.items():
        share = waiting[kind] / sum(waiting.values())
        del waiting[kind]
        budget = share * max(0.0, deadline - time.perf_counter())
        if kind == "bezier":  # its overhead, at the two cheapest shapes (the slope is the solo one)
            got = ladder(shapes, device, budget, max_points=2, ratio=MIN_RUNG_RATIO)
        else:
            got = ladder(shapes, device, budget)
        timings += got
        if kind == "bezier":
            models[kind] = _bezier_model(got, models["solo"])
        else:
            models[kind] = fit_step_model([t.shape.flops for t in got], [t.seconds for t in got])
    return timings, models
