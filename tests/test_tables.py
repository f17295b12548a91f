"""Consolidated tables: every reader sees every row exactly once, however stale the file.

Records are real Parquet record files written with the project's writers
(`workers.core.records`), on a local folder and on a moto S3 server.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from analysis import load_sweep
from analysis.status import format_status
from bench.s3server import uri
from workers.catalog import TrialConfig
from workers.core.records import config_columns, to_table
from workers.core.storage import Storage
from workers.core.tables import (
    MANIFEST_KEY,
    compact,
    compact_sweep,
    consolidated_path,
    held_records,
    quarantine_damaged,
    read_table,
)

METRIC_COLUMNS = {"hessian": ("hessian_top_eigenvalue", "hessian_trace"),
                  "interpolation": ("interpolation_barrier",)}


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Storage:
    """An empty sweep folder on the local disk or on the moto S3 server."""
    if request.param == "local":
        return Storage.open(str(tmp_path / "sweep"))
    return Storage.open(uri(request.getfixturevalue("s3_endpoint"), f"tables-{uuid.uuid4().hex[:8]}"))


def configs(n: int) -> list[TrialConfig]:
    return [TrialConfig.from_flat({"width": 2 + i, "seed": i % 2}) for i in range(n)]


def write_model(store: Storage, cfg: TrialConfig, test_acc: float) -> None:
    """The records a trained and measured model leaves: trials, 3 epochs of history, and
    two metrics whose measures rows have different columns."""
    base = config_columns(cfg, "s")
    store.write_table("trials", cfg.trial_key, to_table([{**base, "status": "ok", "test_acc": test_acc}]))
    store.write_table("history", cfg.trial_key, to_table([{**base, "epoch": e, "train_loss": 1 / e} for e in (1, 2, 3)]))
    for metric, columns in METRIC_COLUMNS.items():
        row = {**base, "metric": metric, **{c: test_acc * (i + 2) for i, c in enumerate(columns)}}
        store.write_table("measures", f"{cfg.trial_key}.{metric}-0", to_table([row]))


def rewrite_later(store: Storage) -> None:
    """An object store's mtime has 1 s resolution (see workers.core.tables): a recomputed
    record is written at least that much after its first version."""
    if not store.is_local:
        time.sleep(1.1)


def test_compaction_writes_one_sorted_file_per_table_with_every_column(store):
    cfgs = configs(4)
    for i, cfg in enumerate(cfgs):
        write_model(store, cfg, 0.5 + i / 10)
    results = compact_sweep(store)
    assert results["trials"].consolidated == 0 and len(results["trials"].records) == 4
    assert results["pairs"] is None  # no records, nothing written

    with store.fs.open_input_file(store.path(consolidated_path("measures"))) as f:
        parquet = pq.ParquetFile(f)
        manifest = json.loads(parquet.metadata.metadata[MANIFEST_KEY])
        measures = parquet.read().to_pandas()
        stats = parquet.metadata.row_group(0).column(0).statistics
    names = sorted(store.list_names("measures", ".parquet"))
    assert [r[0] for r in manifest["records"]] == names and len(measures) == 8
    assert measures["trial_key"].is_monotonic_increasing and stats.has_min_max
    for metric, columns in METRIC_COLUMNS.items():  # the union of the records' columns
        assert measures.loc[measures["metric"] == metric, list(columns)].notna().all().all()
    assert compact(store, "measures") is None, "up to date: not rewritten"


def test_pandas_and_duckdb_read_the_consolidated_files(tmp_path):
    store = Storage.open(str(tmp_path / "sweep"))
    for i, cfg in enumerate(configs(3)):
        write_model(store, cfg, 0.5 + i / 10)
    compact_sweep(store)
    path = store.path("tables/measures.parquet")
    assert pd.read_parquet(path)[["hessian_trace", "interpolation_barrier"]].notna().sum().tolist() == [3, 3]
    rows = duckdb.sql(f"SELECT metric, count(*) AS n, count(hessian_trace) AS h, count(interpolation_barrier) AS b "
                      f"FROM '{path}' GROUP BY ALL ORDER BY ALL").fetchall()
    assert rows == [("hessian", 3, 3, 0), ("interpolation", 3, 0, 3)]
    assert duckdb.sql(f"SELECT avg(epoch) FROM '{store.path('tables/history.parquet')}'").fetchall() == [(2.0,)]


def test_records_written_after_compaction_are_read_once(store, figures):
    cfgs = configs(4)
    for cfg in cfgs[:3]:
        write_model(store, cfg, 0.5)
    compact_sweep(store)
    write_model(store, cfgs[3], 0.9)  # the sweep goes on, or its grid is extended
    read = read_table(store, "trials")
    assert (read.consolidated, len(read.records)) == (3, 4)
    sweep = load_sweep(store.uri)
    assert sorted(sweep.trials["trial_key"]) == sorted(c.trial_key for c in cfgs)
    assert len(sweep.history) == 12 and len(sweep.measures) == 8 and not sweep.ignored
    assert sweep.trials.set_index("trial_key").loc[cfgs[3].trial_key, "hessian_trace"] == pytest.approx(2.7)
    assert compact(store, "trials").consolidated == 3
    assert read_table(store, "trials").consolidated == 4
    figures("tables-stale", "records added after compaction read once: {rows} rows for {models} models ({s3} of {cases} "
            "folders on moto S3)", rows=len(sweep.trials), models=len(cfgs), s3=int(not store.is_local), cases=1)


def test_a_quarantined_and_recomputed_record_appears_once_with_its_new_values(store, figures):
    cfgs = configs(3)
    for cfg in cfgs:
        write_model(store, cfg, 0.5)
    compact_sweep(store)
    victim = cfgs[0].trial_key
    rewrite_later(store)
    store.write_bytes(f"trials/{victim}.parquet", b"not parquet")  # harm after compaction
    damaged = load_sweep(store.uri)
    assert victim not in set(damaged.trials["trial_key"]), "its outdated consolidated copy is not used"
    assert damaged.skipped == [f"trials/{victim}.parquet"]
    assert store.unreadable("trials", trusted=held_records(store, "trials")) == [victim]
    assert quarantine_damaged(store) == [f"warning: trials/{victim}.parquet was unreadable; moved to _quarantine/, "
                                         "will be recomputed"]
    assert len(load_sweep(store.uri).trials) == 2, "a quarantined record has no rows"
    rewrite_later(store)
    write_model(store, cfgs[0], 0.75)  # recomputed: a new file under the same name
    sweep = load_sweep(store.uri)
    assert sweep.trials["trial_key"].tolist().count(victim) == 1 and len(sweep.trials) == 3
    assert sweep.trials.set_index("trial_key").loc[victim, "test_acc"] == 0.75
    assert compact(store, "trials").consolidated == 2  # the stale copy is replaced
    compacted = load_sweep(store.uri).trials
    once = int(compacted["trial_key"].tolist().count(victim) == 1
               and compacted.set_index("trial_key").loc[victim, "test_acc"] == 0.75)
    assert once == 1
    figures("tables-stale", "a record corrupted, quarantined and recomputed after compaction appears once with its new "
            "values in {once} of {cases} folders ({s3} on moto S3)", once=once, cases=1, s3=int(not store.is_local))


def _other_version(data: bytes) -> bytes:
    table = pq.read_table(io.BytesIO(data))
    manifest = json.loads(table.schema.metadata[MANIFEST_KEY]) | {"layout_version": 99}
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({MANIFEST_KEY: json.dumps(manifest)}), buffer)
    return buffer.getvalue()


DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: b"PAR1 but not really",
    "other version": _other_version,
    "foreign": lambda data: pq.write_table(pq.read_table(io.BytesIO(data)).replace_schema_metadata(None),
                                           buffer := io.BytesIO()) or buffer.getvalue(),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_an_unusable_consolidated_file_is_named_ignored_and_rebuilt(store, damage, figures):
    cfgs = configs(3)
    for cfg in cfgs:
        write_model(store, cfg, 0.5)
    compact_sweep(store)
    relpath = consolidated_path("trials")
    store.write_bytes(relpath, DAMAGE[damage](store.read_bytes(relpath)))
    sweep = load_sweep(store.uri)
    assert sorted(sweep.trials["trial_key"]) == sorted(c.trial_key for c in cfgs)
    assert len(sweep.ignored) == 1 and store.path(relpath) in sweep.ignored[0]
    assert "consolidated tables ignored" in format_status(sweep)
    assert held_records(store, "trials") == {}
    assert compact(store, "trials").ignored, "rebuilt from the record files"
    again = load_sweep(store.uri)
    rebuilt = int(not again.ignored and read_table(store, "trials").consolidated == len(cfgs))
    assert rebuilt == 1 and len(again.trials) == 3
    figures("tables-stale", "truncated / garbage / unknown layout / foreign file named, ignored, rebuilt in {rebuilt} of "
            "{cases} cases ({s3} on moto S3)", rebuilt=rebuilt, cases=1, s3=int(not store.is_local))


def test_a_missing_consolidated_file_reads_the_records(store):
    cfgs = configs(2)
    for cfg in cfgs:
        write_model(store, cfg, 0.5)
    compact_sweep(store)
    store.fs.delete_file(store.path(consolidated_path("trials")))
    sweep = load_sweep(store.uri)
    assert len(sweep.trials) == 2 and not sweep.ignored and read_table(store, "trials").consolidated == 0


def test_analysis_compact_command(tmp_path):
    store = Storage.open(str(tmp_path / "sweep"))
    write_model(store, configs(1)[0], 0.5)
    command = [sys.executable, "-m", "analysis", "compact"]
    done = subprocess.run([*command, store.root], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "trials: 1 records, 1 rows -> tables/trials.parquet (0 already consolidated, 1 added)" in done.stdout
    again = subprocess.run([*command, store.root], capture_output=True, text=True, timeout=120)
    assert "trials: up to date" in again.stdout
    bad = subprocess.run([*command, str(tmp_path / "nothing")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: path:") and len(bad.stderr.splitlines()) == 1
