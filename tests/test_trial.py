"""One trial without Ray: determinism, records, divergence, atomic writes, resume."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from analysis import load_sweep
from workers.catalog import TrialConfig
from workers.core.storage import Storage
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial


def ctx(path) -> RunContext:
    return RunContext(storage=str(path), sweep="test", threads=1)


def test_same_config_and_seed_give_the_same_final_training_loss(tiny, tmp_path):
    cfg = TrialConfig.from_flat(tiny)
    a = run_trial(cfg, ctx(tmp_path / "a"))
    b = run_trial(cfg, ctx(tmp_path / "b"))
    other = run_trial(TrialConfig.from_flat({**tiny, "seed": 1}), ctx(tmp_path / "a"))
    assert a["train_loss"] == b["train_loss"]
    assert other["train_loss"] != a["train_loss"]


def test_records_hold_config_outcome_and_provenance(tiny, tmp_path):
    cfg = TrialConfig.from_flat({**tiny, "label_noise": 0.1})
    row = run_trial(cfg, ctx(tmp_path))
    trials = pq.read_table(tmp_path / "trials" / f"{cfg.trial_key}.parquet").to_pandas()
    history = pq.read_table(tmp_path / "history" / f"{cfg.trial_key}.parquet").to_pandas()
    assert len(trials) == 1 and trials.loc[0, "status"] == "ok"
    assert trials.loc[0, "width"] == 2 and trials.loc[0, "label_noise"] == 0.1
    assert trials.loc[0, "n_noisy_labels"] == round(0.1 * 1437)
    assert {"host", "device", "torch_version", "schema_version", "code_version"} <= set(trials.columns)
    assert history["epoch"].tolist() == [1, 2]
    assert history["lr"].tolist() == pytest.approx([0.05, 0.005])  # x0.1 at milestone 1
    assert 0 <= row["test_acc"] <= 1
    for name in ("init", "final"):
        assert (tmp_path / "checkpoints" / cfg.trial_key / f"{name}.pt").exists()
    assert not (tmp_path / "checkpoints" / cfg.trial_key / "last.pt").exists()


def test_rerun_reads_the_record_instead_of_training(tiny, tmp_path):
    cfg = TrialConfig.from_flat(tiny)
    first = run_trial(cfg, ctx(tmp_path))
    record = tmp_path / "trials" / f"{cfg.trial_key}.parquet"
    stamp = os.stat(record).st_mtime_ns
    again = run_trial(cfg, ctx(tmp_path))
    assert os.stat(record).st_mtime_ns == stamp
    assert again["train_loss"] == first["train_loss"]


def test_divergence_is_a_recorded_status_not_an_exception(tiny, tmp_path):
    cfg = TrialConfig.from_flat({**tiny, "lr": 1e6, "epochs": 3, "milestones": [3]})
    row = run_trial(cfg, ctx(tmp_path))
    assert row["status"] == "diverged" and "non-finite" in row["error"]
    assert row["train_loss"] != row["train_loss"]  # NaN
    sweep = load_sweep(str(tmp_path))
    assert sweep.trials["status"].tolist() == ["diverged"]


def test_a_failed_write_leaves_no_partial_file(tmp_path):
    from workers.core.errors import StorageError

    storage = Storage.open(str(tmp_path))
    (tmp_path / "trials" / "x.parquet").mkdir(parents=True)  # the rename into place will fail
    with pytest.raises(StorageError, match="x.parquet"):
        storage.write_bytes("trials/x.parquet", b"whole file")
    assert [p.name for p in (tmp_path / "trials").iterdir()] == ["x.parquet"]  # no temp left
    (tmp_path / "trials" / "x.parquet").rmdir()
    storage.write_bytes("trials/x.parquet", b"whole file")
    assert (tmp_path / "trials" / "x.parquet").read_bytes() == b"whole file"


def test_listing_skips_temp_files(tmp_path):
    storage = Storage.open(str(tmp_path))
    storage.write_bytes("trials/a.parquet", b"1")
    (tmp_path / "trials" / ".b.parquet.123.tmp").write_bytes(b"partial")
    (tmp_path / "trials" / "_c.parquet").write_bytes(b"partial")
    assert storage.list_names("trials", ".parquet") == ["a"]


def test_empty_lists_keep_their_item_type_so_files_of_a_table_agree():
    from workers.core.records import to_table

    schema = to_table([{"milestones": [], "metrics": [], "hessian_groups": []}]).schema
    assert str(schema.field("milestones").type) == "list<item: int64>"
    assert str(schema.field("metrics").type) == "list<item: string>"
    assert str(schema.field("hessian_groups").type) == "list<item: string>"
