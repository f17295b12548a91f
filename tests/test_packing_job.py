"""The pack job writes what the members' solo trials would, resumes after SIGKILL, and
lets one diverging member fail alone; a sweep trains its packs in process and with Ray."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch

from analysis import load_sweep
from sweeps.run.driver import RunOptions, run
from sweeps.run.spec import SweepSpec
from workers.base import checkpoints
from workers.catalog import TrialConfig
from workers.core.errors import StorageError
from workers.core.storage import Storage
from workers.jobs.pack_job import run_pack
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial
from workers.packing.policy import pack_id

TINY = {"dataset": "digits", "model": "resnet18k", "width": 2, "batch_size": 128, "epochs": 2, "milestones": [1],
        "lr": 0.05, "metrics": ["hessian"], "hessian.n_samples": 64}


def ctx(path) -> RunContext:
    return RunContext(storage=str(path), sweep="test", threads=1)


def members(*overrides: dict) -> list[TrialConfig]:
    return [TrialConfig.from_flat({**TINY, **o}) for o in overrides]


def test_a_pack_records_each_member_as_its_solo_trial_and_a_diverging_member_alone(tmp_path, figures):
    cfgs = members({"seed": 0}, {"seed": 1}, {"seed": 2, "lr": 1e6})
    packed = run_pack(cfgs, [(cfgs[0], cfgs[1], False)], ctx(tmp_path / "packed"))
    solo = [run_trial(c, ctx(tmp_path / "solo")) for c in cfgs]
    a, b = Storage.open(str(tmp_path / "packed")), Storage.open(str(tmp_path / "solo"))
    for cfg, row, alone in zip(cfgs, packed, solo):
        start = checkpoints.load(a, cfg.trial_key, "init")["model"]
        for key, value in checkpoints.load(b, cfg.trial_key, "init")["model"].items():
            assert torch.equal(start[key], value), key  # the solo trial's initial weights
        assert (row["pack_size"], row["pack_id"], row["unpacked_reason"]) == \
            (3, pack_id([c.trial_key for c in cfgs]), "")
        assert (alone["pack_size"], alone["pack_id"]) == (1, "")
        assert set(row) == set(alone)
        assert row["status"] == alone["status"] and row["epochs_done"] == alone["epochs_done"]
        history = a.read_table("history", cfg.trial_key).to_pandas()
        assert history["epoch"].tolist() == b.read_table("history", cfg.trial_key).to_pandas()["epoch"].tolist()
    differences = []  # relative, of each ok member's outcomes to its solo run's
    for row, alone in zip(packed[:2], solo[:2]):
        assert row["status"] == "ok"
        for name in ("train_loss", "test_loss", "hessian_top_eigenvalue"):
            assert row[name] == pytest.approx(alone[name], rel=1e-4), name
            differences.append(abs(row[name] - alone[name]) / abs(alone[name]))
    diverged = packed[2]
    assert diverged["status"] == "diverged" and "non-finite" in diverged["error"]
    assert math.isnan(diverged["train_loss"]) and "hessian_top_eigenvalue" not in diverged
    assert not a.exists(f"checkpoints/{cfgs[2].trial_key}/final.pt")
    pair = packed[3]
    assert pair["status"] == "ok" and 0 < pair["cka_softmax"] <= 1
    assert a.exists(f"pairs/{pair['pair_key']}.parquet")
    statuses = [row["status"] for row in packed[:len(cfgs)]]
    figures("member-diverges", "pack of {size} with lr {lr:g} for one member: {diverged} diverged, {ok} ok within "
            "{difference:.0e} of solo (train and test loss, Hessian)", size=packed[0]["pack_size"],
            lr=diverged["lr"], diverged=statuses.count("diverged"), ok=statuses.count("ok"),
            difference=max(differences))


def test_a_partly_trained_pack_trains_only_its_missing_members(tmp_path):
    cfgs = members({"seed": 0}, {"seed": 1}, {"seed": 2})
    first = run_trial(cfgs[0], ctx(tmp_path))
    record = tmp_path / "trials" / f"{cfgs[0].trial_key}.parquet"
    stamp = os.stat(record).st_mtime_ns
    rows = run_pack(cfgs, [], ctx(tmp_path))
    assert os.stat(record).st_mtime_ns == stamp and rows[0]["train_loss"] == first["train_loss"]
    assert [r["pack_size"] for r in rows] == [1, 2, 2]
    assert rows[1]["pack_id"] == pack_id([cfgs[1].trial_key, cfgs[2].trial_key])


def kill_pack_at(cfgs: list[TrialConfig], storage: str, epoch: int) -> int:
    """Run the pack job in a child process that SIGKILLs itself after `epoch`."""
    script = ("import sys, json; from workers.catalog import TrialConfig; "
              "from workers.jobs.runtime import RunContext; from workers.jobs.pack_job import run_pack; "
              "run_pack([TrialConfig.from_flat(f) for f in json.loads(sys.argv[1])], [], "
              "RunContext(storage=sys.argv[2], sweep='test', threads=1))")
    key = pack_id([c.trial_key for c in cfgs])
    env = {**os.environ, "LANDSCAPE_FAULT_KILL": f"{key}:{epoch}"}
    flats = json.dumps([c.to_flat() for c in cfgs])
    return subprocess.run([sys.executable, "-c", script, flats, storage], env=env).returncode


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "alig"])
def test_a_killed_pack_resumes_from_its_last_epoch_and_ends_as_if_never_killed(tmp_path, optimizer, figures):
    epochs, kill_epoch = 3, 2
    cfgs = [TrialConfig.from_flat({**TINY, "metrics": [], "epochs": epochs, "milestones": [2], "seed": s,
                                   "optimizer": optimizer}) for s in (0, 1)]
    assert kill_pack_at(cfgs, str(tmp_path / "cut"), kill_epoch) == -signal.SIGKILL
    resumed = run_pack(cfgs, [], ctx(tmp_path / "cut"))
    whole = run_pack(cfgs, [], ctx(tmp_path / "whole"))
    difference = 0.0
    for again, clean, cfg in zip(resumed, whole, cfgs):
        assert again["resumed_from_epoch"] == kill_epoch
        difference = max(difference, abs(again["train_loss"] - clean["train_loss"]),
                         abs(again["test_acc"] - clean["test_acc"]))
        history = pd.read_parquet(tmp_path / "cut" / "history" / f"{cfg.trial_key}.parquet")
        assert history["epoch"].tolist() == list(range(1, epochs + 1))
    assert difference == 0
    assert not (tmp_path / "cut" / "checkpoints" / pack_id([c.trial_key for c in cfgs]) / "last.pt").exists()
    # one part for all the optimizers (the fixture sums the cases' counts)
    figures("pack-kill", f"the pack job alone with each of {{cases}} optimizers, SIGKILLed at epoch {kill_epoch} of "
            f"{epochs}: {{resumed}} members resumed from epoch {kill_epoch}, losses and test accuracy equal to a "
            "clean pack (total difference {difference:g})", cases=1,
            resumed=int(sum(r["resumed_from_epoch"] == kill_epoch for r in resumed)), difference=difference)


def demo_spec(path, name: str) -> SweepSpec:
    values = {**TINY, "metrics": [], "width": [2, 16], "seed": [0, 1], "measure_pairs": True,
              "pairs.mc_pairs": 0}
    return SweepSpec(study="taxonomy", preset="demo", name=name, storage=str(path), values=values)


def test_a_packed_sweep_has_the_records_of_a_solo_sweep(tmp_path):
    lines: list[str] = []
    results = {}
    for pack in ("auto", "off"):
        spec = demo_spec(tmp_path, pack)
        summary = run(spec, spec.trials(), RunOptions(in_process=True, pack=pack), log=lines.append)
        assert summary.failed == 0
        results[pack] = load_sweep(str(tmp_path / pack))
    packed, alone = (results[p].trials.set_index("trial_key").sort_index() for p in ("auto", "off"))
    assert list(packed.index) == list(alone.index)
    pd.testing.assert_series_equal(packed["train_loss"], alone["train_loss"], rtol=1e-4)
    assert packed.groupby("width")["pack_size"].max().to_dict() == {2: 2, 16: 1}  # auto packs width <= 8
    assert set(results["auto"].pairs["pair_key"]) == set(results["off"].pairs["pair_key"])
    assert any(line.startswith("[1/6] width=2 seed=0 (pack of 2)  ok  train_loss=") for line in lines)
    assert any(line.startswith("[3/6] pair width=2 seeds 0,1 (pack of 2)  ok") for line in lines)
    assert set(packed.loc[packed["width"] == 16, "unpacked_reason"]) == {"width 16 > 8 (--pack auto on cpu)"}
    assert set(alone["unpacked_reason"]) == {"--pack off"}


def test_packs_run_through_ray_tune_and_each_member_reports_to_the_records(ray_session, tmp_path):
    spec = demo_spec(tmp_path, "ray")
    summary = run(spec, spec.trials(), RunOptions(pack="auto"), log=lambda line: None)
    assert summary.failed == 0
    sweep = load_sweep(str(tmp_path / "ray"))
    assert sorted(sweep.trials["pack_size"]) == [1, 1, 2, 2] and (sweep.trials["status"] == "ok").all()
    assert len(sweep.pairs) == 2 and sweep.trials["node_id"].str.len().min() > 0


def test_a_pack_that_failed_to_record_a_member_resumes_and_records_just_that_one(tmp_path):
    cfgs = members({"seed": 0, "metrics": []}, {"seed": 1, "metrics": []})
    blocked = tmp_path / "cut" / "trials" / f"{cfgs[1].trial_key}.parquet"
    blocked.mkdir(parents=True)  # member 1's record cannot be written
    with pytest.raises(StorageError):
        run_pack(cfgs, [], ctx(tmp_path / "cut"))
    kept = tmp_path / "cut" / "trials" / f"{cfgs[0].trial_key}.parquet"
    stamp = os.stat(kept).st_mtime_ns
    last = tmp_path / "cut" / "checkpoints" / pack_id([c.trial_key for c in cfgs]) / "last.pt"
    assert last.exists()
    blocked.rmdir()
    resumed = run_pack(cfgs, [], ctx(tmp_path / "cut"))
    whole = run_pack(cfgs, [], ctx(tmp_path / "whole"))
    assert os.stat(kept).st_mtime_ns == stamp  # recorded once
    assert resumed[1]["resumed_from_epoch"] == 1 and resumed[1]["pack_size"] == 2
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in whole]
    assert not last.exists()
