"""A sweep folder written by an earlier version loads and resumes: its keys still name
its records, so extending its grid trains and measures only the new work."""

from __future__ import annotations

import tarfile
from pathlib import Path

from analysis import load_sweep
from sweeps.run.cli import main

ARCHIVE = Path(__file__).parent / "data" / "stored_sweep_v1.tar.gz"
# The command that wrote the archive (see tests/data/README.md), with one more seed.
COMMAND = ["--in-process", "--name", "stored", "--pack", "off", "--set", "width=2", "--set", "batch_size=128",
           "--set", "seed=0,1,2", "--set", "epochs=2", "--set", "milestones=1", "--set", "lr=0.05",
           "--set", "metrics=hessian,interpolation", "--set", "hessian.n_samples=64", "--set", "hessian.top_k=1",
           "--set", "pairs.bezier_epochs=1", "--set", "pairs.bezier_points=3", "--set", "pairs.cka_samples=64"]


def test_a_stored_sweep_loads_with_its_keys_and_resumes_with_only_new_work(tmp_path, capsys):
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(tmp_path, filter="data")
    folder = tmp_path / "stored"
    before = load_sweep(str(folder))
    assert len(before.trials) == 2 and len(before.measures) == 4 and len(before.pairs) == 1
    stored_keys = set(before.trials["trial_key"])
    stored_pair = before.pairs["pair_key"].item()
    assert before.pairs["cell_key"].item() in set(before.trials["cell_key"])

    assert main("taxonomy", "", [*COMMAND, "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 already done, 1 to run" in out
    after = load_sweep(str(folder))
    assert sorted(after.trials["seed"]) == [0, 1, 2] and stored_keys < set(after.trials["trial_key"])
    assert after.trials["cell_key"].nunique() == 1 and after.trials["trial_key"].is_unique
    assert after.axes() == []  # seed is the only axis: no outcome column (resumed_from_epoch, ...) taken for one
    assert len(after.measures) == 6 and after.measures.groupby("metric").size().eq(3).all()
    # the stored pair is found under its key, not measured again; the new seed's pairs are added
    assert len(after.pairs) == 3 and after.pairs["pair_key"].is_unique and stored_pair in set(after.pairs["pair_key"])
    assert sorted(zip(after.pairs["seed_a"], after.pairs["seed_b"])) == [(0, 1), (0, 2), (1, 2)]
    # lineage: the stored records, written before it, name no weights and stay current;
    # the new model's records and its pairs name the weights they were computed from
    stored = after.trials["trial_key"].isin(stored_keys)
    assert (after.trials.loc[stored, "weights_id"] == "").all() and (after.trials.loc[~stored, "weights_id"] != "").all()
    current = dict(zip(after.trials["trial_key"], after.trials["weights_id"]))
    assert (after.measures["weights_id"] == after.measures["trial_key"].map(current)).all()
    assert (after.pairs["weights_id_b"] == after.pairs["trial_key_b"].map(current)).all()
    assert after.stale == "" and not (folder / "_quarantine").exists()
