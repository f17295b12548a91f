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
from analysis.status import failed_jobs, format_status, table_status
from analysis.summary import cell_table
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


def planned(out: str) -> tuple[int, int, int]:
    """The driver's first line: models in the grid, already done, to run."""
    match = re.search(r"^sweep s: (\d+) models, (\d+) already done, (\d+) to run", out, re.MULTILINE)
    assert match, out
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def ran(out: str) -> int:
    """The driver's last line: the trials and pairs it ran."""
    match = re.search(r"^done: (\d+) trained or measured", out, re.MULTILINE)
    assert match, out
    return int(match.group(1))


def tune_failures(sweep: Path) -> int:
    """The failed attempts Tune saw and retried (each adds a `Failure # n` entry to its
    trial's `error.txt`): how often a worker died, counted by Tune, not by the test."""
    return sum(path.read_text().count("Failure # ") for path in (sweep / "_tune").rglob("error.txt"))


def largest_difference(a: Path, b: Path, keys: list[str]) -> float:
    """The largest absolute difference between the final weights of the models `keys` in
    two storages: 0.0 when they are bit for bit the same."""
    differences = [0.0]
    for key in keys:
        left, right = (checkpoints.load(Storage.open(str(root)), key, "final")["model"] for root in (a, b))
        assert left.keys() == right.keys()
        differences += [float((left[name].double() - right[name].double()).abs().max())
                        for name in left if left[name].numel()]
    return max(differences)


