"""Bit rot: a record file's bytes change while its size and mtime stay (a disk fault, or a
flipped byte written back with the old mtime). The consolidated table trusts those stamps,
so before verification the project's readers show the clean consolidated value while
DuckDB on the record file reads the corrupted one. Compaction (whenever it rewrites a
table) and `verify` (a scrub) compare each held record's bytes with the hash compaction
took of them, quarantine a mismatch with its done-record, and leave it out.

Real record files written with the project's writers (`workers.core.records`); no Ray."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

import workers.core.tables as tables
from analysis import load_sweep
from bench.s3server import uri
from workers.catalog import TrialConfig
from workers.core.records import config_columns, to_table
from workers.core.storage import Storage
from workers.core.tables import (
    MANIFEST_KEY,
    compact_after_run,
    compact_sweep,
    consolidated_path,
    quarantine_damaged,
    read_table,
)

ACC = (0.123456789, 0.234567891, 0.345678912, 0.456789123)  # test_acc of model i: distinct bytes in each file


def configs(n: int) -> list[TrialConfig]:
    return [TrialConfig.from_flat({"width": 2 + i, "seed": 0}) for i in range(n)]


def write_model(store: Storage, cfg: TrialConfig, test_acc: float) -> None:
    """A trained and measured model's records: trials, 3 epochs of history, one measure."""
    base = config_columns(cfg, "s")
    store.write_table("trials", cfg.trial_key, to_table([{**base, "status": "ok", "test_acc": test_acc}]))
    store.write_table("history", cfg.trial_key, to_table(
        [{**base, "epoch": e, "train_loss": test_acc * (1 + e / 7)} for e in (1, 2, 3)]))
    store.write_table("measures", f"{cfg.trial_key}.hessian-0", to_table(
        [{**base, "metric": "hessian", "hessian_trace": 10 * test_acc}]))


def rot(path: Path, value: float) -> None:
    """Flip one byte of `value` (a float64) inside the page that holds it, then put the
    file's mtime back: the size and mtime a listing shows are those compaction saw."""
    data = bytearray(path.read_bytes())
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    at = data.find(struct.pack("<d", value))
    assert 0 < at < footer_start, "the value lies in a page, not in the footer's statistics"
    before = path.stat()
    data[at + 5] ^= 0xFF  # a mantissa byte: still a finite number, another one
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def accuracies(read: tables.TableRead) -> dict[str, float]:
    frame = read.data.to_pandas()
    return dict(zip(frame["trial_key"], frame["test_acc"]))


def manifest_names(store: Storage, table: str) -> list[str]:
    with store.fs.open_input_file(store.path(consolidated_path(table))) as f:
        return [r[0] for r in json.loads(pq.ParquetFile(f).metadata.metadata[MANIFEST_KEY])["records"]]


@pytest.fixture
def sweep(tmp_path) -> tuple[Storage, list[TrialConfig]]:
    """Three models recorded and compacted (as at the end of a sweep run)."""
    store = Storage.open(str(tmp_path / "sweep"))
    cfgs = configs(4)
    for cfg, acc in zip(cfgs[:3], ACC):
        write_model(store, cfg, acc)
    compact_sweep(store)
    return store, cfgs


def test_bit_rot_is_found_when_a_run_that_did_work_compacts(sweep, figures):
    store, cfgs = sweep
    victim = cfgs[0].trial_key
    record = Path(store.path(f"trials/{victim}.parquet"))
    rot(record, ACC[0])
    rotted_bytes = record.read_bytes()

    # the harm: DuckDB on the record files reads another number than the project's readers
    rotted = duckdb.sql(f"SELECT test_acc FROM '{record}'").fetchall()[0][0]
    assert rotted != pytest.approx(ACC[0]), "the byte flipped is the value's"
    shown = accuracies(read_table(store, "trials"))[victim]
    assert shown == ACC[0], "readers take the consolidated copy"
    assert quarantine_damaged(store) == [], "a driver's start-up trusts size and mtime: it reads nothing"

    write_model(store, cfgs[3], ACC[3])  # the run did work: its end compacts
    lines = compact_after_run(store)
    line = next(line for line in lines if line.startswith("trials:"))
    assert f"trials/{victim}.parquet" in line and "moved to _quarantine/" in line, lines
    assert not record.exists(), "so the next run trains it again"
    assert Path(store.path(f"_quarantine/trials/{victim}.parquet")).read_bytes() == rotted_bytes

    read = read_table(store, "trials")
    assert victim not in accuracies(read), "neither the clean consolidated row nor the rotted one"
    assert sorted(accuracies(read).values()) == sorted(ACC[1:]) and read.consolidated == 3
    assert victim not in manifest_names(store, "trials")
    assert victim not in set(load_sweep(store.uri).trials["trial_key"])
    figures("bitrot", "DuckDB read {rotted:.9g} from it where readers showed the clean {shown:.9g}, until a compaction "
            "quarantined it", rotted=rotted, shown=shown)


