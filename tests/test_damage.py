"""Damage is detected in every table and checkpoint and repaired by recomputing, never
by measuring something else: a lost `final` means training again, a garbled page in a
record with an intact footer is caught by its checksum, a damaged history or curve takes
its done-record with it, a damaged `last` means resuming from scratch."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analysis import load_sweep
from sweeps.run.driver import RunOptions, run
from sweeps.run.spec import SweepSpec
from workers.catalog import TrialConfig
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial

HESSIAN = {"metrics": ["hessian"], "hessian.n_samples": 64, "hessian.max_iter": 20, "hessian.trace_probes": 0}


def _run(flat: dict, storage: Path) -> dict:
    return run_trial(TrialConfig.from_flat(flat), RunContext(storage=str(storage), sweep="t", threads=1))


def _garble(path: Path, at: int = 24, n: int = 8) -> None:
    """Flip `n` bytes inside the file's first data page; the footer stays intact."""
    data = bytearray(path.read_bytes())
    for i in range(at, at + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_lost_final_checkpoint_means_training_again_not_measuring_fresh_weights(tiny, tmp_path, damage, capfd):
    clean = _run({**tiny, **HESSIAN}, tmp_path / "clean")
    _run({**tiny, "metrics": []}, tmp_path / "s")  # trained, not measured yet
    key = TrialConfig.from_flat(tiny).trial_key
    final = tmp_path / "s" / "checkpoints" / key / "final.pt"
    final.unlink() if damage == "missing" else final.write_bytes(final.read_bytes()[:200])
    row = _run({**tiny, **HESSIAN}, tmp_path / "s")
    assert row["hessian_top_eigenvalue"] == pytest.approx(clean["hessian_top_eigenvalue"], rel=1e-6)
    assert "training it again" in capfd.readouterr().err
    assert (tmp_path / "s" / "_quarantine" / "trials" / f"{key}.parquet").exists()
    assert len(load_sweep(str(tmp_path / "s")).trials) == 1


def test_a_damaged_last_checkpoint_is_named_once_and_training_starts_over(tiny, tmp_path, capfd):
    key = TrialConfig.from_flat(tiny).trial_key
    last = tmp_path / "s" / "checkpoints" / key / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 not a checkpoint")
    row = _run({**tiny, "metrics": []}, tmp_path / "s")
    assert row["status"] == "ok" and row["resumed_from_epoch"] == 0
    assert f"{last}" in capfd.readouterr().err and not last.exists()
    assert (tmp_path / "s" / "_quarantine" / "checkpoints" / key / "last.pt").exists()


def _spec(tiny: dict, storage: Path, **values) -> SweepSpec:
    return SweepSpec("taxonomy", "demo", "s", str(storage), {**tiny, "metrics": [], **values})


def test_a_garbled_page_behind_an_intact_footer_is_caught_and_recomputed(tiny, tmp_path):
    spec = _spec(tiny, tmp_path, seed=[0, 1])
    configs = spec.trials()
    run(spec, configs, RunOptions(in_process=True), log=lambda line: None)
    record = tmp_path / "s" / "trials" / f"{configs[0].trial_key}.parquet"
    _garble(record)
    lines: list[str] = []
    summary = run(spec, configs, RunOptions(in_process=True), log=lines.append)
    assert summary.ran == 1 and any(f"trials/{configs[0].trial_key}.parquet" in line for line in lines)
    sweep = load_sweep(str(tmp_path / "s"))
    assert len(sweep.trials) == 2 and not sweep.skipped


def test_a_damaged_history_or_curve_is_recomputed_with_its_record(tiny, tmp_path):
    spec = _spec(tiny, tmp_path, seed=0, metrics=["interpolation"], **{"interpolation.points": 3,
                                                                        "interpolation.eval_samples": 32})
    configs = spec.trials()
    run(spec, configs, RunOptions(in_process=True), log=lambda line: None)
    key = configs[0].trial_key
    folder = tmp_path / "s"
    (folder / "history" / f"{key}.parquet").write_bytes(b"garbage")
    curve = next((folder / "curves").glob(f"{key}.interpolation-*.parquet"))
    curve.write_bytes(b"garbage")
    lines: list[str] = []
    summary = run(spec, configs, RunOptions(in_process=True), log=lines.append)
    assert summary.ran == 1
    assert sum("moved to _quarantine/ with it" in line for line in lines) == 2  # trials row, measures row
    sweep = load_sweep(str(folder))
    assert not sweep.skipped and sweep.history["epoch"].tolist() == [1, 2]
    assert len(sweep.measures) == 1 and len(sweep.curves) > 0


def _rot(path: Path, column: str) -> None:
    """Flip one byte of the record's `column` value inside its page and put the file's mtime
    back (bit rot): its size and mtime are those the consolidated table holds."""
    value = pq.read_table(path).column(column)[0].as_py()
    data = bytearray(path.read_bytes())
    at = data.find(struct.pack("<d", value))
    assert 0 < at < len(data) - 8 - int.from_bytes(data[-8:-4], "little"), "in a page, before the footer"
    data[at + 5] ^= 0xFF
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_bit_rot_keeping_size_and_mtime_is_found_by_the_next_run_that_works_and_recomputed(tiny, tmp_path):
    spec = _spec(tiny, tmp_path, seed=[0, 1])
    configs = spec.trials()
    run(spec, configs, RunOptions(in_process=True), log=lambda line: None)
    victim = tmp_path / "s" / "trials" / f"{configs[0].trial_key}.parquet"
    _rot(victim, "test_acc")
    startup: list[str] = []
    assert run(spec, configs, RunOptions(in_process=True), log=startup.append).ran == 0
    assert victim.exists() and not any("_quarantine/" in line for line in startup), "it reads no consolidated record"

    grown = _spec(tiny, tmp_path, seed=[0, 1, 2])  # a run that does work verifies at its end
    lines: list[str] = []
    assert run(grown, grown.trials(), RunOptions(in_process=True), log=lines.append).ran == 1
    assert any(f"trials/{configs[0].trial_key}.parquet" in line and "_quarantine/" in line for line in lines), lines
    assert not victim.exists() and configs[0].trial_key not in set(load_sweep(str(tmp_path / "s")).trials["trial_key"])
    assert run(grown, grown.trials(), RunOptions(in_process=True), log=lambda line: None).ran == 1, "recomputed"
    sweep = load_sweep(str(tmp_path / "s"))
    assert len(sweep.trials) == 3 and not sweep.skipped
