"""SWA: equal-weight averaging from the start epoch, BatchNorm update, real trials alone
and with late-phase weights, resume, bad input."""

from __future__ import annotations

import signal

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from workers.base import checkpoints
from workers.catalog import TrialConfig
from workers.core.errors import ConfigError
from workers.core.storage import Storage
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial
from workers.training.swa import Swa


def test_average_of_the_epoch_end_weights_from_the_start_epoch():
    model = nn.Linear(1, 1, bias=False).double()
    swa = Swa(model, start=2, batch_size=2)
    for epoch, value in enumerate([1.0, 2.0, 4.0, 6.0]):  # epoch 1 (1-based) is before the start
        with torch.no_grad():
            model.weight.fill_(value)
        swa.end_epoch(epoch)
    extras = swa.finish(torch.zeros(4, 1, dtype=torch.float64))
    assert model.weight.item() == 4.0  # (2 + 4 + 6) / 3
    assert int(extras["swa_n_averaged"]) == 3


def test_finish_recomputes_batchnorm_statistics_under_the_averaged_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.BatchNorm1d(2)).double()
    swa = Swa(model, start=1, batch_size=4)
    weights = [torch.randn(2, 3, dtype=torch.float64) for _ in range(2)]
    for epoch, w in enumerate(weights):
        with torch.no_grad():
            model[0].weight.copy_(w)
        swa.end_epoch(epoch)
    x = torch.randn(8, 3, dtype=torch.float64)
    swa.finish(x)
    mean_weight = (weights[0] + weights[1]) / 2
    features = [x[:4] @ mean_weight.T, x[4:] @ mean_weight.T]  # the two training-size batches
    torch.testing.assert_close(model[1].running_mean, sum(f.mean(0) for f in features) / 2)
    torch.testing.assert_close(model[1].running_var, sum(f.var(0) for f in features) / 2)


def ctx(path) -> RunContext:
    return RunContext(storage=str(path), sweep="test", threads=1)


def test_a_swa_trial_switches_the_lr_and_evaluates_the_average(tiny, tmp_path):
    cfg = TrialConfig.from_flat({**tiny, "epochs": 4, "milestones": [4], "swa.start": 3, "swa.lr_factor": 0.5})
    row = run_trial(cfg, ctx(tmp_path))
    assert row["status"] == "ok"
    history = pq.read_table(tmp_path / "history" / f"{cfg.trial_key}.parquet").to_pandas()
    assert history["lr"].tolist() == pytest.approx([0.05, 0.05, 0.025, 0.025])  # SWA lr from epoch 3
    trials = pq.read_table(tmp_path / "trials" / f"{cfg.trial_key}.parquet").to_pylist()[0]
    assert trials["swa_start"] == 3 and trials["swa_lr_factor"] == 0.5
    final = checkpoints.load(Storage.open(str(tmp_path)), cfg.trial_key, "final")
    assert int(final["swa_n_averaged"]) == 2
    plain = TrialConfig.from_flat({**tiny, "epochs": 4, "milestones": [4]})
    assert run_trial(plain, ctx(tmp_path))["test_loss"] != row["test_loss"]


def test_swa_with_late_phase_weights_resumes_exactly(tiny, tmp_path, kill_trial_at):
    """Killed after epoch 3 (members from epoch 1, averaging from epoch 2), then rerun."""
    flat = {**tiny, "epochs": 4, "milestones": [4], "late_phase.k": 2, "late_phase.t0": 1, "swa.start": 2}
    cfg = TrialConfig.from_flat(flat)
    whole = run_trial(cfg, ctx(tmp_path / "whole"))
    final = checkpoints.load(Storage.open(str(tmp_path / "whole")), cfg.trial_key, "final")
    assert int(final["swa_n_averaged"]) == 3 and "late_phase_members" in final
    assert kill_trial_at(flat, str(tmp_path / "cut"), cfg.trial_key, 3) == -signal.SIGKILL
    resumed = run_trial(cfg, ctx(tmp_path / "cut"))
    assert resumed["resumed_from_epoch"] == 3
    assert resumed["test_loss"] == whole["test_loss"] and resumed["train_loss"] == whole["train_loss"]


@pytest.mark.parametrize("flat", [
    {"swa.start": 3},  # tiny has 2 epochs
    {"swa.start": -1},
    {"swa.start": 1, "late_phase.k": 2, "late_phase.t0": 1},  # averaging before the members exist
])
def test_bad_swa_input_names_the_field(tiny, flat):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_flat({**tiny, **flat})
    assert info.value.field == "swa.start"
