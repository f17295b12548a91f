"""A plug-in is one file: the metric `register_gradnorm` declares below, with its cost
model, memory and live scalars on its registry entry, shows up in `--estimate`, the
memory check, the records and the live columns without a line anywhere else (and one
without a cost model, `register_weightnorm`, is named as left out of the estimate);
and every registered plug-in declares what the code around it reads.

The new metric is registered only in a child process (`python tests/test_plugins.py
STORAGE`): registered here, its options would join every config of this pytest process
and its name every list of metrics that other tests compare.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from workers.base.data import DATASETS
from workers.base.models import build_model
from workers.catalog import TrialConfig
from workers.metrics import live_columns
from workers.pair_metrics import PAIR_METRICS
from workers.pair_metrics import live_columns as pair_live_columns
from workers.training.optim import OPTIMIZERS, build_optimizer

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = 48  # the new metric's samples in the tiny sweep
TINY = ["--set", "dataset=digits", "--set", "model=mlp", "--set", "width=4", "--set", "batch_size=128",
        "--set", "epochs=1", "--set", "milestones=1", "--set", "seed=0", "--set", "measure_pairs=false"]


def register_gradnorm() -> None:
    """The whole plug-in: the norm of the training loss's gradient on samples drawn with
    replacement from the training set, taken in one batch."""
    from torch.nn import functional as F

    from workers.base.footprint import TRAIN_PASSES, Need
    from workers.core.config import Section, option, section
    from workers.metrics import METRICS, Cost, Measurement, MetricContext

    @section("gradnorm", prefix="gradnorm", training=False)
    @dataclass(frozen=True)
    class GradNormOptions(Section):
        samples: int = option(256, ge=1)  # drawn with replacement, so may exceed the training set
        seed: int = option(0, ge=0)

    def passes(options: GradNormOptions, cfg: TrialConfig) -> float:
        """One training pass over the samples."""
        return TRAIN_PASSES * options.samples

    def memory(options: GradNormOptions, cfg: TrialConfig) -> Need:
        """The model and its gradient; every layer output of the one batch, for backward."""
        return Need(2, options.samples, "gradnorm.samples")

    @METRICS.register("gradnorm", options=GradNormOptions, cost=Cost(passes, "gradnorm: one batch"), memory=memory,
                      live=("norm",))
    def measure(model: torch.nn.Module, options: GradNormOptions, context: MetricContext) -> Measurement:
        x, y = context.splits.x_train, context.splits.y_train
        pick = torch.randint(len(y), (options.samples,), generator=torch.Generator().manual_seed(options.seed))
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(F.cross_entropy(model(x[pick]), y[pick]), params)
        return Measurement({"norm": float(torch.cat([g.flatten() for g in grads]).norm())})


def register_weightnorm() -> None:
    """A plug-in without a cost model (`cost=None`): the estimate leaves it out and says so."""
    from workers.base.footprint import Need
    from workers.core.config import Section, option, section
    from workers.metrics import METRICS, Measurement, MetricContext

    @section("weightnorm", prefix="weightnorm", training=False)
    @dataclass(frozen=True)
    class WeightNormOptions(Section):
        scale: float = option(1.0, gt=0)

    @METRICS.register("weightnorm", options=WeightNormOptions, cost=None,
                      memory=lambda options, cfg: Need(1, 0, "weightnorm.scale"), live=())
    def measure(model: torch.nn.Module, options: WeightNormOptions, context: MetricContext) -> Measurement:
        return Measurement({"norm": options.scale * float(torch.cat([p.flatten() for p in model.parameters()]).norm())})


def child(storage: str) -> dict:
    """Register the metrics, then ask the estimate, the memory check and a real sweep
    about them, as a user's `python sweeps/taxonomy.py ...` would."""
    register_gradnorm()
    register_weightnorm()
    from analysis.load import load_sweep
    from sweeps.preflight.estimate import estimate, metric_samples
    from sweeps.run.cli import main
    from sweeps.run.spec import SweepSpec
    from workers.metrics import live_columns as live
    from workers.packing.policy import PackPolicy

    flat = {"dataset": "digits", "model": "mlp", "width": 4, "batch_size": 128, "epochs": 1, "milestones": [1],
            "metrics": ["gradnorm"], "gradnorm.samples": SAMPLES}
    trials = SweepSpec("taxonomy", "demo", "p", storage, flat).trials()
    cfg = trials[0]
    projection = estimate(trials, PackPolicy.parse("off", "cpu"), "cpu", budget_s=2)
    uncosted = SweepSpec("taxonomy", "demo", "w", storage, {**flat, "metrics": ["weightnorm"]}).trials()
    left_out = estimate(uncosted, PackPolicy.parse("off", "cpu"), "cpu", budget_s=2).format()
    with_it, without = metric_samples(cfg), metric_samples(TrialConfig.from_flat({**flat, "metrics": []}))

    refused = main("taxonomy", "", ["--in-process", "--storage", storage, "--name", "huge", *TINY,
                                    "--set", "metrics=gradnorm", "--set", "gradnorm.samples=1000000000000"])
    ran = main("taxonomy", "", ["--in-process", "--storage", storage, "--name", "p", *TINY, "--log", "csv",
                                "--set", "metrics=gradnorm,hessian,interpolation,surface",
                                "--set", f"gradnorm.samples={SAMPLES}", "--set", "hessian.n_samples=32",
                                "--set", "hessian.max_iter=4", "--set", "interpolation.points=3",
                                "--set", "interpolation.eval_samples=32", "--set", "surface.points=3",
                                "--set", "surface.dims=1", "--set", "surface.eval_samples=32"])
    measures = load_sweep(str(Path(storage) / "p")).measures
    outcomes = [line.split(",") for path in (Path(storage) / "p" / "_tune" / "runs").glob("*/outcome.csv")
                for line in path.read_text().splitlines()[:1]]  # each model's tracker run: the header
    return {"reported": outcomes, "left_out": left_out, "estimate": projection.format(), "metric_passes": with_it[0] - without[0], "missing": with_it[1],
            "refused": refused, "ran": ran, "live": list(live()),
            "measured": measures.loc[measures["metric"] == "gradnorm", "gradnorm_norm"].tolist(),
            "columns": list(measures.columns), "statuses": measures["status"].tolist()}