def files_in(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and mtime, to tell what was written since."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_sigkilled_worker_resumes_from_its_last_epoch(tmp_path, figures):
    args = [*SMALL, "--set", "seed=0", "--set", "epochs=4", "--set", "milestones=3"]
    cfg = TrialConfig.from_flat({"width": 2, "batch_size": 128, "lr": 0.05, "seed": 0, "epochs": 4,
                                 "milestones": [3], "dataset": "digits", "model": "resnet18k"})
    marker = tmp_path / "killed"
    kill_epoch = 2
    finish(cli(tmp_path / "crash", *args, env={"LANDSCAPE_FAULT_KILL": f"{cfg.trial_key}:{kill_epoch}",
                                                "LANDSCAPE_FAULT_MARKER": str(marker)}))
    assert marker.exists(), "the fault was not injected"
    kills = tune_failures(tmp_path / "crash" / "s")
    assert kills == 1
    crashed = load_sweep(str(tmp_path / "crash" / "s"))
    assert len(crashed.trials) == 1
    row = crashed.trials.iloc[0]
    assert row["status"] == "ok" and row["resumed_from_epoch"] == kill_epoch
    epochs = crashed.history["epoch"].tolist()
    assert epochs == list(range(1, cfg.train.epochs + 1))  # no epoch lost or repeated
    finish(cli(tmp_path / "clean", *args, "--in-process"))
    clean = load_sweep(str(tmp_path / "clean" / "s")).trials.iloc[0]
    difference = max(abs(row["train_loss"] - clean["train_loss"]),
                      largest_difference(tmp_path / "crash" / "s", tmp_path / "clean" / "s", [cfg.trial_key]))
    assert difference == 0  # resuming changed nothing, not a bit of the weights
    figures("worker-kill", "{kills} kill at epoch {kill_epoch} of {epochs}; resumed from epoch {resumed}; "
            "history epochs {first}-{last} once each; final loss and weights equal to a clean run "
            "(largest difference {difference:g})", kills=kills, kill_epoch=kill_epoch, epochs=cfg.train.epochs,
            resumed=int(row["resumed_from_epoch"]), first=epochs[0], last=epochs[-1], difference=difference)


def test_a_sigkilled_pack_resumes_from_its_last_epoch(tmp_path, figures):
    args = [*SMALL, "--set", "seed=0,1", "--set", "epochs=4", "--set", "milestones=3"]
    cfgs = [TrialConfig.from_flat({"width": 2, "batch_size": 128, "lr": 0.05, "seed": seed, "epochs": 4,
                                   "milestones": [3], "dataset": "digits", "model": "resnet18k"}) for seed in (0, 1)]
    marker = tmp_path / "killed"
    kill_epoch = 2
    finish(cli(tmp_path / "crash", *args, env={
        "LANDSCAPE_FAULT_KILL": f"{pack_id([c.trial_key for c in cfgs])}:{kill_epoch}",
        "LANDSCAPE_FAULT_MARKER": str(marker)}))
    assert marker.exists(), "the fault was not injected"
    kills = tune_failures(tmp_path / "crash" / "s")
    assert kills == 1
    crashed = load_sweep(str(tmp_path / "crash" / "s")).trials.sort_values("seed")
    assert crashed["resumed_from_epoch"].tolist() == [kill_epoch] * 2 and crashed["pack_size"].tolist() == [2, 2]
    finish(cli(tmp_path / "clean", *args, "--in-process"))
    clean = load_sweep(str(tmp_path / "clean" / "s")).trials.sort_values("seed")
    difference = max(max(abs(crashed["train_loss"].to_numpy() - clean["train_loss"].to_numpy())),
                     largest_difference(tmp_path / "crash" / "s", tmp_path / "clean" / "s",
                                        [c.trial_key for c in cfgs]))
    assert difference == 0  # resuming changed nothing, not a bit of any member's weights
    figures("pack-kill", "{kills} kill at epoch {kill_epoch} of {epochs} of a pack of {size}; {members} of {size} "
            "resumed from epoch {resumed}; losses and weights equal to a clean run (largest difference "
            "{difference:g})", kills=kills, kill_epoch=kill_epoch, epochs=cfgs[0].train.epochs,
            size=int(crashed["pack_size"].max()), members=int((crashed["resumed_from_epoch"] == kill_epoch).sum()),
            resumed=int(crashed["resumed_from_epoch"].max()), difference=difference)


def test_killed_driver_then_rerun_completes_the_grid_once(tmp_path, figures):
    # one model at a time (no packs, which record five rows at once), so the kill lands mid-sweep
    args = [*SMALL, "--set", "seed=0,1,2,3,4,5", "--set", "epochs=3", "--set", "milestones=2",
            "--max-concurrent", "1", "--pack", "off"]
    proc = cli(tmp_path, *args)
    trials = tmp_path / "s" / "trials"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(trials.glob("*.parquet"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    kills = int(proc.wait() == -signal.SIGKILL)
    out = finish(cli(tmp_path, *args))
    models, done_before, to_run = planned(out)
    assert 2 <= done_before < models == 6, "the driver was killed mid-sweep"
    assert to_run == models - done_before and ran(out) == to_run
    sweep = load_sweep(str(tmp_path / "s"))
    assert sorted(sweep.trials["seed"]) == [0, 1, 2, 3, 4, 5]
    keys = sweep.trials["trial_key"]
    lost, duplicated = models - keys.nunique(), len(keys) - keys.nunique()
    assert kills == 1 and lost == duplicated == 0
    assert sweep.history.groupby("trial_key")["epoch"].apply(list).map(lambda e: e == [1, 2, 3]).all()
    read = len(pd.read_parquet(trials))
    assert read == models  # what any Parquet reader sees: no temp files
    figures("driver-kill", "{kills} kill of a {models}-trial sweep after {done} recorded; rerun ran the other "
            "{ran}; {rows} rows, {lost} lost, {duplicated} duplicated; pandas reads {read} rows from the folder "
            "(no temp file visible)", kills=kills, models=models, done=done_before, ran=ran(out), rows=len(keys),
            lost=lost, duplicated=duplicated, read=read)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_sweep_says_so_stops_its_trials_and_a_rerun_finishes_it(tmp_path, signum, code, figures):
    args = [*SMALL, "--set", "seed=0,1,2,3,4,5", "--set", "epochs=3", "--set", "milestones=2",
            "--max-concurrent", "1", "--pack", "off"]
    proc = cli(tmp_path, *args)
    trials = tmp_path / "s" / "trials"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(trials.glob("*.parquet"))) < 1:
        time.sleep(0.2)
    proc.send_signal(signum)  # the driver alone, as `kill` or Slurm would; Ctrl-C reaches it the same way
    out, _ = proc.communicate(timeout=120)
    at_exit = files_in(tmp_path / "s")
    assert proc.returncode == code, out
    match = re.search(r"interrupted: (\d+) done, (\d+) not run; rerun the same command to continue", out)
    assert match, out
    done, not_run = int(match.group(1)), int(match.group(2))
    assert "Tuner.restore" not in out and "done:" not in out
    time.sleep(3)  # nothing writes after the driver is gone
    later = files_in(tmp_path / "s")
    written = sum(later.get(path) != at_exit.get(path) for path in later.keys() | at_exit.keys())
    recorded = len(list(trials.glob("*.parquet")))
    models = planned(out)[0]
    assert written == 0 and 1 <= done == recorded < models == done + not_run
    rerun = finish(cli(tmp_path, *args))
    assert planned(rerun) == (models, done, not_run) and ran(rerun) == not_run
    assert sorted(load_sweep(str(tmp_path / "s")).trials["seed"]) == [0, 1, 2, 3, 4, 5]
    figures("interrupt", f"{signal.Signals(signum).name} mid-sweep of {{models}}: exit {{code}} with {{done}} done, "
            "{written} files written after the exit, rerun ran exactly the other {ran}", models=models,
            code=proc.returncode, done=done, written=written, ran=ran(rerun))


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="mounts a small tmpfs: run as root")
def test_a_full_disk_ends_the_sweep_with_one_line_and_every_unrecorded_failure_printed(tmp_path, figures):
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(full)], check=True)
    try:
        proc = cli(full, *SMALL, "--set", "seed=0,1,2,3", "--set", "epochs=1", "--set", "milestones=1",
                   "--max-retries", "0", "--pack", "off", env={"RAY_DEDUP_LOGS": "0"})
        out, _ = proc.communicate(timeout=300)
        filed = len(list((full / "s" / "failures").glob("*.parquet")))  # failures that found room after all
        disk = os.statvfs(full)
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert proc.returncode == 1, out
    # the driver's last line; Ray forwards the workers' lines asynchronously, so one may come after it
    match = re.search(r"^error: \S+ stopped taking writes \(.*No space left on device\): (\d+) of (\d+) models "
                      r"and pairs recorded, (\d+) not; free space and rerun the same command$", out, re.MULTILINE)
    assert match, out[-2000:]
    recorded, models, unrecorded = map(int, match.groups())
    assert recorded + unrecorded == models == 4
    # Which failures still fit (a failed write frees its pages) depends on timing; each is filed or printed.
    printed = out.count("error: could not record the failure of")
    assert printed + filed == unrecorded >= 1
    assert "Traceback (most recent call last):\n" not in out.split("Trials did not complete")[-1]
    figures("disk-full", "{kib} KiB tmpfs, {models} models: {recorded} recorded, {printed} failures printed and "
            "{filed} filed, exit {code}, no traceback", kib=disk.f_blocks * disk.f_frsize // 1024, models=models,
            recorded=recorded, printed=printed, filed=filed, code=proc.returncode)


