"""Damage is detected in every table and checkpoint and repaired by recomputing, never
by measuring something else: a lost `final` means training again, a garbled page in a
record with an intact footer is caught by its checksum, a damaged history or curve takes
its done-record with it, a damaged `last` (even one `torch.load` reads) means resuming
from scratch."""

from __future__ import annotations

import io
import os
import signal
import struct
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from analysis import load_sweep
from sweeps.run.driver import RunOptions, run
from sweeps.run.spec import SweepSpec
from workers.base import checkpoints
from workers.catalog import TrialConfig
from workers.core import seal
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial

HESSIAN = {"metrics": ["hessian"], "hessian.n_samples": 64, "hessian.max_iter": 20, "hessian.trace_probes": 0}


def _run(flat: dict, storage: Path) -> dict:
    return run_trial(TrialConfig.from_flat(flat), RunContext(storage=str(storage), sweep="t", threads=1))


def _garble(path: Path, at: int = 24, n: int = 8) -> int:
    """Flip `n` bytes inside the file's first page; the footer stays intact. Returns the
    number of bytes that differ."""
    before = path.read_bytes()
    first = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = first.dictionary_page_offset or first.data_page_offset
    assert start <= at and at + n <= start + first.total_compressed_size, "in the first column's pages"
    data = bytearray(before)
    for i in range(at, at + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return sum(a != b for a, b in zip(before, data))


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_lost_final_checkpoint_means_training_again_not_measuring_fresh_weights(tiny, tmp_path, damage, capfd,
                                                                                  figures):
    clean = _run({**tiny, **HESSIAN}, tmp_path / "clean")
    _run({**tiny, "metrics": []}, tmp_path / "s")  # trained, not measured yet
    key = TrialConfig.from_flat(tiny).trial_key
    final = tmp_path / "s" / "checkpoints" / key / "final.pt"
    final.unlink() if damage == "missing" else final.write_bytes(final.read_bytes()[:200])
    row = _run({**tiny, **HESSIAN}, tmp_path / "s")
    equal = int(row["hessian_top_eigenvalue"] == clean["hessian_top_eigenvalue"])  # retrained to the same weights
    retrained = capfd.readouterr().err.count("training it again")
    assert equal == 1 and retrained == 1
    assert (tmp_path / "s" / "_quarantine" / "trials" / f"{key}.parquet").exists()
    assert len(load_sweep(str(tmp_path / "s")).trials) == 1
    figures("checkpoint-missing", "{missing} missing and {truncated} truncated `final.pt`: {retrained} retrained, "
            "{equal} with a Hessian equal to a clean run's", missing=int(damage == "missing"),
            truncated=int(damage == "truncated"), retrained=retrained, equal=equal)


def test_a_damaged_last_checkpoint_is_named_once_and_training_starts_over(tiny, tmp_path, capfd, figures):
    key = TrialConfig.from_flat(tiny).trial_key
    last = tmp_path / "s" / "checkpoints" / key / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 not a checkpoint")
    row = _run({**tiny, "metrics": []}, tmp_path / "s")
    assert row["status"] == "ok" and row["resumed_from_epoch"] == 0
    warnings = sum(f"{last}" in line for line in capfd.readouterr().err.splitlines())
    assert warnings == 1 and not last.exists()
    assert (tmp_path / "s" / "_quarantine" / "checkpoints" / key / "last.pt").exists()
    figures("last-damaged", "resumed from epoch {epoch}, {warnings} warning, the file in `_quarantine/`",
            epoch=row["resumed_from_epoch"], warnings=warnings)


def test_a_garbled_last_checkpoint_that_still_loads_is_set_aside_and_training_starts_over(tiny, tmp_path, capfd,
                                                                                           kill_trial_at, figures):
    """`torch.load` reads tensor bytes flipped in place without an error; resuming from
    them gave other weights, recorded `ok`. The checkpoint's checksum catches it."""
    flat = {**tiny, "metrics": []}
    key = TrialConfig.from_flat(flat).trial_key
    assert kill_trial_at(flat, str(tmp_path / "s"), key, 1) == -signal.SIGKILL
    last = tmp_path / "s" / "checkpoints" / key / "last.pt"
    written = last.read_bytes()
    data = bytearray(written)
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    last.write_bytes(bytes(data))
    flipped = sum(a != b for a, b in zip(written, data))
    body = len(seal.TAG) + seal.CHECKSUM_BYTES  # torch.load, as a resume without the checksum did
    loaded, garbled = (torch.load(io.BytesIO(d[:-body]), weights_only=True)["model"] for d in (written, bytes(data)))
    assert checkpoints.weights_id(garbled) != checkpoints.weights_id(loaded), "it loads, with other weights"
    row = _run(flat, tmp_path / "s")
    clean = _run(flat, tmp_path / "clean")
    assert f"{last}" in capfd.readouterr().err and not last.exists()
    assert (tmp_path / "s" / "_quarantine" / "checkpoints" / key / "last.pt").exists()
    assert row["status"] == "ok" and row["resumed_from_epoch"] == 0
    assert (row["train_loss"], row["weights_id"]) == (clean["train_loss"], clean["weights_id"])
    figures("checkpoint-garbled-loads", "{flipped} bytes flipped in a `last.pt` that `torch.load` read without "
            "error: set aside, training started over (from epoch {start}), result equal to an uninterrupted run",
            flipped=flipped, start=row["resumed_from_epoch"])


def _spec(tiny: dict, storage: Path, **values) -> SweepSpec:
    return SweepSpec("taxonomy", "demo", "s", str(storage), {**tiny, "metrics": [], **values})


OUTCOME = ["trial_key", "train_loss", "train_acc", "test_loss", "test_acc", "weights_id"]


def _wrong(read, clean) -> int:
    """Values in the rows of `read` that are not the clean run's."""
    merged = read[OUTCOME].merge(clean[OUTCOME], on="trial_key", how="left", suffixes=("", "_clean"))
    return int(sum((merged[c] != merged[f"{c}_clean"]).sum() for c in OUTCOME[1:]))


def test_a_garbled_page_behind_an_intact_footer_is_caught_and_recomputed(tiny, tmp_path, figures):
    spec = _spec(tiny, tmp_path, seed=[0, 1])
    configs = spec.trials()
    solo = RunOptions(in_process=True, pack="off")  # recomputed alone as first trained: the same values
    run(spec, configs, solo, log=lambda line: None)
    clean = load_sweep(str(tmp_path / "s")).trials
    relpath = f"trials/{configs[0].trial_key}.parquet"
    flipped = _garble(tmp_path / "s" / relpath)
    damaged = load_sweep(str(tmp_path / "s"))
    assert damaged.skipped == [relpath], "an error naming the file, not the garbled values"
    lines: list[str] = []
    summary = run(spec, configs, solo, log=lines.append)
    assert summary.ran == 1 and any(relpath in line for line in lines)
    sweep = load_sweep(str(tmp_path / "s"))
    assert len(sweep.trials) == 2 and not sweep.skipped
    wrong = _wrong(damaged.trials, clean) + _wrong(sweep.trials, clean)  # before and after the rerun
    assert wrong == 0
    figures("page-garbled", "{flipped} bytes flipped in a page: caught, {recomputed} recomputed, {wrong} wrong",
            flipped=flipped, recomputed=summary.ran, wrong=wrong)


def test_a_damaged_history_or_curve_is_recomputed_with_its_record(tiny, tmp_path, figures):
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
    quarantined = {table: len(list((folder / "_quarantine" / table).glob("*.parquet")))
                   for table in ("history", "curves", "trials", "measures")}
    assert quarantined == {"history": 1, "curves": 1, "trials": 1, "measures": 1}
    sweep = load_sweep(str(folder))
    assert not sweep.skipped and sweep.history["epoch"].tolist() == [1, 2]
    assert len(sweep.trials) == 1 and (folder / "trials" / f"{key}.parquet").exists()  # trained again
    assert sweep.measures["status"].tolist() == ["ok"] and len(sweep.curves) > 0
    figures("history-damaged", "{history} history + {curves} curve damaged: {damaged} quarantined with their {done} "
            "done-records, model retrained ({epochs} epochs of history), metric re-measured",
            history=quarantined["history"], curves=quarantined["curves"],
            damaged=quarantined["history"] + quarantined["curves"], done=quarantined["trials"] + quarantined["measures"],
            epochs=len(sweep.history))


def _rot(path: Path, column: str) -> int:
    """Flip one byte of the record's `column` value inside its page and put the file's mtime
    back (bit rot): its size and mtime are those the consolidated table holds. Returns the
    number of bytes that differ."""
    value = pq.read_table(path).column(column)[0].as_py()
    before = path.read_bytes()
    data = bytearray(before)
    at = data.find(struct.pack("<d", value))
    assert 0 < at < len(data) - 8 - int.from_bytes(data[-8:-4], "little"), "in a page, before the footer"
    data[at + 5] ^= 0xFF
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return sum(a != b for a, b in zip(before, data))


def test_bit_rot_keeping_size_and_mtime_is_found_by_the_next_run_that_works_and_recomputed(tiny, tmp_path, figures):
    spec = _spec(tiny, tmp_path, seed=[0, 1])
    configs = spec.trials()
    run(spec, configs, RunOptions(in_process=True), log=lambda line: None)
    victim = tmp_path / "s" / "trials" / f"{configs[0].trial_key}.parquet"
    flipped = _rot(victim, "test_acc")
    startup: list[str] = []
    assert run(spec, configs, RunOptions(in_process=True), log=startup.append).ran == 0
    assert victim.exists() and not any("_quarantine/" in line for line in startup), "it reads no consolidated record"

    grown = _spec(tiny, tmp_path, seed=[0, 1, 2])  # a run that does work verifies at its end
    lines: list[str] = []
    assert run(grown, grown.trials(), RunOptions(in_process=True), log=lines.append).ran == 1
    assert any(f"trials/{configs[0].trial_key}.parquet" in line and "_quarantine/" in line for line in lines), lines
    assert not victim.exists() and configs[0].trial_key not in set(load_sweep(str(tmp_path / "s")).trials["trial_key"])
    recomputed = run(grown, grown.trials(), RunOptions(in_process=True), log=lambda line: None).ran
    assert recomputed == 1 and victim.exists()
    sweep = load_sweep(str(tmp_path / "s"))
    assert len(sweep.trials) == 3 and not sweep.skipped
    figures("bitrot", "{flipped} flipped byte in a trials record, mtime restored: caught by the next run that did work "
            "(a rerun with nothing to do reads no record), quarantined, {recomputed} recomputed",
            flipped=flipped, recomputed=recomputed)
