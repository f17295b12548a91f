"""GPU benchmark: packing, the trial loop's fast paths and the Hessian on one CUDA device.

    python bench/run.py --gpu [--out PATH]     # writes bench/results-gpu.json by default

Written to be run once, by hand, on a lent GPU machine that has PyTorch, pandas and
pyarrow but neither Ray nor scikit-learn, and no network: nothing here imports Ray (the
JSON records `ray_imported`), and the data are synthetic CIFAR-shaped tensors built as a
`workers.base.data.Splits` (10,000 random 3x32x32 images, random labels of 10 classes; speed
does not depend on the pixels). Each part, and each cell within a part, catches its own
failure and records it as `error`, so one failure keeps the other figures; a cell that
would start after the time budget (7 minutes; a compiled cell needs 2.5 minutes left) is
recorded as skipped, and the JSON is written after each part. Timings are wall seconds between `torch.cuda.synchronize()` calls
around a fixed number of steps, after warm-up steps of the same shapes.

(a) `packing`: packed against solo training through the product's code paths
(`bench.packing.Solo` and `Packed`: `workers.jobs.trial` and `workers.packing`), packs of 8
(seeds 0-7, the CUDA bound of `--pack auto`), ResNet18-k of widths 1-16 x batch sizes 16
and 128, 40 timed steps per model or pack. `ratio` is packed over solo models per
GPU-hour: the median over adjacent pairs (each side first in turn) of the 8 solo models'
seconds over the pack's.

(b) `throughput`: the product's trial loop (`workers.training.train.fit` with the hooks
of `workers.jobs.trial.training_hooks`, model and inputs through `FastPath.for_device`) against
a bare PyTorch loop doing the same by hand (layout, `torch.autocast`, `torch.compile`,
`torch.optim.SGD`), each on its own copy of the same initial model, for four fast-path
settings: fp32 in the default layout, channels_last, + bf16, + torch.compile. `ratio` is
trial samples/s over bare samples/s (median of adjacent pairs); `vs_fp32` is the trial
loop's samples/s over its own fp32 figure of the same cell.

(c) `hessian`: the top eigenvalue by `workers.metrics.hessian` (as `bench/hessian.py`)
against PyHessian's power iteration (`eigenvalues(maxIter=100, tol=1e-3)`, on the GPU),
on ResNet18-8 with 256 samples (the CPU benchmark's case a) and ResNet18-64 with 1,024,
at initialisation; both against a long Lanczos reference. Without PyHessian, ours alone
and `pyhessian: skipped`.

Without CUDA the same code runs a tiny CPU fallback (a few steps, small sizes, marked
`"device": "cpu (fallback, no CUDA)"`), so that it stays tested (tests/test_bench_gpu.py);
its figures say nothing about speed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bench.hessian import ours, reference_top
from bench.packing import Packed, Solo, cell_configs
from workers.base.data import Splits
from workers.base.models import build_model
from workers.catalog import TrialConfig
from workers.jobs.runtime import new_model, seed_everything
from workers.training.fast_path import FastPath

FALLBACK_DEVICE = "cpu (fallback, no CUDA)"
PARTS = ("packing", "throughput", "hessian")  # the JSON's order; they run packing, hessian, throughput
EPOCHS = 100  # the configs' epochs: more than any run here trains, so the lr stays constant
VARIANTS: dict[str, dict[str, Any]] = {  # fast-path settings of (b), the compiled one last (slowest to start)
    "fp32": {"channels_last": False},
    "channels_last": {"channels_last": True},
    "channels_last_bf16": {"channels_last": True, "precision": "bf16"},
    "channels_last_bf16_compile": {"channels_last": True, "precision": "bf16", "torch_compile": True},
}


@dataclass(frozen=True)
class Sizes:
    """How much each part runs: the GPU run, or the CPU fallback that only tests the code."""

    images: int  # synthetic training images
    pack_widths: tuple[int, ...]
    pack_batches: tuple[int, ...]
    members: int  # per pack
    warmup_steps: int
    steps: int  # timed steps per run
    pairs: int  # adjacent pairs of timed runs per cell
    throughput_cells: tuple[tuple[int, int], ...]  # (width, batch size)
    hessian_cases: tuple[tuple[int, int], ...]  # (width, samples)
    hessian_repeats: int  # seeds (start vectors) per method
    budget_s: float  # no cell starts later than this
    compile_s: float  # time a compiled cell needs left in the budget
    threads: int  # torch's CPU threads; 0 keeps its default


GPU = Sizes(images=10_000, pack_widths=(1, 2, 4, 8, 16), pack_batches=(16, 128), members=8, warmup_steps=5,
            steps=40, pairs=2, throughput_cells=((16, 128), (64, 128)), hessian_cases=((8, 256), (64, 1024)),
            hessian_repeats=3, budget_s=420, compile_s=150, threads=0)
CPU_FALLBACK = Sizes(images=256, pack_widths=(1, 2), pack_batches=(16,), members=2, warmup_steps=1, steps=2,
                     pairs=1, throughput_cells=((2, 16),), hessian_cases=((2, 32),), hessian_repeats=1,
                     budget_s=120, compile_s=0, threads=1)  # small CPUs: 1 thread is the fastest


class Budget:
    """Wall time since the start, against `Sizes.budget_s`."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def allows(self, need: float = 0.0) -> bool:
        return time.perf_counter() - self.start + need <= self.seconds


