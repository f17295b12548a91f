"""Training-batch augmentation: random crops and flips on the device, reproducible, resumable."""

from __future__ import annotations

import signal

import pytest
import torch
from torch.nn import functional as F

from workers.catalog import TrialConfig
from workers.core.errors import ConfigError
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial
from workers.training.augment import NONE, Augment


def batch(n: int = 200) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_each_crop_is_its_image_shifted_with_a_zero_border():
    x = batch()
    out = Augment(crop=2)(x, torch.Generator().manual_seed(1))
    padded = F.pad(x, (2, 2, 2, 2))
    seen = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])]
        assert len(matches) == 1, i
        seen.add(matches[0])
    assert len(seen) == 25  # every offset of the 5 x 5 occurs in 200 draws


def test_flips_mirror_about_half_of_the_images_left_right():
    x = batch()
    out = Augment(flip=True)(x, torch.Generator().manual_seed(1))
    flipped = [bool(torch.equal(out[i], x[i].flip(2))) for i in range(len(x))]
    assert all(flipped[i] or torch.equal(out[i], x[i]) for i in range(len(x)))
    assert 70 <= sum(flipped) <= 130


def test_no_augmentation_passes_the_batch_through_and_draws_nothing():
    x, generator = batch(), torch.Generator().manual_seed(1)
    before = generator.get_state()
    assert NONE(x, generator) is x
    assert torch.equal(generator.get_state(), before)  # plain training sees the batches it always did


def test_a_channels_last_batch_stays_channels_last():
    x = batch().contiguous(memory_format=torch.channels_last)
    out = Augment(crop=1, flip=True)(x, torch.Generator().manual_seed(1))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert Augment(crop=1)(batch(), torch.Generator().manual_seed(1)).is_contiguous()


def ctx(path) -> RunContext:
    return RunContext(storage=str(path), sweep="test", threads=1)


def test_augmented_training_is_reproducible_resumable_and_not_plain(tiny, tmp_path, kill_trial_at):
    flat = {**tiny, "epochs": 3, "milestones": [3], "augment_crop": 1, "augment_flip": True}
    cfg = TrialConfig.from_flat(flat)
    whole = run_trial(cfg, ctx(tmp_path / "whole"))
    assert run_trial(cfg, ctx(tmp_path / "again"))["train_loss"] == whole["train_loss"]
    assert kill_trial_at(flat, str(tmp_path / "cut"), cfg.trial_key, 2) == -signal.SIGKILL
    resumed = run_trial(cfg, ctx(tmp_path / "cut"))
    assert resumed["resumed_from_epoch"] == 2 and resumed["train_loss"] == whole["train_loss"]
    plain = TrialConfig.from_flat({**tiny, "epochs": 3, "milestones": [3]})
    assert plain.trial_key != cfg.trial_key
    assert run_trial(plain, ctx(tmp_path / "plain"))["train_loss"] != whole["train_loss"]


@pytest.mark.parametrize("crop", [-1, 8])
def test_a_crop_padding_outside_the_image_names_the_field_and_the_range(crop):
    with pytest.raises(ConfigError, match=r"augment_crop.*\[0, 8\) for digits"):
        TrialConfig.from_flat({"dataset": "digits", "augment_crop": crop})
