"""Packed training against the same trials solo: models per hour on a CPU, 1 thread.

    python bench/packing.py [--quick]

Grid: digits (1,437 real 8x8 images), ResNet18-k of widths 2, 4, 8, 16 x batch sizes
32, 128, one epoch per model; a pack is the five seeds 0-4 of one cell. Both sides run
the product's code, nothing hand-written: solo is a trial's training (`seed_everything`,
`new_model`, its `FastPath`, `training_hooks`, `fit`, `release`); packed is the training
of `workers.jobs.pack_job.train_pack` without storage (each member built from its seed,
`pack`, `pack_fast_path`, `build_packed_optimizer`, `PackedUpdate`, `fit_packed`, then
every member taken back out as a solo model). The ratios time training (`fit`,
`fit_packed`): a trial trains for many epochs, over which building the models, packing
them and taking them out (`*_setup_s_per_model`, reported beside) spread out.

Per cell, before timing, each side trains two steps on the cell's shapes (oneDNN builds
its kernels per shape; the first optimizer step of the process imports torch._dynamo).
Then pairs of adjacent runs: pair i trains seed i mod 5 solo and the whole pack, each
side going first in turn (this VM's speed drifts within seconds; adjacent runs see the
same speed). The ratio is the median over pairs of (solo seconds of the model / the
pack's seconds per member), i.e. packed models per hour over solo models per hour, in
wall time (`ratio`) and in process CPU time (`cpu_ratio`: with one thread, the work done,
free of the time the VM's CPU is taken away); seconds per model are wall medians. The
headline is the geometric mean of the wall ratios at widths 2 and 4, batch 32 (target
>= 2.5x).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from workers.base.data import Splits
from workers.catalog import TrialConfig
from workers.jobs.runtime import new_model, seed_everything
from workers.jobs.trial import training_hooks
from workers.packing.modules import member_state, pack
from workers.packing.optim import build_packed_optimizer
from workers.packing.train import PackedUpdate, fit_packed, pack_fast_path
from workers.training.fast_path import FastPath
from workers.training.optim import lr_factor
from workers.training.train import fit

WIDTHS, BATCH_SIZES, SEEDS = (2, 4, 8, 16), (32, 128), tuple(range(5))
HEADLINE = ((2, 32), (4, 32))  # (width, batch) cells of the headline figure
TARGET = 2.5


class Solo:
    """One trial's model, fast path and training hooks, built as `workers.jobs.trial` builds them
    (also the trial side of bench/gpu.py)."""

    def __init__(self, cfg: TrialConfig, splits: Splits, device: str) -> None:
        seed_everything(cfg.train.seed)
        self.cfg, self.model = cfg, new_model(cfg, splits, device)
        self.fast = FastPath.for_device(cfg.train, device)
        self.fast.model(self.model)
        self.hooks = training_hooks(cfg, self.model, self.fast)

    def train(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        """Epoch `epoch` (0-based) on (x, y)."""
        fit(self.model, self.hooks.update, self.fast.inputs(x), y, hooks=self.hooks, batch_size=self.cfg.train.batch_size,
            seed=self.cfg.train.seed, epochs=epoch + 1, start_epoch=epoch)

    def finish(self) -> nn.Module:
        """The trained model in the default layout, as a trial records it."""
        return self.fast.release(self.model)


class Packed:
    """The members of `cfgs` as one packed network, built as `train_pack` builds it."""

    def __init__(self, cfgs: Sequence[TrialConfig], splits: Splits, device: str) -> None:
        self.cfgs, self.splits, self.device = cfgs, splits, device
        models = []
        for cfg in cfgs:
            seed_everything(cfg.train.seed)
            models.append(new_model(cfg, splits, device))  # initialised as its solo trial's
        self.packed = pack(models)
        self.fast = pack_fast_path(cfgs[0].train, device)
        self.fast.model(self.packed)  # before the optimizer holds the parameters
        optimizer = build_packed_optimizer(list(self.packed.parameters()), cfgs)
        self.update = PackedUpdate(self.packed, optimizer, self.fast)

    def train(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        """Epoch `epoch` of every member on (x, y), each on its own solo batches."""
        optimizer = self.update.optimizer
        fit_packed(self.update, x, [y] * len(self.cfgs), batch_size=self.cfgs[0].train.batch_size,
                   seeds=[c.train.seed for c in self.cfgs], epochs=epoch + 1, start_epoch=epoch,
                   base_lrs=optimizer.base_lrs, lr_factor=lr_factor(self.cfgs[0]), on_epoch=lambda stats: True)

    def finish(self) -> list[nn.Module]:
        """Every member as a solo model, as the pack job takes them out to record them."""
        self.fast.release(self.packed)
        members = []
        for g, cfg in enumerate(self.cfgs):
            model = new_model(cfg, self.splits, self.device)
            model.load_state_dict(member_state(self.packed, g, len(self.cfgs)))
            members.append(model)
        return members


def cell_configs(width: int, batch_size: int, seeds: Sequence[int], dataset: str = "digits",
                 epochs: int = 1) -> list[TrialConfig]:
    """The trials of one (width, batch) cell, one per seed: a pack's members."""
    return [TrialConfig.from_flat({"dataset": dataset, "model": "resnet18k", "width": width,
                                   "batch_size": batch_size, "epochs": epochs, "milestones": [epochs],
                                   "seed": seed}) for seed in seeds]


