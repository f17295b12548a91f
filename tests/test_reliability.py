"""Faults lose nothing and duplicate nothing: crashes, corrupt files, bad storage, races.

The crash tests run the real CLI in a subprocess with its own embedded Ray
and kill real processes with SIGKILL.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import load_sweep
from analysis.status import format_status
from sweeps.run.cli import main
from sweeps.run.driver import RunOptions, run
from sweeps.run.spec import SweepSpec, parse_assignment
from workers.base import checkpoints
from workers.catalog import TrialConfig
from workers.core.errors import ConfigError
from workers.core.storage import Storage
from workers.packing.policy import pack_id

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--set", "width=2", "--set", "batch_size=128", "--set", "metrics=", "--set", "measure_pairs=false",
         "--set", "lr=0.05"]


def cli(storage: Path, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """Start `python sweeps/taxonomy.py` with its own embedded Ray, as a user would."""
    full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "sweeps" / "taxonomy.py"),
         "--storage", str(storage), "--name", "s", *args],
        env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, **kw,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def test_sigkilled_worker_resumes_from_its_last_epoch(tmp_path):
    args = [*SMALL, "--set", "seed=0", "--set", "epochs=4", "--set", "milestones=3"]
    cfg = TrialConfig.from_flat({"width": 2, "batch_size": 128, "lr": 0.05, "seed": 0, "epochs": 4,
                                 "milestones": [3], "dataset": "digits", "model": "resnet18k"})
    marker = tmp_path / "killed"
    finish(cli(tmp_path / "crash", *args, env={"LANDSCAPE_FAULT_KILL": f"{cfg.trial_key}:2",
                                                "LANDSCAPE_FAULT_MARKER": str(marker)}))
    assert marker.exists(), "the fault was not injected"
    crashed = load_sweep(str(tmp_path / "crash" / "s"))
    assert len(crashed.trials) == 1
    row = crashed.trials.iloc[0]
    assert row["status"] == "ok" and row["resumed_from_epoch"] == 2
    assert crashed.history["epoch"].tolist() == [1, 2, 3, 4]  # no epoch lost or repeated
    finish(cli(tmp_path / "clean", *args, "--in-process"))
    clean = load_sweep(str(tmp_path / "clean" / "s")).trials.iloc[0]
    assert row["train_loss"] == clean["train_loss"]  # resuming changed nothing


def test_a_sigkilled_pack_resumes_from_its_last_epoch(tmp_path):
    args = [*SMALL, "--set", "seed=0,1", "--set", "epochs=4", "--set", "milestones=3"]
    cfgs = [TrialConfig.from_flat({"width": 2, "batch_size": 128, "lr": 0.05, "seed": seed, "epochs": 4,
                                   "milestones": [3], "dataset": "digits", "model": "resnet18k"}) for seed in (0, 1)]
    marker = tmp_path / "killed"
    finish(cli(tmp_path / "crash", *args, env={"LANDSCAPE_FAULT_KILL": f"{pack_id([c.trial_key for c in cfgs])}:2",
                                                "LANDSCAPE_FAULT_MARKER": str(marker)}))
    assert marker.exists(), "the fault was not injected"
    crashed = load_sweep(str(tmp_path / "crash" / "s")).trials.sort_values("seed")
    assert crashed["resumed_from_epoch"].tolist() == [2, 2] and crashed["pack_size"].tolist() == [2, 2]
    finish(cli(tmp_path / "clean", *args, "--in-process"))
    clean = load_sweep(str(tmp_path / "clean" / "s")).trials.sort_values("seed")
    assert crashed["train_loss"].tolist() == clean["train_loss"].tolist()  # resuming changed nothing


def test_killed_driver_then_rerun_completes_the_grid_once(tmp_path):
    # one model at a time (no packs, which record five rows at once), so the kill lands mid-sweep
    args = [*SMALL, "--set", "seed=0,1,2,3,4,5", "--set", "epochs=3", "--set", "milestones=2",
            "--max-concurrent", "1", "--pack", "off"]
    proc = cli(tmp_path, *args)
    trials = tmp_path / "s" / "trials"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(trials.glob("*.parquet"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    proc.wait()
    out = finish(cli(tmp_path, *args))
    done_before = int(re.search(r"(\d+) already done, (\d+) to run", out).group(1))
    assert 2 <= done_before < 6, "the driver was killed mid-sweep"
    assert f"{done_before} already done, {6 - done_before} to run" in out
    sweep = load_sweep(str(tmp_path / "s"))
    assert sorted(sweep.trials["seed"]) == [0, 1, 2, 3, 4, 5]
    assert sweep.trials["trial_key"].is_unique
    assert sweep.history.groupby("trial_key")["epoch"].apply(list).map(lambda e: e == [1, 2, 3]).all()
    assert len(pd.read_parquet(trials)) == 6  # what any Parquet reader sees: no temp files


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_sweep_says_so_stops_its_trials_and_a_rerun_finishes_it(tmp_path, signum, code):
    args = [*SMALL, "--set", "seed=0,1,2,3,4,5", "--set", "epochs=3", "--set", "milestones=2",
            "--max-concurrent", "1", "--pack", "off"]
    proc = cli(tmp_path, *args)
    trials = tmp_path / "s" / "trials"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(trials.glob("*.parquet"))) < 1:
        time.sleep(0.2)
    proc.send_signal(signum)  # the driver alone, as `kill` or Slurm would; Ctrl-C reaches it the same way
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    done = int(re.search(r"interrupted: (\d+) done, (\d+) not run; rerun the same command to continue", out).group(1))
    assert "Tuner.restore" not in out and "done:" not in out
    time.sleep(3)  # nothing writes after the driver is gone
    recorded = len(list(trials.glob("*.parquet")))
    assert 1 <= done == recorded < 6
    rerun = finish(cli(tmp_path, *args))
    assert f"{done} already done, {6 - done} to run" in rerun
    assert sorted(load_sweep(str(tmp_path / "s")).trials["seed"]) == [0, 1, 2, 3, 4, 5]


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="mounts a small tmpfs: run as root")
def test_a_full_disk_ends_the_sweep_with_one_line_and_every_unrecorded_failure_printed(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(full)], check=True)
    try:
        proc = cli(full, *SMALL, "--set", "seed=0,1,2,3", "--set", "epochs=1", "--set", "milestones=1",
                   "--max-retries", "0", "--pack", "off", env={"RAY_DEDUP_LOGS": "0"})
        out, _ = proc.communicate(timeout=300)
        filed = len(list((full / "s" / "failures").glob("*.parquet")))  # failures that found room after all
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert proc.returncode == 1, out
    # the driver's last line; Ray forwards the workers' lines asynchronously, so one may come after it
    match = re.search(r"^error: \S+ stopped taking writes \(.*No space left on device\): (\d) of 4 models and "
                      r"pairs recorded, (\d) not; free space and rerun the same command$", out, re.MULTILINE)
    assert match, out[-2000:]
    # Which failures still fit (a failed write frees its pages) depends on timing; each is filed or printed.
    assert out.count("error: could not record the failure of") + filed == int(match.group(2)) >= 1
    assert "Traceback (most recent call last):\n" not in out.split("Trials did not complete")[-1]


def _tiny_spec(tiny: dict, storage: Path, **values) -> SweepSpec:
    return SweepSpec("taxonomy", "demo", "s", str(storage), {**tiny, "metrics": [], **values})


def test_corrupt_records_are_named_skipped_and_recomputed(tiny, tmp_path, capsys):
    spec = _tiny_spec(tiny, tmp_path, seed=[0, 1, 2])
    configs = spec.trials()
    run(spec, configs, RunOptions(in_process=True), log=lambda line: None)
    folder = tmp_path / "s" / "trials"
    garbage, truncated = (folder / f"{c.trial_key}.parquet" for c in configs[:2])
    garbage.write_bytes(b"not parquet at all")
    truncated.write_bytes(truncated.read_bytes()[:100])
    sweep = load_sweep(str(tmp_path / "s"))
    assert len(sweep.trials) == 1 and len(sweep.skipped) == 2
    assert "unreadable" in format_status(sweep)
    lines: list[str] = []
    summary = run(spec, configs, RunOptions(in_process=True), log=lines.append)
    assert summary.ran == 2 and sum("_quarantine" in line for line in lines) == 2
    assert len(list((tmp_path / "s" / "_quarantine" / "trials").iterdir())) == 2
    again = load_sweep(str(tmp_path / "s"))
    assert len(again.trials) == 3 and not again.skipped


def test_storage_failure_fails_the_trial_cleanly_and_a_rerun_completes(ray_session, tiny, tmp_path):
    spec = _tiny_spec(tiny, tmp_path, seed=[0, 1])
    configs = spec.trials()
    blocked = tmp_path / "s" / "trials" / f"{configs[0].trial_key}.parquet"
    blocked.mkdir(parents=True)  # the record's name is taken: its write must fail
    summary = run(spec, configs, RunOptions(max_retries=0), log=lambda line: None)
    assert summary.failed == 1 and summary.ran == 1
    sweep = load_sweep(str(tmp_path / "s"))
    assert len(sweep.trials) == 1
    assert [p.name for p in (tmp_path / "s" / "trials").iterdir() if p.name.startswith(".")] == []
    status = format_status(sweep)
    assert "StorageError" in status and configs[0].trial_key in status
    blocked.rmdir()
    summary = run(spec, configs, RunOptions(), log=lambda line: None)
    assert summary.failed == 0 and summary.ran == 1
    fixed = load_sweep(str(tmp_path / "s"))
    assert len(fixed.trials) == 2 and "failed:" not in format_status(fixed)


def test_divergence_is_recorded_once_and_not_retried(ray_session, tiny, tmp_path):
    spec = _tiny_spec(tiny, tmp_path, lr=1e6, seed=0)
    summary = run(spec, spec.trials(), RunOptions(), log=lambda line: None)
    assert summary.failed == 0
    sweep = load_sweep(str(tmp_path / "s"))
    assert sweep.trials["status"].tolist() == ["diverged"] and sweep.failures.empty


def test_a_second_driver_on_the_same_sweep_refuses(tmp_path, capsys):
    from filelock import FileLock

    (tmp_path / "s").mkdir()
    with FileLock(str(tmp_path / "s" / ".driver.lock")):
        code = main("taxonomy", "", ["--storage", str(tmp_path), "--name", "s", *SMALL, "--set", "seed=0"])
    assert code == 2 and "another driver" in capsys.readouterr().err
    assert not (tmp_path / "s" / "trials").exists()


def test_a_malicious_checkpoint_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    storage = Storage.open(str(tmp_path))
    buffer = io.BytesIO()
    torch.save({"model": Exploit()}, buffer)
    storage.write_bytes("checkpoints/k/final.pt", buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="system"):
        checkpoints.load(storage, "k", "final")


# ---------------------------------------------------------------- property-based: the parser

@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=512), min_size=1, max_size=6, unique=True))
def test_any_list_of_positive_widths_parses_to_that_axis(widths):
    key, value = parse_assignment("width=" + ",".join(map(str, widths)))
    spec = SweepSpec("taxonomy", "demo", "p", "unused", {"width": value, "batch_size": 32})
    assert spec.grid()["width"] == tuple(widths)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=30))
def test_any_set_text_parses_or_fails_with_a_config_error(text):
    try:
        key, value = parse_assignment(text)
        SweepSpec("taxonomy", "demo", "p", "unused", {key: value}).trials()
    except ConfigError as exc:
        assert exc.field and str(exc).startswith(exc.field)


@settings(max_examples=60, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_label_noise_is_accepted_exactly_in_the_unit_interval(noise):
    try:
        TrialConfig.from_flat({"label_noise": noise, "width": 2})
        assert 0 <= noise < 1
    except ConfigError as exc:
        assert exc.field == "label_noise" and not 0 <= noise < 1
