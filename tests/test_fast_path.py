"""The CUDA fast path: off on the CPU (bit-identical training), and each mechanism real.

There is no GPU here, so the mechanisms are exercised on the CPU by building a
`FastPath` directly (channels_last, bf16 autocast and torch.compile all run on a CPU);
`FastPath.for_device` is what a trial uses, and it turns everything off there.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.base import checkpoints
from workers.base.data import DataConfig, prepare
from workers.base.models import build_model
from workers.catalog import TrialConfig
from workers.core.errors import ConfigError
from workers.core.storage import Storage
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial
from workers.training.fast_path import PLAIN, FastPath
from workers.training.train import TrainConfig, Update, train_epoch


def test_for_device_keeps_layout_and_compilation_to_cuda_and_precision_everywhere():
    asked = TrainConfig(precision="bf16", channels_last=True, torch_compile=True)
    cpu = FastPath.for_device(asked, "cpu")
    assert (cpu.channels_last, cpu.autocast, cpu.compile) == (False, torch.bfloat16, False)
    cuda = FastPath.for_device(asked, "cuda:0")
    assert (cuda.device_type, cuda.channels_last, cuda.autocast, cuda.compile) == ("cuda", True, torch.bfloat16, True)
    default = FastPath.for_device(TrainConfig(), "cuda")
    assert (default.channels_last, default.autocast, default.compile) == (True, None, False)
    assert default.columns() == {"ran_channels_last": True, "ran_precision": "fp32", "ran_compiled": False}
    assert FastPath.for_device(TrainConfig(), "cpu") == PLAIN


def ctx(path) -> RunContext:
    return RunContext(storage=str(path), sweep="test", threads=1)


def test_cpu_trials_ignore_layout_and_compilation_bit_for_bit(tiny, tmp_path):
    plain = TrialConfig.from_flat(tiny)
    asked = TrialConfig.from_flat({**tiny, "channels_last": True, "torch_compile": True})
    a, b = run_trial(plain, ctx(tmp_path / "a")), run_trial(asked, ctx(tmp_path / "b"))
    assert a["train_loss"] == b["train_loss"] and a["test_loss"] == b["test_loss"]
    assert (b["ran_precision"], b["ran_channels_last"], b["ran_compiled"]) == ("fp32", False, False)
    assert asked.trial_key == plain.trial_key  # how the same numbers are computed: same model


def test_bf16_is_honoured_on_the_cpu_and_keyed(tiny, tmp_path):
    plain = TrialConfig.from_flat(tiny)
    bf16 = TrialConfig.from_flat({**tiny, "precision": "bf16"})
    a, b = run_trial(plain, ctx(tmp_path / "a")), run_trial(bf16, ctx(tmp_path / "b"))
    assert b["ran_precision"] == "bf16" and b["precision"] == "bf16"
    assert b["train_loss"] != a["train_loss"]  # other arithmetic ...
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.1)  # ... the same training
    assert bf16.trial_key != plain.trial_key  # other numbers: another model


def test_a_trial_on_the_fast_path_hands_metrics_and_checkpoints_the_default_layout(tiny, tmp_path, monkeypatch):
    """On a GPU the trial trains in channels_last; forced here on the CPU (with late-phase
    members, whose update goes through the same path), the model that is evaluated,
    checkpointed and measured is back in the default layout."""
    monkeypatch.setattr(FastPath, "for_device",
                        classmethod(lambda cls, train, device: cls("cpu", channels_last=True)))
    flat = {**tiny, "width": 8, "epochs": 2, "late_phase.k": 2, "late_phase.t0": 1, "metrics": ["hessian"],
            "hessian.n_samples": 64, "hessian.trace_probes": 0}
    cfg = TrialConfig.from_flat(flat)
    row = run_trial(cfg, ctx(tmp_path))
    assert row["status"] == "ok" and row["ran_channels_last"] and row["hessian_top_eigenvalue"] > 0
    final = checkpoints.load(Storage.open(str(tmp_path)), cfg.trial_key, "final")["model"]
    assert all(t.is_contiguous() for t in final.values())
    conv = next(t for t in final.values() if t.dim() == 4 and t.shape[1] > 1)  # layout-ambiguous otherwise
    assert not conv.is_contiguous(memory_format=torch.channels_last)


def test_unknown_precision_names_the_field_and_the_choices():
    with pytest.raises(ConfigError, match="precision.*fp32, bf16"):
        TrialConfig.from_flat({"precision": "fp16"})


def one_epoch(model: nn.Module, fast: FastPath, x: torch.Tensor, y: torch.Tensor):
    """Train `model` for one epoch through `fast`; (the model, the stats, the last logits)."""
    fast.model(model)
    update = Update(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), fast=fast)
    stats = train_epoch(model, update, fast.inputs(x), y, batch_size=128, seed=0, epoch=0)
    return model, stats, update.loss(fast.inputs(x[:8]), y[:8])[1]


@pytest.fixture(scope="module")
def digits():
    splits = prepare(DataConfig(dataset="digits"))
    return splits.x_train, splits.y_train


def resnet() -> nn.Module:
    """Width 8: oneDNN's channels_last kernels lose precision on the CPU at width 2 (BatchNorm
    gradients off by 1.5e-2 relative, against 3e-6 for the default layout)."""
    torch.manual_seed(0)
    return build_model("resnet18k", 8, (1, 8, 8), 10)


def test_channels_last_computes_the_same_function_in_nhwc_layout(digits):
    x, y = digits
    gradients = []
    for fast in (PLAIN, FastPath(channels_last=True)):
        model = fast.model(resnet())
        loss, _ = Update(model, torch.optim.SGD(model.parameters(), lr=0.1), fast=fast).loss(fast.inputs(x[:128]), y[:128])
        gradients.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    (plain_loss, plain_grads), (nhwc_loss, nhwc_grads) = gradients
    assert nhwc_loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    for a, b in zip(plain_grads, nhwc_grads):  # other kernels sum in another order
        assert (a - b).norm() <= 1e-4 * b.norm()
    # and a whole epoch trains as before (rounding differences grow over the steps)
    _, plain_stats, _ = one_epoch(resnet(), PLAIN, x, y)
    _, nhwc_stats, _ = one_epoch(resnet(), FastPath(channels_last=True), x, y)
    assert nhwc_stats.train_loss == pytest.approx(plain_stats.train_loss, rel=1e-2)


def test_bf16_autocast_runs_the_forward_pass_in_bfloat16(digits):
    x, y = digits
    _, plain_stats, plain_logits = one_epoch(resnet(), PLAIN, x, y)
    _, bf16_stats, bf16_logits = one_epoch(resnet(), FastPath(autocast=torch.bfloat16), x, y)
    assert plain_logits.dtype == torch.float32 and bf16_logits.dtype == torch.bfloat16
    assert bf16_stats.train_loss != plain_stats.train_loss  # other arithmetic ...
    assert bf16_stats.train_loss == pytest.approx(plain_stats.train_loss, rel=0.05)  # ... same training


def test_compiled_training_matches_eager(digits):
    x, y = digits

    def mlp() -> nn.Module:
        torch.manual_seed(0)
        return build_model("mlp", 8, (1, 8, 8), 10)

    eager, eager_stats, _ = one_epoch(mlp(), PLAIN, x, y)
    compiled, compiled_stats, _ = one_epoch(mlp(), FastPath(compile=True), x, y)
    assert compiled_stats.train_loss == pytest.approx(eager_stats.train_loss, rel=1e-5)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
