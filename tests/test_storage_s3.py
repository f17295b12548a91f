"""Sweeps on object storage: a local S3-compatible server (moto), real pyarrow S3 I/O.

The sweep itself runs in a subprocess with its own Ray: Ray workers take their
environment (here the S3 credentials) from the process that started Ray, and the test
session's Ray was started before these variables existed. The server is the
`s3_endpoint` fixture of conftest.py (bench.s3server).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from analysis import load_sweep
from bench.s3server import CREDENTIALS, uri
from workers.core.errors import StorageError
from workers.core.storage import Storage


def test_storage_round_trip_on_s3(s3_endpoint):
    root = Storage.open(uri(s3_endpoint, "unit"))
    assert not root.is_local and root.root == "sweeps/unit"
    store = root.child("sweep-a")
    assert store.uri == uri(s3_endpoint, "unit/sweep-a"), "child keeps the endpoint options"
    assert Storage.open(store.uri).root == "sweeps/unit/sweep-a"

    store.write_table("trials", "k1", pa.table({"x": [1.5]}))
    store.write_bytes("trials/.k2.parquet.tmp", b"half-written")  # what listings must skip
    assert store.list_names("trials", ".parquet") == ["k1"]
    assert store.exists("trials/k1.parquet") and not store.exists("trials/k3.parquet")
    assert store.read_table("trials", "k1").column("x").to_pylist() == [1.5]
    assert store.list_names("history", ".parquet") == []  # no folder yet: empty, no error
    # Written as a whole object: no temporary names left behind on the object store.
    infos = store.fs.get_file_info(pafs.FileSelector(store.root, recursive=True))
    assert sorted(i.base_name for i in infos if i.type == pafs.FileType.File) == [".k2.parquet.tmp", "k1.parquet"]


def test_missing_bucket_is_a_storage_error(s3_endpoint):
    store = Storage.open(f"s3://no-such-bucket/x?endpoint_override={s3_endpoint}&scheme=http")
    with pytest.raises(StorageError, match="no-such-bucket"):
        store.write_bytes("spec.json", b"{}")


SWEEP_SCRIPT = """
import ray
from sweeps.run.cli import main

ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
argv = ["--storage", {storage!r}, "--name", "s3sweep", "--set", "width=2", "--set", "seed=0,1",
        "--set", "epochs=2", "--set", "milestones=1", "--set", "batch_size=128", "--set", "metrics=",
        "--set", "measure_pairs=false"]
for attempt in (1, 2):
    print(f"run {{attempt}}", flush=True)
    assert main("taxonomy", "", argv) == 0
"""


def test_sweep_on_s3_resumes_and_loads(s3_endpoint, tmp_path):
    storage = uri(s3_endpoint, "runs")
    script = textwrap.dedent(SWEEP_SCRIPT.format(storage=storage))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=240, env={**os.environ, **CREDENTIALS})
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = done.stdout.split("run 2")
    assert "2 to run" in first and "done: 2 trained or measured, 0 skipped, 0 failed" in first
    assert "2 already done, 0 to run" in second and "done: 0 trained or measured, 2 skipped" in second
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob("*.pt")), "records went to S3"

    sweep = load_sweep(uri(s3_endpoint, "runs/s3sweep"))
    assert sweep.path == uri(s3_endpoint, "runs/s3sweep")
    assert sweep.spec["name"] == "s3sweep" and sweep.spec["storage"] == storage
    assert sorted(sweep.trials["seed"]) == [0, 1] and set(sweep.trials["status"]) == {"ok"}
    assert len(sweep.history) == 2 * 2  # two epochs per model
    store = Storage.open(sweep.path)
    for key in sweep.trials["trial_key"]:
        assert store.exists(f"checkpoints/{key}/init.pt") and store.exists(f"checkpoints/{key}/final.pt")
        assert not store.exists(f"checkpoints/{key}/last.pt"), "resume checkpoint removed when done"