Times = tuple[float, float, float]  # training wall s, training CPU s, wall s to build and take out


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[float, float, Any]:
    """(wall s, process CPU s, result) of one call. With one thread the CPU time is the work
    done, free of the time this shared VM's CPU is taken away: the steadier figure."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _solo_run(cfg: TrialConfig, splits: Splits, x: torch.Tensor, y: torch.Tensor) -> Times:
    """One trial trained solo for one epoch."""
    build, _, solo = _timed(Solo, cfg, splits, "cpu")
    wall, cpu, _ = _timed(solo.train, x, y, 0)
    return wall, cpu, build + _timed(solo.finish)[0]


def _packed_run(cfgs: Sequence[TrialConfig], splits: Splits, x: torch.Tensor, y: torch.Tensor) -> Times:
    """The trials of `cfgs` trained as one pack for one epoch, then taken out."""
    build, _, packed = _timed(Packed, cfgs, splits, "cpu")
    wall, cpu, _ = _timed(packed.train, x, y, 0)
    return wall, cpu, build + _timed(packed.finish)[0]


def measure_cell(cfgs: Sequence[TrialConfig], splits: Splits, pairs: int) -> dict[str, float]:
    """Solo and packed figures of one cell: pair i is seed i mod 5 solo next to the pack."""
    x, y, batch, members = splits.x_train, splits.y_train, cfgs[0].train.batch_size, len(cfgs)
    _solo_run(cfgs[0], splits, x[: 2 * batch], y[: 2 * batch])  # warm-up: two steps of each side
    _packed_run(cfgs, splits, x[: 2 * batch], y[: 2 * batch])
    solo: list[Times] = []
    packed: list[Times] = []  # per member
    for pair in range(pairs):
        for side in ("solo", "packed") if pair % 2 == 0 else ("packed", "solo"):  # neither always first
            if side == "solo":
                solo.append(_solo_run(cfgs[pair % members], splits, x, y))
            else:
                packed.append(tuple(t / members for t in _packed_run(cfgs, splits, x, y)))

    def ratio(kind: int) -> float:  # median over pairs of solo / packed seconds per model
        return round(statistics.median(s[kind] / p[kind] for s, p in zip(solo, packed)), 3)

    def median(times: list[Times], kind: int) -> float:
        return round(statistics.median(t[kind] for t in times), 3)

    return {"ratio": ratio(0), "cpu_ratio": ratio(1), "solo_s_per_model": median(solo, 0),
            "packed_s_per_model": median(packed, 0), "solo_setup_s_per_model": median(solo, 2),
            "packed_setup_s_per_model": median(packed, 2)}


def headline(figures: dict[str, Any]) -> float:
    """Geometric mean of the headline cells' ratios."""
    ratios = [figures[f"w{w}_b{b}"]["ratio"] for w, b in HEADLINE]
    return round(math.exp(sum(math.log(r) for r in ratios) / len(ratios)), 2)


def pairs_for(width: int, quick: bool) -> int:
    """Pairs of runs per cell, each seed solo twice; `--quick` once at widths <= 4 and
    less on the wide cells, whose epochs are the slowest and which are not in the headline."""
    if not quick:
        return 2 * len(SEEDS)
    return len(SEEDS) if width <= 4 else 3 if width <= 8 else 2


def run(quick: bool = False) -> dict[str, Any]:
    """Figures keyed by cell (`w4_b32.ratio`, ...), then the headline; 1 thread."""
    from workers.base.data import prepare

    torch.set_num_threads(1)
    splits = prepare(cell_configs(WIDTHS[0], BATCH_SIZES[0], SEEDS)[0].data, "cpu")
    figures: dict[str, Any] = {"pack_size": len(SEEDS), "epochs_per_run": 1}
    for width in WIDTHS:
        for batch_size in BATCH_SIZES:
            pairs = pairs_for(width, quick)
            cell = measure_cell(cell_configs(width, batch_size, SEEDS), splits, pairs)
            figures[f"w{width}_b{batch_size}"] = {**cell, "pairs": pairs}
    figures["headline_ratio"] = headline(figures)
    figures["target_met"] = figures["headline_ratio"] >= TARGET
    return figures


def report(figures: dict[str, Any]) -> None:
    """The table of every cell, then the headline as the last line."""
    print("| width | batch | solo s/model | packed s/model | packed / solo models per hour | same in CPU time "
          "| build + take out s/model, solo | packed | pairs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for width in WIDTHS:
        for batch_size in BATCH_SIZES:
            c = figures[f"w{width}_b{batch_size}"]
            print(f"| {width} | {batch_size} | {c['solo_s_per_model']} | {c['packed_s_per_model']} "
                  f"| {c['ratio']}x | {c['cpu_ratio']}x | {c['solo_setup_s_per_model']} "
                  f"| {c['packed_setup_s_per_model']} | {c['pairs']} |")
    print(f"\npacking: {figures['headline_ratio']:.2f}x models per hour at width <= 4, batch 32 "
          f"(packs of {figures['pack_size']})")


if __name__ == "__main__":
    import argparse

    from bench import record

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer pairs of runs (< 3 min)")
    quick = parser.parse_args().quick
    report(record("packing", run(quick), quick))