def _tiny_spec(tiny: dict, storage: Path, **values) -> SweepSpec:
    return SweepSpec("taxonomy", "demo", "s", str(storage), {**tiny, "metrics": [], **values})


def test_corrupt_records_are_named_skipped_and_recomputed(tiny, tmp_path, capsys, figures):
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
    quarantined = len(list((tmp_path / "s" / "_quarantine" / "trials").iterdir()))
    assert summary.ran == quarantined == sum("_quarantine" in line for line in lines) == 2
    again = load_sweep(str(tmp_path / "s"))
    lost = len(configs) - len(again.trials)
    assert lost == 0 and not again.skipped
    figures("record-truncated", "{corrupted} corrupted (1 truncated, 1 garbage), named and skipped; {quarantined} "
            "quarantined and {recomputed} recomputed, {lost} lost", corrupted=len(sweep.skipped),
            quarantined=quarantined, recomputed=summary.ran, lost=lost)


def test_storage_failure_fails_the_trial_cleanly_and_a_rerun_completes(ray_session, tiny, tmp_path, figures):
    spec = _tiny_spec(tiny, tmp_path, seed=[0, 1])
    configs = spec.trials()
    blocked = tmp_path / "s" / "trials" / f"{configs[0].trial_key}.parquet"
    blocked.mkdir(parents=True)  # the record's name is taken: its write must fail
    summary = run(spec, configs, RunOptions(max_retries=0), log=lambda line: None)
    assert summary.failed == 1 and summary.ran == 1
    failed = summary.failed
    sweep = load_sweep(str(tmp_path / "s"))
    assert len(sweep.trials) == 1
    partial = len([p for p in (tmp_path / "s" / "trials").iterdir() if p.name.startswith(".")])
    listed = failed_jobs(sweep)  # the failures `status` lists: those of jobs still without a record
    assert partial == 0 and listed["key"].tolist() == [configs[0].trial_key]
    assert listed["error"].str.startswith("StorageError").all() and blocked.name in listed["error"].iloc[0]
    status = format_status(sweep)
    assert "StorageError" in status and configs[0].trial_key in status
    blocked.rmdir()
    summary = run(spec, configs, RunOptions(), log=lambda line: None)
    assert summary.failed == 0 and summary.ran == 1
    fixed = load_sweep(str(tmp_path / "s"))
    assert len(fixed.trials) == 2 and "failed:" not in format_status(fixed)
    figures("storage-fails", "{failed} failed trial; `status` lists {listed} failure, a StorageError naming the file; "
            "{partial} partial files; rerun {rows}/{models}", failed=failed, listed=len(listed), partial=partial,
            rows=len(fixed.trials), models=len(configs))