def guarded(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`fn(*args)`, or its failure as `{"error": ...}` (traceback on stderr): one failing
    part or cell must not lose the figures of the others."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 (every failure is a figure of this run)
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


def cell(name: str, allowed: bool, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """One cell of a part: its figures (printed as they come), its error, or skipped when
    the time budget does not allow it."""
    figures = guarded(fn, *args) if allowed else {"skipped": "time budget"}
    print(f"  {name}: {figures}", flush=True)
    return figures


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(wall seconds, result) of `fn(*args)`, the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn(*args)
    sync(device)
    return time.perf_counter() - start, out


def synthetic_splits(images: int, device: str) -> Splits:
    """CIFAR-shaped random images and labels (a tenth more as the test split), on `device`."""
    generator = torch.Generator().manual_seed(0)
    tests = max(images // 10, 1)
    x = torch.randn(images + tests, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (images + tests,), generator=generator)
    return Splits(x[:images].to(device), y[:images].to(device), x[images:].to(device), y[images:].to(device),
                  num_classes=10, n_noisy=0)


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    return round(statistics.median(a / b for a, b in zip(numerators, denominators)), 3)


def alternate(pair: int, sides: Sequence[str]) -> list[str]:
    """The sides of pair `pair` in run order: neither always goes first."""
    return list(sides) if pair % 2 == 0 else list(sides)[::-1]


# ------------------------------------------------------------------ (a) packing


def _trained_steps(trainer: Solo | Packed, splits: Splits, sizes: Sizes, batch: int, device: str) -> float:
    """Seconds of `sizes.steps` steps of `trainer`, after its warm-up steps."""
    warm, steps = sizes.warmup_steps * batch, sizes.steps * batch
    trainer.train(splits.x_train[:warm], splits.y_train[:warm], 0)
    seconds, _ = timed(device, trainer.train, splits.x_train[:steps], splits.y_train[:steps], 1)
    return seconds


def pack_cell(cfgs: Sequence[TrialConfig], splits: Splits, sizes: Sizes, device: str) -> dict[str, Any]:
    """Solo vs packed per-model step times of one (width, batch) cell."""
    batch = cfgs[0].train.batch_size
    runs = {"solo": lambda: sum(_trained_steps(Solo(c, splits, device), splits, sizes, batch, device) for c in cfgs),
            "packed": lambda: _trained_steps(Packed(cfgs, splits, device), splits, sizes, batch, device)}
    times: dict[str, list[float]] = {"solo": [], "packed": []}
    for pair in range(sizes.pairs):
        for side in alternate(pair, list(runs)):
            times[side].append(runs[side]())
    per_step = {side: statistics.median(t) / len(cfgs) / sizes.steps * 1e3 for side, t in times.items()}
    return {"ratio": median_ratio(times["solo"], times["packed"]),
            "solo_ms_per_step_per_model": round(per_step["solo"], 3),
            "packed_ms_per_step_per_model": round(per_step["packed"], 3)}


def packing(splits: Splits, sizes: Sizes, device: str, budget: Budget) -> dict[str, Any]:
    figures: dict[str, Any] = {"members": sizes.members, "steps": sizes.steps, "pairs": sizes.pairs}
    for width in sizes.pack_widths:
        for batch in sizes.pack_batches:
            cfgs = cell_configs(width, batch, range(sizes.members), dataset="cifar10", epochs=EPOCHS)
            figures[f"w{width}_b{batch}"] = cell(f"w{width}_b{batch}", budget.allows(), pack_cell, cfgs, splits,
                                                 sizes, device)
    return figures


# ------------------------------------------------------------------ (b) throughput


class Bare:
    """The loop a researcher would write, with `fast`'s settings done by hand."""

    def __init__(self, cfg: TrialConfig, splits: Splits, device: str, fast: FastPath) -> None:
        seed_everything(cfg.train.seed)
        model = new_model(cfg, splits, device)  # the trial's initial model
        self.channels_last, self.autocast, self.batch = fast.channels_last, fast.autocast, cfg.train.batch_size
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(model) if fast.compile else model
        o = cfg.optim
        self.optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)

    def train(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        """One shuffled pass over (x, y); `epoch` only matches `Solo.train`'s signature."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        precision = torch.autocast(x.device.type, dtype=self.autocast) if self.autocast else nullcontext()
        order = torch.randperm(len(y), device=x.device)
        for start in range(0, len(y) - self.batch + 1, self.batch):
            idx = order[start : start + self.batch]
            with precision:
                loss = F.cross_entropy(self.forward(x[idx]), y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def throughput_cell(cfg: TrialConfig, splits: Splits, sizes: Sizes, device: str) -> dict[str, Any]:
    """Trial loop vs bare loop on one model, batch size and fast path."""
    fast = FastPath.for_device(cfg.train, device)
    if fast.compile:
        torch.compiler.reset()  # compile afresh, as a new trial's process does, not on top of another width
    loops: dict[str, Solo | Bare] = {"bare": Bare(cfg, splits, device, fast), "trial": Solo(cfg, splits, device)}
    warm, steps = sizes.warmup_steps * cfg.train.batch_size, sizes.steps * cfg.train.batch_size
    for loop in loops.values():  # compiles here when asked
        loop.train(splits.x_train[:warm], splits.y_train[:warm], 0)
    times: dict[str, list[float]] = {"bare": [], "trial": []}
    for pair in range(sizes.pairs):
        for side in alternate(pair, list(loops)):
            times[side].append(timed(device, loops[side].train, splits.x_train[:steps], splits.y_train[:steps],
                                     pair + 1)[0])
    rate = {side: round(steps / statistics.median(t), 1) for side, t in times.items()}
    return {"bare_samples_per_s": rate["bare"], "trial_samples_per_s": rate["trial"],
            "ratio": median_ratio(times["bare"], times["trial"]), "ran": fast.columns()}


def throughput(splits: Splits, sizes: Sizes, device: str, budget: Budget) -> dict[str, Any]:
    cells: dict[str, dict[str, Any]] = {f"w{w}_b{b}": {} for w, b in sizes.throughput_cells}
    for variant, fast_settings in VARIANTS.items():  # every cell's uncompiled variants first
        need = sizes.compile_s if fast_settings.get("torch_compile") else 0.0
        for width, batch in sizes.throughput_cells:
            cfg = TrialConfig.from_flat({"dataset": "cifar10", "model": "resnet18k", "width": width,
                                         "batch_size": batch, "epochs": EPOCHS, "milestones": [EPOCHS],
                                         **fast_settings})
            cells[f"w{width}_b{batch}"][variant] = cell(f"w{width}_b{batch}.{variant}", budget.allows(need),
                                                        throughput_cell, cfg, splits, sizes, device)
    for variants in cells.values():
        plain = variants["fp32"].get("trial_samples_per_s")
        for figures in variants.values():
            if plain and "trial_samples_per_s" in figures:
                figures["vs_fp32"] = round(figures["trial_samples_per_s"] / plain, 3)
    return {"steps": sizes.steps, "pairs": sizes.pairs, **cells}


# ------------------------------------------------------------------ (c) Hessian


def pyhessian_top(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[float, int]:
    """PyHessian's top eigenvalue on x's device, and the HVPs it took (its product function
    wrapped, as `bench/hessian.py` counts them; PyHessian draws vectors on the GPU only
    when told `cuda=True`)."""
    module = importlib.import_module("pyhessian.hessian")
    original, calls = module.hessian_vector_product, [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    torch.manual_seed(seed)  # its start vector comes from the global generator
    module.hessian_vector_product = counted
    try:
        h = module.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=x.is_cuda)
        return float(h.eigenvalues(maxIter=100, tol=1e-3)[0][0]), calls[0]
    finally:
        module.hessian_vector_product = original
        for p in model.parameters():
            p.grad = None  # PyHessian leaves gradients with their graph behind


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def hessian_case(width: int, samples: int, splits: Splits, sizes: Sizes, device: str) -> dict[str, Any]:
    """Both methods' figures on one model, means over `hessian_repeats` seeds."""
    torch.manual_seed(0)
    model = build_model("resnet18k", width, (3, 32, 32), splits.num_classes).to(device).eval()
    x, y = splits.x_train[:samples], splits.y_train[:samples]
    reference = reference_top(model, x, y)
    runs: dict[str, list[tuple[float, float, int]]] = {"ours": [], "pyhessian": []}  # (seconds, value, HVPs)
    have_pyhessian = importable("pyhessian.hessian")
    for seed in range(sizes.hessian_repeats):  # alternate the methods
        seconds, (value, hvps, _) = timed(device, ours, model, x, y, "eig", seed)
        runs["ours"].append((seconds, value, hvps))
        if have_pyhessian:
            seconds, (value, hvps) = timed(device, pyhessian_top, model, x, y, seed)
            runs["pyhessian"].append((seconds, value, hvps))
    figures: dict[str, Any] = {"reference": float(f"{reference:.6g}")}
    for method, rows in runs.items():
        if rows:
            wall, value, hvps = (statistics.fmean(r[i] for r in rows) for i in range(3))
            figures |= {f"value_{method}": float(f"{value:.6g}"), f"hvps_{method}": hvps,
                        f"wall_{method}_s": round(wall, 3),
                        f"rel_err_{method}": float(f"{abs(value - reference) / abs(reference):.3g}")}
    if not have_pyhessian:
        return {**figures, "pyhessian": "skipped: pyhessian not installed"}
    return {**figures, "hvp_ratio": round(figures["hvps_pyhessian"] / figures["hvps_ours"], 3),
            "wall_ratio": round(figures["wall_pyhessian_s"] / figures["wall_ours_s"], 3)}


def hessian(splits: Splits, sizes: Sizes, device: str, budget: Budget) -> dict[str, Any]:
    figures: dict[str, Any] = {"repeats": sizes.hessian_repeats}
    for width, samples in sizes.hessian_cases:
        figures[f"w{width}_n{samples}"] = cell(f"w{width}_n{samples}", budget.allows(), hessian_case, width,
                                               samples, splits, sizes, device)
    return figures


# ------------------------------------------------------------------ the run


def settings(device: str) -> dict[str, Any]:
    """What the figures depend on besides the code: device, versions, TF32 switches."""
    cuda = device.startswith("cuda")
    return {"device": f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}" if cuda else FALLBACK_DEVICE,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "matmul_precision": torch.get_float32_matmul_precision()}


def run(out: Path) -> dict[str, Any]:
    """Every part on CUDA if there is one, else the CPU fallback; figures by part, written
    to `out` after each part too, so that a crash (a dead CUDA context) keeps the others."""
    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = GPU if device == "cuda" else CPU_FALLBACK
    budget = Budget(sizes.budget_s)
    if sizes.threads:
        torch.set_num_threads(sizes.threads)
    results: dict[str, Any] = {**settings(device), **dict.fromkeys(PARTS)}  # null: not run (yet)
    print(f"bench/gpu.py on {results['device']}", flush=True)
    splits = synthetic_splits(sizes.images, device)
    for name, part in (("packing", packing), ("hessian", hessian), ("throughput", throughput)):  # compile last
        print(f"{name} ...", flush=True)
        results[name] = guarded(part, splits, sizes, device, budget)
        write(out, results)
    results |= {"wall_s": round(time.perf_counter() - start, 1), "ray_imported": "ray" in sys.modules}
    write(out, results)
    return results


def write(out: Path, results: dict[str, Any]) -> None:
    out.write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results-gpu.json",
                        help="where to write the figures (JSON)")
    out = parser.parse_args().out
    run(out)
    print(f"written to {out}", flush=True)


if __name__ == "__main__":
    main()
