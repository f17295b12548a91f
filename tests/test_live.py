"""A running job's epochs: each one reported as training goes (solo, and per member of a
pack), a progress file per running job (local and S3) that `status` reads, and the
records exactly as without any of it. Real training on digits, no Ray."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict

import pandas as pd
import pytest

import workers.core.live as live
from analysis import load_sweep
from analysis.status import format_status
from bench.s3server import uri
from sweeps.run.plan import plan_jobs
from workers.catalog import TrialConfig
from workers.core.live import JobProgress, Unit, running_jobs
from workers.core.storage import Storage
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial
from workers.jobs.tune_entry import Background, run_job
from workers.packing.policy import PackPlan

TINY = {"dataset": "digits", "model": "resnet18k", "width": 2, "batch_size": 128, "epochs": 3, "milestones": [2],
        "lr": 0.05, "metrics": []}
AXES = ("width", "seed")
# Columns that differ between two runs of the same training: when and where it ran.
RUN_COLUMNS = {"epoch_time_s", "time_train_s", "time_eval_s", "time_total_s", "written_at", "pid", "host",
               "node_id", "code_version"}


def context(path) -> RunContext:
    return RunContext(storage=str(path), sweep="live", threads=1, axes=AXES)


def job(cfgs: list[TrialConfig], path) -> dict:
    """The job the driver would send for `cfgs` (a solo trial or a pack)."""
    return plan_jobs([PackPlan(tuple(cfgs), "")], [], asdict(context(path)))[0].config


class Collect:
    """A `report` that keeps each result and what the storage's progress files said then."""

    def __init__(self, storage: Storage) -> None:
        self.storage, self.results, self.seen = storage, [], []

    def __call__(self, result: dict) -> None:
        self.results.append(result)
        self.seen.append(running_jobs(self.storage))


def records(path, table: str, key: str) -> pd.DataFrame:
    frame = pd.read_parquet(path / table / f"{key}.parquet")
    return frame.drop(columns=[c for c in frame.columns if c in RUN_COLUMNS])


def test_a_trial_reports_each_epoch_as_its_history_and_writes_the_same_records(tmp_path, monkeypatch):
    monkeypatch.setattr(live, "WRITE_EVERY_S", 0.0)  # a progress file at every epoch
    cfg = TrialConfig.from_flat({**TINY, "seed": 0})
    collect = Collect(Storage.open(str(tmp_path / "watched")))
    row = run_job(job([cfg], tmp_path / "watched"), collect)
    run_trial(cfg, RunContext(storage=str(tmp_path / "plain"), sweep="live", threads=1))

    history = pd.read_parquet(tmp_path / "watched" / "history" / f"{cfg.trial_key}.parquet")
    assert [r["epoch"] for r in collect.results] == [1, 2, 3] == history["epoch"].tolist()
    assert [r["timesteps_total"] for r in collect.results] == [1, 2, 3]  # Tune's loggers plot against it
    for result, epoch in zip(collect.results, history.itertuples()):
        figures = result["history"][cfg.trial_key]  # keyed as a pack's are
        assert set(figures) == {"lr", "train_loss", "train_acc", "epoch_time_s"}  # no NaN step sizes
        assert figures["train_loss"] == epoch.train_loss and figures["lr"] == epoch.lr
    assert [jobs[0]["epoch"] for jobs in collect.seen] == [1, 2, 3]
    assert collect.seen[0][0]["units"] == [{"key": cfg.trial_key, "kind": "train", "values": {
        "width": 2, "batch_size": 128, "seed": 0}}]
    assert collect.seen[-1][0]["figures"][cfg.trial_key]["train_loss"] == history["train_loss"].iloc[-1]
    assert running_jobs(Storage.open(str(tmp_path / "watched"))) == [], "its progress file goes with the job"
    assert row["status"] == "ok"
    for table in ("trials", "history"):  # the records are what they are without watching
        pd.testing.assert_frame_equal(records(tmp_path / "watched", table, cfg.trial_key),
                                      records(tmp_path / "plain", table, cfg.trial_key))


def test_a_pack_reports_each_member_under_its_trial_key(tmp_path):
    cfgs = [TrialConfig.from_flat({**TINY, "seed": s}) for s in (0, 1)]
    collect = Collect(Storage.open(str(tmp_path)))
    summary = run_job(job(cfgs, tmp_path), collect)
    assert [r["epoch"] for r in collect.results] == [1, 2, 3]
    for cfg in cfgs:
        history = pd.read_parquet(tmp_path / "history" / f"{cfg.trial_key}.parquet")
        reported = [r["history"][cfg.trial_key]["train_loss"] for r in collect.results]
        assert reported == history["train_loss"].tolist()
        assert summary["members"][cfg.trial_key]["status"] == "ok"  # the outcome, by the same key
    assert summary["epochs_done"] == 3
    started = collect.seen[0][0]  # the file written when the pack started
    assert started["kind"] == "pack" and started["epochs"] == 3
    assert [u["values"]["seed"] for u in started["units"]] == [0, 1]