def test_divergence_is_recorded_once_and_not_retried(ray_session, tiny, tmp_path, figures):
    spec = _tiny_spec(tiny, tmp_path, lr=1e6, seed=0)
    lines: list[str] = []
    summary = run(spec, spec.trials(), RunOptions(), log=lines.append)
    assert summary.failed == 0
    sweep = load_sweep(str(tmp_path / "s"))
    assert sweep.trials["status"].tolist() == ["diverged"] and sweep.failures.empty
    records, retries = len(list((tmp_path / "s" / "trials").glob("*.parquet"))), tune_failures(tmp_path / "s")
    assert records == 1 and retries == 0
    trials = next(s for s in table_status(sweep) if s.table == "trials")
    summed = int(cell_table(sweep)["diverged"].sum())
    assert any(re.match(r"\[1/1\]\s+diverged\b", line) for line in lines)
    assert trials.diverged == summed == 1 and trials.done == trials.failed == 0
    figures("lr-diverges", "{diverged} diverged (its own count in the job's line, `status` and `summary`), "
            "{records} record, {retries} retries, {failures} failures", diverged=trials.diverged, records=records,
            retries=retries, failures=len(sweep.failures))


def test_a_second_driver_on_the_same_sweep_refuses(tmp_path, capsys, figures):
    from filelock import FileLock

    (tmp_path / "s").mkdir()
    with FileLock(str(tmp_path / "s" / ".driver.lock")):
        code = main("taxonomy", "", ["--storage", str(tmp_path), "--name", "s", *SMALL, "--set", "seed=0"])
    assert code == 2 and "another driver" in capsys.readouterr().err
    written = [p for p in (tmp_path / "s").rglob("*") if p.name != ".driver.lock"]
    assert written == []
    figures("two-drivers", "refused (exit {code}, naming the other driver), {written} files written",
            code=code, written=len(written))


def test_a_malicious_checkpoint_is_refused(tmp_path, figures):
    owned = tmp_path / "owned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {owned}",))

    storage = Storage.open(str(tmp_path))
    buffer = io.BytesIO()
    torch.save({"model": Exploit()}, buffer)
    storage.write_bytes("checkpoints/k/final.pt", buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="system") as refused:
        checkpoints.load(storage, "k", "final")
    assert not owned.exists()  # its payload never ran
    figures("untrusted", "crafted malicious checkpoint refused ({error}), its payload not run",
            error=refused.type.__name__)


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
