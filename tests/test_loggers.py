"""`--log tensorboard,csv,mlflow,wandb` against the real libraries: a sweep through real
Ray Tune with a solo trial and a pack of two, read back with TensorBoard's event reader,
pandas, MLflow's search API and W&B's offline run folders; the terminal keeps the
driver's lines and Ray's banner goes to `_tune/`. Bad `--log` input exits 2, writing
nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from sweeps.cli import main

GRID = ["--set", "width=2", "--set", "seed=0,1,2", "--set", "epochs=2", "--set", "milestones=1",
        "--set", "batch_size=128", "--set", "metrics=", "--set", "measure_pairs=false", "--pack", "2"]


def history(sweep, seed: int) -> tuple[str, pd.DataFrame]:
    """The trial key of the model with `seed` and its history record."""
    trials = pd.read_parquet(sweep / "trials")
    key = trials.loc[trials["seed"] == seed, "trial_key"].item()
    return key, pd.read_parquet(sweep / "history" / f"{key}.parquet")


def test_every_logger_sees_each_epoch_of_each_model(ray_session, tmp_path, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main("taxonomy", "", ["--storage", str(tmp_path), "--name", "logged", "--log",
                                 "tensorboard,csv,mlflow,wandb", *GRID]) == 0
    out = capsys.readouterr().out
    sweep = tmp_path / "logged"
    assert "View detailed results" not in out and "Configuration for experiment" not in out
    assert out.count("(pack of 2)  ok") == 2 and "] seed=2  ok" in out
    assert "progress: 3/3 done, 0 running, 0 pending, 0 failed | " in out
    (banner,) = (sweep / "_tune").glob("logged-*/output.log")
    assert "View detailed results here" in banner.read_text()

    keys, epochs = zip(*(history(sweep, seed) for seed in (0, 1, 2)))
    trials = {p.parent for p in (sweep / "_tune").glob("logged-*/*/progress.csv")}
    assert len(trials) == 2, "a Tune trial for the pack and one for the solo model"
    tags = {}
    for trial in trials:
        events = EventAccumulator(str(trial))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            tags[tag] = events.Scalars(tag)
    for key, frame in zip(keys, epochs):  # one scalar per epoch per model, at its epoch
        name = "ray/tune/history/train_loss" if key == keys[2] else f"ray/tune/history/{key}/train_loss"
        assert [e.step for e in tags[name]] == [1, 2]
        assert [e.value for e in tags[name]] == pytest.approx(frame["train_loss"].tolist(), rel=1e-6)
    assert f"ray/tune/members/{keys[0]}/test_acc" in tags and "ray/tune/test_acc" in tags  # the outcomes

    csv = pd.concat(pd.read_csv(trial / "progress.csv") for trial in trials)
    assert csv["history/train_loss"].dropna().tolist() == pytest.approx(epochs[2]["train_loss"].tolist())

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{sweep}/_tune/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["logged"])
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}
    assert sorted(runs["params.seed"]) == ["0,1", "2"] and sorted(runs["params.models"]) == ["1", "2"]
    client = mlflow.MlflowClient()
    pack = runs[runs["params.models"] == "2"].iloc[0]
    assert pack[f"tags.members/{keys[1]}"] == "seed=1"
    for key, frame in zip(keys[:2], epochs[:2]):
        steps = client.get_metric_history(pack["run_id"], f"history/{key}/train_loss")
        assert [(m.step, m.value) for m in steps] == list(zip([1, 2], frame["train_loss"]))
    assert not list(tmp_path.glob("**/mlruns")) and not Path("mlruns").exists(), "MLflow stays under _tune/"

    offline = list((sweep / "_tune").glob("logged-*/*/wandb/offline-run-*"))
    assert len(offline) == 2 and all(list(run.glob("run-*.wandb")) for run in offline)


@pytest.mark.parametrize("value, message", [
    ("tensorboard,bogus", "--log: unknown logger 'bogus'; allowed: tensorboard, csv, mlflow, wandb (any of them, comma-separated)"),
    ("wandb", '--log: wandb is not installed (no module wandb): pip install -e ".[wandb]"'),
])
def test_bad_log_names_the_option_and_writes_nothing(tmp_path, monkeypatch, capsys, value, message):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if W&B were not installed
    assert main("taxonomy", "", ["--storage", str(tmp_path / "store"), "--log", value, *GRID]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
    assert not (tmp_path / "store").exists()


def test_log_without_ray_is_refused(tmp_path, capsys):
    assert main("taxonomy", "", ["--storage", str(tmp_path / "store"), "--log", "csv", "--in-process", *GRID]) == 2
    assert "--log" in capsys.readouterr().err and not (tmp_path / "store").exists()