def test_a_progress_file_is_throttled_and_a_failed_write_does_not_stop_training(tmp_path, capsys):
    storage = Storage.open(str(tmp_path))
    progress = JobProgress(storage, "job", "train", [Unit("k", "train", {"width": 2})], 10).start()
    progress.end_epoch(1, {"k": {"train_loss": 0.5}})  # within WRITE_EVERY_S of the start: not written
    assert running_jobs(storage)[0]["epoch"] == 0
    progress.end_epoch(10, {"k": {"train_loss": 0.25}})  # the last epoch always is
    assert running_jobs(storage)[0]["figures"] == {"k": {"train_loss": 0.25}}
    progress.finish()
    progress.finish()  # twice is harmless: a failing job's way out
    assert running_jobs(storage) == []

    (tmp_path / "_progress" / "jobs" / "blocked.json").mkdir(parents=True)  # its name is taken by a folder
    blocked = JobProgress(storage, "blocked", "train", [], 2).start()
    blocked.end_epoch(2, {})
    assert capsys.readouterr().err.count("progress of job blocked not written") == 1  # named once


def test_background_delivers_in_order_without_holding_training_up():
    delivered = []

    def slow(result):
        time.sleep(0.05)
        delivered.append(result)

    start = time.perf_counter()
    with Background(slow) as report:
        for epoch in range(5):
            report({"epoch": epoch})
        handed_over = time.perf_counter() - start
    assert handed_over < 0.05 and delivered == [{"epoch": e} for e in range(5)]

    def broken(result):
        raise RuntimeError("the session is gone")

    with pytest.raises(RuntimeError, match="the session is gone"):
        with Background(broken) as report:
            report({"epoch": 1})
    with pytest.raises(ValueError, match="the job's own error"):  # not masked by a report's error
        with Background(broken) as report:
            report({"epoch": 1})
            raise ValueError("the job's own error")


def test_status_shows_a_running_job_from_s3(s3_endpoint):
    storage = Storage.open(uri(s3_endpoint, "live-s3"))
    spec = {"values": {"width": [2], "batch_size": [128], "seed": [0, 1], "measure_pairs": [False], "metrics": [[]]}}
    storage.write_bytes("spec.json", json.dumps(spec).encode())
    live.start_run(storage, time.time() - 60)
    units = [Unit(f"k{s}", "train", {"width": 2, "batch_size": 128, "seed": s}) for s in (0, 1)]
    progress = JobProgress(storage, "pack-1", "pack", units, 12).start()
    progress.end_epoch(12, {"k0": {"train_loss": 0.31}, "k1": {"train_loss": 0.29}})
    text = format_status(load_sweep(storage.uri))
    assert "progress: 0/2 done, 2 running, 0 pending, 0 failed | - models/h | ETA -" in text
    assert "  pack of 2 width=2 batch_size=128 seed=0,1  epoch 12/12  train_loss=0.31,0.29  on " in text
    progress.finish()
    live.clear(storage)
    assert live.run_started(storage) is None and running_jobs(storage) == []
    assert "progress:" not in format_status(load_sweep(storage.uri))


def test_watch_follows_a_sweep_until_it_is_complete(tmp_path, monkeypatch):
    from analysis.status import watch
    from sweeps.run.driver import RunOptions, run
    from sweeps.run.spec import SweepSpec

    monkeypatch.setattr(live, "WRITE_EVERY_S", 0.0)
    spec = SweepSpec("taxonomy", "demo", "watched", str(tmp_path),
                     {**TINY, "epochs": 6, "milestones": [4], "seed": [0, 1], "measure_pairs": False})
    sweep = threading.Thread(target=run, args=(spec, spec.trials(), RunOptions(in_process=True, pack="off")),
                             kwargs={"log": lambda line: None})
    sweep.start()
    while not (tmp_path / "watched" / "_progress" / "run.json").exists():
        time.sleep(0.05)

    class Screen(list):
        def write(self, text):
            self.append(text)

        def flush(self):
            pass

        def isatty(self):
            return False

    screen = Screen()
    watch(str(tmp_path / "watched"), 0.1, screen)
    sweep.join()
    shown = "".join(screen)
    assert "running:\n  width=2 batch_size=128 seed=0  epoch " in shown  # a running job with its epoch
    assert "progress: " in shown and " models/h | ETA " in shown
    assert shown.rstrip().endswith("complete")
    assert "trials             2       2" in shown.split("running:")[-1]
