"""The CUDA fast path: off on the CPU (bit-identical training), and each mechanism real.

There is no GPU here, so the mechanisms are exercised on the CPU by building a
`FastPath` directly (channels_last, bf16 autocast and torch.compile all run on a CPU);
`FastPath.for_device` is what a trial uses, and it turns everything off there.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.config import DataConfig, TrainConfig, TrialConfig
from workers.data import prepare
from workers.errors import ConfigError
from workers.fast_path import PLAIN, FastPath
from workers.models import build_model
from workers.train import Update, train_epoch
from workers.trial import RunContext, run_trial


def test_for_device_turns_everything_on_for_cuda_and_off_elsewhere():
    asked = TrainConfig(precision="bf16", channels_last=True, torch_compile=True)
    assert FastPath.for_device(asked, "cpu") == PLAIN
    cuda = FastPath.for_device(asked, "cuda:0")
    assert (cuda.device_type, cuda.channels_last, cuda.autocast, cuda.compile) == ("cuda", True, torch.bfloat16, True)
    default = FastPath.for_device(TrainConfig(), "cuda")
    assert (default.channels_last, default.autocast, default.compile) == (True, None, False)
    assert default.columns() == {"ran_channels_last": True, "ran_precision": "fp32", "ran_compiled": False}


def test_cpu_trials_are_bit_identical_whatever_the_fast_path_asks(tiny, tmp_path):
    plain = TrialConfig.from_flat(tiny)
    asked = TrialConfig.from_flat({**tiny, "precision": "bf16", "channels_last": True, "torch_compile": True})
    a = run_trial(plain, RunContext(storage=str(tmp_path / "a"), sweep="test", threads=1))
    b = run_trial(asked, RunContext(storage=str(tmp_path / "b"), sweep="test", threads=1))
    assert a["train_loss"] == b["train_loss"] and a["test_loss"] == b["test_loss"]
    assert (b["ran_precision"], b["ran_channels_last"], b["ran_compiled"]) == ("fp32", False, False)
    assert b["precision"] == "bf16"  # what was asked stays in the config columns
    # precision changes the numbers on a GPU, so it is part of the model's identity;
    # layout and compilation are not
    assert asked.trial_key != plain.trial_key
    layout_only = TrialConfig.from_flat({**tiny, "channels_last": False, "torch_compile": True})
    assert layout_only.trial_key == plain.trial_key


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
