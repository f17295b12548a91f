"""A model whose training loss explodes is diverged by one stated rule
(`workers.training.train.loss_diverged`), solo and packed alike, also while the loss is still
finite (a sweep once recorded a model `ok` at a training loss of 5.7e29)."""

from __future__ import annotations

import math

import pytest
import torch

from workers.base.data import prepare
from workers.catalog import TrialConfig
from workers.core.storage import Storage
from workers.jobs.pack_job import run_pack
from workers.jobs.runtime import RunContext, new_model, seed_everything
from workers.jobs.trial import run_trial, training_hooks
from workers.training.train import EXPLODED_LOSS_FACTOR, divergence_reason, loss_diverged, train_epoch

# An MLP (no BatchNorm to rein it in) on digits at lr 100: its mean training loss is
# about 9e6 after the first epoch and 5e31 after the second, finite both times.
STEADY = {"dataset": "digits", "model": "mlp", "width": 16, "batch_size": 128, "epochs": 2, "milestones": [2],
          "lr": 0.05, "seed": 0, "metrics": []}
EXPLODES = {**STEADY, "lr": 100.0}


def ctx(path) -> RunContext:
    return RunContext(storage=str(path), sweep="test", threads=1)


@pytest.mark.parametrize(("loss", "classes", "diverged"), [
    (2.3, 10, False),  # a uniform guess
    (300.0, 10, False),  # 130 x ln 10: a run at too high an lr, not yet exploded
    (EXPLODED_LOSS_FACTOR * math.log(10) * 0.999, 10, False),
    (EXPLODED_LOSS_FACTOR * math.log(10) * 1.001, 10, True),
    (EXPLODED_LOSS_FACTOR * math.log(100) * 0.999, 100, False),  # the limit grows with ln(classes)
    (5.7e29, 10, True),  # the exploded model a sweep recorded `ok`
    (math.inf, 10, True),
    (math.nan, 100, True),
])
def test_the_rule_is_a_loss_not_finite_or_above_a_thousand_uniform_guesses(loss, classes, diverged):
    assert EXPLODED_LOSS_FACTOR == 1e3
    assert loss_diverged(loss, classes) is diverged
    assert "epoch 3" in divergence_reason(3) and "non-finite" in divergence_reason(3)


def test_the_exploding_model_stays_finite_so_only_the_stated_rule_catches_it():
    torch.set_num_threads(1)
    cfg = TrialConfig.from_flat(EXPLODES)
    splits = prepare(cfg.data, "cpu")
    seed_everything(cfg.train.seed)
    model = new_model(cfg, splits, "cpu")
    update = training_hooks(cfg, model).update
    stats = [train_epoch(model, update, splits.x_train, splits.y_train, cfg.train.batch_size, cfg.train.seed, epoch)
             for epoch in range(cfg.train.epochs)]
    assert all(math.isfinite(s.train_loss) and s.train_loss > 1e6 for s in stats), stats
    assert [s.classes for s in stats] == [10, 10] and all(s.diverged for s in stats)


def exploded_loss(path, cfg: TrialConfig) -> tuple[int, float]:
    """The last epoch in the model's history and its training loss: finite, above the
    limit, so the stated rule (not a NaN check) diverged it."""
    last = Storage.open(str(path)).read_table("history", cfg.trial_key).to_pandas().iloc[-1]
    assert math.isfinite(last["train_loss"]) and last["train_loss"] > EXPLODED_LOSS_FACTOR * math.log(10), last
    return int(last["epoch"]), float(last["train_loss"])


def test_a_solo_model_whose_loss_explodes_is_recorded_diverged_at_that_epoch(tmp_path, figures):
    row = run_trial(TrialConfig.from_flat(EXPLODES), ctx(tmp_path))
    assert row["status"] == "diverged" and row["epochs_done"] == 1 and "epoch 1" in row["error"], row
    assert math.isnan(row["train_loss"])
    epoch, loss = exploded_loss(tmp_path, TrialConfig.from_flat(EXPLODES))
    assert epoch == row["epochs_done"]
    steady = run_trial(TrialConfig.from_flat(STEADY), ctx(tmp_path))
    assert steady["status"] == "ok" and steady["epochs_done"] == 2
    figures("loss-explodes", "MLP at lr {lr:g}: loss {loss:.0e} after epoch {epoch} (finite), recorded diverged "
            "at epoch {diverged_at}, solo", lr=row["lr"], loss=loss, epoch=epoch, diverged_at=row["epochs_done"])


def test_a_packed_member_whose_loss_explodes_diverges_as_its_solo_run_and_alone(tmp_path, figures):
    cfgs = [TrialConfig.from_flat(STEADY), TrialConfig.from_flat(EXPLODES)]
    packed = run_pack(cfgs, [], ctx(tmp_path / "packed"))
    solo = [run_trial(c, ctx(tmp_path / "solo")) for c in cfgs]
    assert [r["pack_size"] for r in packed] == [2, 2]
    assert [r["status"] for r in packed] == [r["status"] for r in solo] == ["ok", "diverged"]
    assert [r["epochs_done"] for r in packed] == [r["epochs_done"] for r in solo] == [2, 1]
    assert packed[0]["train_loss"] == pytest.approx(solo[0]["train_loss"], rel=1e-4)
    epoch, loss = exploded_loss(tmp_path / "packed", cfgs[1])
    figures("loss-explodes", "packed: loss {loss:.0e} after epoch {epoch}, recorded diverged at epoch {diverged_at}, "
            "its pack-mate ok as solo", loss=loss, epoch=epoch, diverged_at=packed[1]["epochs_done"])