@pytest.fixture(scope="module")
def seen(tmp_path_factory) -> tuple[dict, str]:
    storage = tmp_path_factory.mktemp("plugins")
    run = subprocess.run([sys.executable, __file__, str(storage)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def test_a_new_metric_is_priced_by_the_estimate(seen):
    result, _ = seen
    assert result["metric_passes"] == 3 * SAMPLES and result["missing"] == []  # its own cost model, nothing else
    assert "evaluation + metrics (gradnorm)" in result["estimate"]
    assert "not modelled" not in result["estimate"] and "gradnorm: one batch" in result["estimate"]


def test_a_metric_without_a_cost_model_is_named_as_left_out(seen):
    result, _ = seen
    assert "metrics not modelled (left out): weightnorm" in result["left_out"]


def test_a_new_metric_is_in_the_memory_check(seen):
    result, stderr = seen
    assert result["refused"] == 2
    refusal = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(refusal) == 1 and refusal[0].startswith("error: gradnorm.samples: ")
    assert "to measure gradnorm" in refusal[0], refusal


def test_a_new_metric_is_recorded_and_reported_live(seen):
    result, _ = seen
    assert result["ran"] == 0 and set(result["statuses"]) == {"ok"}
    (norm,) = result["measured"]
    assert math.isfinite(norm) and norm > 0
    assert "gradnorm_norm" in result["live"]
    assert result["reported"] and all("gradnorm_norm" in header for header in result["reported"])  # its tracker run
    # every metric's live scalars are columns its measurement wrote
    assert set(result["live"]) <= set(result["columns"])


def test_pair_metrics_report_live_only_scalars_they_fill():
    for name in PAIR_METRICS.names():
        meta = PAIR_METRICS.meta(name)
        assert set(meta["live"]) <= set(meta["scalars"]), name
    assert set(pair_live_columns()) >= {"mc", "cka_softmax", "l2_distance"}
    assert {"hessian_top_eigenvalue", "hessian_trace"} <= set(live_columns())


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_an_optimizer_keeps_the_state_it_declares(name):
    """The memory check counts `state` parameter-sized tensors per parameter: what the
    optimizer holds after a step (momentum on, as by default)."""
    cfg = TrialConfig.from_flat({"dataset": "digits", "model": "mlp", "width": 4, "optimizer": name})
    meta = DATASETS.meta("digits")
    model = build_model("mlp", 4, meta["shape"], meta["classes"])
    optimizer = build_optimizer(model.parameters(), cfg)
    loss = model(torch.randn(8, *meta["shape"])).square().mean()
    loss.backward()
    optimizer.step(lambda: loss)
    for p in model.parameters():
        held = [t for t in optimizer.state[p].values() if isinstance(t, torch.Tensor) and t.shape == p.shape]
        assert len(held) == OPTIMIZERS.meta(name)["state"]


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1])))