def test_verify_quarantines_a_rotted_history_with_its_trials_row(sweep):
    store, cfgs = sweep
    victim = cfgs[1].trial_key
    rot(Path(store.path(f"history/{victim}.parquet")), ACC[1] * (1 + 2 / 7))  # epoch 2's train_loss
    assert compact_after_run(store) == [], "nothing new: no table rewritten, nothing read"

    lines = tables.verify(store)
    history = next(line for line in lines if line.startswith("history:"))
    assert f"history/{victim}.parquet, trials/{victim}.parquet" in history, lines
    assert lines[-1] == "verified 8 consolidated records: 2 moved to _quarantine/"
    assert {p.name for p in Path(store.path("_quarantine")).rglob("*.parquet")} == {f"{victim}.parquet"}
    assert len(list(Path(store.path("_quarantine")).rglob("*.parquet"))) == 2
    for table in ("trials", "history"):
        assert victim not in set(read_table(store, table).data.column("trial_key").to_pylist())
        assert victim not in manifest_names(store, table)
    assert victim in set(read_table(store, "measures").data.column("trial_key").to_pylist()), "not its owner"
    assert tables.verify(store) == ["verified 7 consolidated records: all as compaction read them"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_verify_of_an_intact_sweep_reads_every_record_and_rewrites_nothing(tmp_path, request, where):
    if where == "local":
        store = Storage.open(str(tmp_path / "sweep"))
    else:
        store = Storage.open(uri(request.getfixturevalue("s3_endpoint"), f"bitrot-{uuid.uuid4().hex[:8]}"))
    for cfg, acc in zip(configs(2), ACC):
        write_model(store, cfg, acc)
    compact_sweep(store)
    consolidated = store.list_files("tables")
    assert tables.verify(store) == ["verified 6 consolidated records: all as compaction read them"]
    assert store.list_files("tables") == consolidated, "no file rewritten"


def _as_layout_1(data: bytes) -> bytes:
    """A consolidated file as the code before content hashes wrote it."""
    table = pq.read_table(io.BytesIO(data))
    manifest = json.loads(table.schema.metadata[MANIFEST_KEY])
    manifest |= {"layout_version": 1, "records": [r[:4] for r in manifest["records"]]}
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({MANIFEST_KEY: json.dumps(manifest)}), buffer)
    return buffer.getvalue()


def test_a_consolidated_file_without_hashes_is_used_and_checked_by_page_checksums_at_its_rewrite(sweep):
    store, cfgs = sweep
    relpath = consolidated_path("trials")
    store.write_bytes(relpath, _as_layout_1(store.read_bytes(relpath)))
    read = read_table(store, "trials")
    assert (read.consolidated, read.ignored) == (3, ""), "an older layout is still used, not named as unusable"
    rot(Path(store.path(f"trials/{cfgs[2].trial_key}.parquet")), ACC[2])
    write_model(store, cfgs[3], ACC[3])
    line = next(line for line in compact_after_run(store) if line.startswith("trials:"))
    assert f"trials/{cfgs[2].trial_key}.parquet" in line, "its page checksum no longer matches"
    with store.fs.open_input_file(store.path(relpath)) as f:
        manifest = json.loads(pq.ParquetFile(f).metadata.metadata[MANIFEST_KEY])
    assert manifest["layout_version"] == tables.LAYOUT_VERSION
    assert [len(r[4]) for r in manifest["records"]] == [16, 16, 16], "every record now has its hash"
    assert sorted(accuracies(read_table(store, "trials")).values()) == [ACC[0], ACC[1], ACC[3]]


def test_analysis_compact_names_and_quarantines_a_rotted_record(sweep):
    store, cfgs = sweep
    victim = cfgs[2].trial_key
    rot(Path(store.path(f"measures/{victim}.hessian-0.parquet")), 10 * ACC[2])
    write_model(store, cfgs[3], ACC[3])
    done = subprocess.run([sys.executable, "-m", "analysis", "compact", store.root],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("measures:"))
    assert line.endswith(f"moved to _quarantine/ to be recomputed: measures/{victim}.hessian-0.parquet"), line
    assert victim not in set(read_table(store, "measures").data.column("trial_key").to_pylist())
    assert victim in set(read_table(store, "trials").data.column("trial_key").to_pylist()), "a measure owns nothing"


def test_analysis_verify_scrubs_an_up_to_date_sweep_and_exits_1_on_damage(sweep):
    store, cfgs = sweep
    scrub = [sys.executable, "-m", "analysis", "verify", store.root]
    clean = subprocess.run(scrub, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0 and "all as compaction read them" in clean.stdout, clean.stdout + clean.stderr
    victim = cfgs[1].trial_key
    rot(Path(store.path(f"measures/{victim}.hessian-0.parquet")), 10 * ACC[1])
    damaged = subprocess.run(scrub, capture_output=True, text=True, timeout=120)
    assert damaged.returncode == 1 and f"measures/{victim}.hessian-0.parquet" in damaged.stdout, damaged.stdout
    assert victim not in set(read_table(store, "measures").data.column("trial_key").to_pylist())
