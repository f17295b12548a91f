"""`--log tensorboard,csv,mlflow,wandb` against the real libraries: one run per model and
per seed pair, packed or not, read back with TensorBoard's event reader, MLflow's search
API (its default SQLite store) and W&B's offline run files; a killed and rerun pack
continues its runs without a duplicate run or epoch; `--in-process` logs the same runs;
a successful sweep's terminal shows only its own lines. Bad `--log` input exits 2,
writing nothing."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sweeps.run.cli import main
from workers.catalog import TrialConfig
from workers.packing.policy import pack_id

ROOT = Path(__file__).resolve().parent.parent
TINY = {"width": 2, "batch_size": 128, "lr": 0.05, "dataset": "digits", "model": "resnet18k"}
PACK = ["--set", "width=2", "--set", "seed=0,1,2", "--set", "batch_size=128", "--set", "lr=0.05",
        "--set", "metrics=", "--set", "pairs.mc_pairs=0", "--pack", "3"]  # three models, one job
GRID = [*PACK, "--set", "epochs=2", "--set", "milestones=1"]
ALL = "tensorboard,csv,mlflow,wandb"


def histories(sweep: Path) -> dict[int, pd.DataFrame]:
    """Each model's history record, by seed."""
    trials = pd.read_parquet(sweep / "trials")
    return {int(row.seed): pd.read_parquet(sweep / "history" / f"{row.trial_key}.parquet")
            for row in trials.itertuples()}


def tensorboard_runs(sweep: Path) -> dict[str, dict]:
    """Each run folder's scalars (tag -> [(step, value)]) and HParams params, by folder name."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    runs = {}
    for folder in sorted((sweep / "_tune" / "runs").iterdir()):
        events = EventAccumulator(str(folder))
        events.Reload()
        scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
        params = {}
        for content in events.PluginTagToContent("hparams").values():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                params = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                          for k, v in data.session_start_info.hparams.items()}
        runs[folder.name] = {"scalars": scalars, "params": params}
    return runs


def wandb_records(path: Path):
    """The records of an offline W&B run file (`run-<id>.wandb`): LevelDB's log format,
    a 7-byte file header, 32 KiB blocks of records split into chunks."""
    from wandb.proto import wandb_internal_pb2

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    pos, chunks = header, b""
    while pos + header <= len(data):
        if block - pos % block < header:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        if kind == 0:
            break
        chunks += data[pos + header:pos + header + length]
        pos += header + length
        if kind in (1, 4):  # a whole record, or its last chunk
            yield wandb_internal_pb2.Record.FromString(chunks)
            chunks = b""


def wandb_runs(sweep: Path) -> dict[str, dict]:
    """Each W&B run (by id, over every offline folder it has): name, group, kind, config
    and its history's steps and train losses."""
    runs: dict[str, dict] = {}
    for path in sorted((sweep / "_tune" / "runs").glob("*/wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "run":
                run = runs.setdefault(record.run.run_id, {"steps": [], "losses": []})
                config = {c.key: json.loads(c.value_json) for c in record.run.config.update}
                run.update(name=record.run.display_name, group=record.run.run_group,
                           kind=record.run.job_type, config=config)
            elif record.WhichOneof("record_type") == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                if "history/train_loss" in items:
                    run["steps"].append(record.history.step.num)
                    run["losses"].append(items["history/train_loss"])
    return runs


@pytest.fixture(autouse=True)
def no_tracking_uri_left_behind():
    """`mlflow.set_tracking_uri` (`mlflow_runs`) also sets MLFLOW_TRACKING_URI for
    subprocesses: a sweep a later test starts would log into this test's store."""
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)


def mlflow_runs(sweep: Path) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{sweep}/_tune/mlflow.db")
    return mlflow.search_runs(experiment_names=[sweep.name])


def mlflow_steps(run_id: str, metric: str) -> list[tuple[int, float]]:
    import mlflow

    return [(m.step, m.value) for m in sorted(mlflow.MlflowClient().get_metric_history(run_id, metric),
                                              key=lambda m: (m.step, m.timestamp))]


def test_every_tracker_shows_one_run_per_model_of_a_pack_and_per_pair(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main("taxonomy", "", ["--storage", str(tmp_path), "--name", "logged", "--log", ALL, *GRID]) == 0
    out = capsys.readouterr().out
    sweep = tmp_path / "logged"
    assert out.count("(pack of 3)  ok") == 6, out  # three models and their three pairs, in one job
    assert "View detailed results" not in out and "Configuration for experiment" not in out
    (banner,) = (sweep / "_tune").glob("logged-*/output.log")
    assert "View detailed results here" in banner.read_text()
    epochs = histories(sweep)

    board = tensorboard_runs(sweep)
    models = {name: run for name, run in board.items() if name.startswith("seed=")}
    assert sorted(name.split("-")[0] for name in models) == ["seed=0", "seed=1", "seed=2"]
    for name, run in models.items():  # per-epoch curves equal to the history records, scalar params
        seed = int(name.split("-")[0].removeprefix("seed="))
        assert [s for s, _ in run["scalars"]["history/train_loss"]] == [1, 2]
        assert [v for _, v in run["scalars"]["history/train_loss"]] == pytest.approx(
            epochs[seed]["train_loss"].tolist(), rel=1e-6)
        assert run["params"]["seed"] == seed and run["params"]["lr"] == 0.05 and run["params"]["pack_size"] == "3"
        assert [s for s, _ in run["scalars"]["test_acc"]] == [2]  # the outcome at the last epoch
    pairs = {name: run for name, run in board.items() if name.startswith("pair")}
    assert len(pairs) == 3 and all("cka_softmax" in run["scalars"] and "l2_distance" in run["scalars"]
                                   for run in pairs.values())

    csv = pd.read_csv(next((sweep / "_tune" / "runs").glob("seed=2-*")) / "progress.csv")
    assert csv["epoch"].tolist() == [1, 2]
    assert csv["train_loss"].tolist() == pytest.approx(epochs[2]["train_loss"].tolist())

    runs = mlflow_runs(sweep)
    assert len(runs) == 6 and set(runs["status"]) == {"FINISHED"}
    model_runs = runs[runs["tags.kind"] == "train"].sort_values("params.seed")
    assert model_runs["params.seed"].tolist() == ["0", "1", "2"]
    assert model_runs["tags.mlflow.runName"].tolist() == ["seed=0", "seed=1", "seed=2"]
    assert model_runs["tags.pack_id"].nunique() == 1 and set(model_runs["params.width"]) == {"2"}
    for seed, run_id in enumerate(model_runs["run_id"]):
        assert mlflow_steps(run_id, "history/train_loss") == list(zip([1, 2], epochs[seed]["train_loss"]))
    pair_runs = runs[runs["tags.kind"] == "pair"]
    assert sorted(pair_runs["tags.mlflow.runName"]) == ["pair  seeds 0,1", "pair  seeds 0,2", "pair  seeds 1,2"]
    assert pair_runs["metrics.l2_distance"].notna().all()
    assert not list(tmp_path.glob("**/mlruns")) and not Path("mlruns").exists(), "MLflow stays under _tune/"

    wandb = wandb_runs(sweep)
    assert len(wandb) == 6 and len({run["group"] for run in wandb.values()}) == 1  # one cell
    for run in (r for r in wandb.values() if r["kind"] == "train"):
        assert run["steps"] == [1, 2]
        assert run["losses"] == pytest.approx(epochs[run["config"]["seed"]]["train_loss"].tolist())


def test_a_killed_and_rerun_pack_continues_its_runs_without_a_duplicate(tmp_path):
    grid = [*PACK, "--set", "epochs=4", "--set", "milestones=3", "--set", "measure_pairs=false", "--log", ALL]
    keys = [TrialConfig.from_flat({**TINY, "seed": s, "epochs": 4, "milestones": [3]}).trial_key for s in (0, 1, 2)]
    env = {"WANDB_MODE": "offline", "LANDSCAPE_FAULT_KILL": f"{pack_id(keys)}:2"}
    killed = cli(tmp_path, *grid, "--max-retries", "0", env=env)  # the pack's worker dies after epoch 2
    assert killed.returncode == 1, killed.stdout
    failed = re.search(r"FAILED \(see (\S+)\)", killed.stdout)
    assert failed and failed.group(1).startswith(str(tmp_path / "s" / "_tune")), killed.stdout
    assert Path(failed.group(1)).is_file()
    rerun = cli(tmp_path, *grid, env={"WANDB_MODE": "offline"})  # resumes the pack from its checkpoint
    assert rerun.returncode == 0 and "0 already done, 3 to run" in rerun.stdout, rerun.stdout
    sweep = tmp_path / "s"

    runs = mlflow_runs(sweep)
    assert len(runs) == 3 and set(runs["status"]) == {"FINISHED"}
    for run_id in runs["run_id"]:
        steps = [step for step, _ in mlflow_steps(run_id, "history/train_loss")]
        assert steps == sorted(set(steps)) and {3, 4} <= set(steps) <= {1, 2, 3, 4}, steps
    board = tensorboard_runs(sweep)
    assert len(board) == 3
    for run in board.values():
        steps = [step for step, _ in run["scalars"]["history/train_loss"]]
        assert steps == sorted(set(steps)) and {3, 4} <= set(steps), steps
        assert len(run["scalars"]["test_acc"]) == 1
    for folder in (sweep / "_tune" / "runs").iterdir():
        epochs = pd.read_csv(folder / "progress.csv")["epoch"].tolist()
        assert epochs == sorted(set(epochs)) and epochs[-1] == 4
    wandb = wandb_runs(sweep)
    assert len(wandb) == 3, "the rerun reopened each model's W&B run"
    assert all(run["steps"] == sorted(set(run["steps"])) and run["steps"][-1] == 4 for run in wandb.values())

    again = cli(tmp_path, *grid, env={"WANDB_MODE": "offline"})  # nothing to run: nothing logged
    assert again.returncode == 0 and "3 already done, 0 to run" in again.stdout
    assert len(mlflow_runs(sweep)) == 3 and tensorboard_runs(sweep) == board


def test_in_process_logs_the_same_runs(tmp_path, capsys):
    assert main("taxonomy", "", ["--storage", str(tmp_path), "--name", "here", "--in-process",
                                 "--log", "tensorboard,csv", *GRID, "--set", "measure_pairs=false"]) == 0
    assert capsys.readouterr().out.count("(pack of 3)  ok") == 3
    board = tensorboard_runs(tmp_path / "here")
    assert sorted(name.split("-")[0] for name in board) == ["seed=0", "seed=1", "seed=2"]
    epochs = histories(tmp_path / "here")
    for name, run in board.items():
        seed = run["params"]["seed"]
        assert run["scalars"]["history/train_loss"] == [
            (e, pytest.approx(v, rel=1e-6)) for e, v in zip([1, 2], epochs[seed]["train_loss"])]
        assert (tmp_path / "here" / "_tune" / "runs" / name / "outcome.csv").is_file()


def test_a_successful_sweep_prints_only_its_own_lines(tmp_path):
    """Ray's token authentication on (as shipped, no RAY_AUTH_MODE), a pack and its pairs."""
    done = cli(tmp_path, *GRID, env={"RAY_AUTH_MODE": None})
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    own = re.compile(r"^(sweep s: |progress: |\[\d+/\d+\] |\w+: \d+ records, |done: |\s*cell_key |[0-9a-f]{16} )")
    assert [line for line in lines if not own.match(line)] == [], done.stdout
    assert "Traceback" not in done.stdout and "WARNING" not in done.stdout
    (log,) = (tmp_path / "s" / "_tune").glob("s-*/output.log")
    assert "Token authentication is enabled" in log.read_text()  # on, and said in the log


def cli(storage: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    """`python sweeps/taxonomy.py` with its own embedded Ray, as a user runs it (stdout and
    stderr together, as a terminal shows them); `env` values of None are unset."""
    full = {**os.environ, "RAY_AUTH_MODE": "disabled", **env}
    return subprocess.run([sys.executable, str(ROOT / "sweeps" / "taxonomy.py"), "--storage", str(storage),
                           "--name", "s", *args], env={k: v for k, v in full.items() if v is not None},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


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
