"""Where features meet: every record describes the weights it names.

Each test here failed before lineage and the planner: a pack resumed with its values
given in another order, a repaired model whose measures and pairs stayed from its old
weights, a code default that changed under an unchanged command, a damaged key file, a
metric failing on one member of a pack, and a failure that Tune retried though it
would repeat.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analysis import load_sweep
from analysis.status import table_status
from sweeps.run.driver import RunOptions, exit_code, run
from sweeps.run.spec import SweepSpec
from workers.base import checkpoints
from workers.catalog import TrialConfig
from workers.core.records import PAIR_WEIGHTS_IDS, WEIGHTS_ID
from workers.packing.policy import pack_id

ROOT = Path(__file__).resolve().parent.parent
FAST = {"width": 2, "batch_size": 128, "lr": 0.05, "epochs": 2, "milestones": [1], "dataset": "digits",
        "model": "resnet18k"}
HESSIAN = {"metrics": ["hessian"], "hessian.n_samples": 64, "hessian.max_iter": 10, "hessian.trace_probes": 0}
PAIRS = {"measure_pairs": True, "pairs.bezier_epochs": 1, "pairs.bezier_points": 3, "pairs.cka_samples": 64}


def _spec(tmp_path: Path, **values) -> SweepSpec:
    return SweepSpec("taxonomy", "test", "s", str(tmp_path), {**FAST, **values})


def _cli(storage: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python sweeps/taxonomy.py --in-process` in a child process (a fault may kill it)."""
    return subprocess.run([sys.executable, str(ROOT / "sweeps" / "taxonomy.py"), "--in-process",
                           "--storage", str(storage), "--name", "s", *args],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600)


def assert_lineage_holds(folder: Path) -> int:
    """Every measure, pair and curve names its models' current weights, which are on disk.
    Returns the number of records checked."""
    sweep = load_sweep(str(folder))
    current = dict(zip(sweep.trials["trial_key"], sweep.trials[WEIGHTS_ID]))
    for key, weights in current.items():
        final = torch.load(folder / "checkpoints" / key / "final.pt", weights_only=True)
        assert checkpoints.weights_id(final["model"]) == weights
    curves = sweep.curves.drop_duplicates([c for c in ("trial_key", "pair_key", "kind") if c in sweep.curves])
    for frame in (sweep.measures, curves):
        if "trial_key" in frame:  # a model's own records
            own = frame[frame["trial_key"].notna()]
            assert (own[WEIGHTS_ID] == own["trial_key"].map(current)).all()
    for frame in (sweep.pairs, curves):
        if "trial_key_a" in frame:  # a pair's
            pair = frame[frame["trial_key_a"].notna()]
            for side, column in zip("ab", PAIR_WEIGHTS_IDS):
                assert (pair[column] == pair[f"trial_key_{side}"].map(current)).all()
    assert sweep.stale == ""
    return len(sweep.trials) + len(sweep.measures) + len(sweep.pairs) + len(curves)


def _member(sweep, seed: int) -> tuple[list, list, list]:
    """A member's final loss, its losses by epoch and its weights' hash."""
    trials = sweep.trials[sweep.trials["seed"] == seed]
    history = sweep.history[sweep.history["seed"] == seed].sort_values("epoch")
    return trials["train_loss"].tolist(), history["train_loss"].tolist(), trials[WEIGHTS_ID].tolist()


def test_a_killed_pack_rerun_with_its_values_in_another_order_resumes_each_member_from_its_own(tmp_path, figures):
    args = ["--set", "width=2", "--set", "batch_size=128", "--set", "lr=0.05", "--set", "epochs=3",
            "--set", "milestones=2", "--set", "metrics=", "--set", "measure_pairs=false", "--pack", "3"]
    cfgs = [TrialConfig.from_flat({**FAST, "epochs": 3, "milestones": [2], "seed": s}) for s in (0, 1, 2)]
    kill = {"LANDSCAPE_FAULT_KILL": f"{pack_id([c.trial_key for c in cfgs])}:1"}
    assert _cli(tmp_path / "crash", *args, "--set", "seed=0,1,2", env=kill).returncode == -9
    assert (tmp_path / "crash" / "s" / "checkpoints").exists()
    rerun = _cli(tmp_path / "crash", *args, "--set", "seed=2,1,0")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _cli(tmp_path / "clean", *args, "--set", "seed=0,1,2").returncode == 0
    crashed, clean = (load_sweep(str(tmp_path / f / "s")) for f in ("crash", "clean"))
    resumed, packed = (crashed.trials[column].unique().tolist() for column in ("resumed_from_epoch", "pack_size"))
    assert resumed == [1] and packed == [3]
    equal = sum(_member(crashed, seed) == _member(clean, seed) for seed in (0, 1, 2))  # bit for bit
    assert equal == len(cfgs)
    figures("pack-reordered", "{members}-member pack killed at epoch {epoch} of {epochs}, rerun in reverse order: "
            "{equal} of {members} members' losses, history and `weights_id` equal to an uninterrupted run, bit for bit",
            members=packed[0], epoch=resumed[0], epochs=int(crashed.history["epoch"].max()), equal=equal)


def _recomputed(after, before, lineage: list[str]) -> int:
    """Rows of `after` whose lineage no row of `before` has: computed from other weights."""
    old = set(before[lineage].itertuples(index=False))
    return sum(row not in old for row in after[lineage].itertuples(index=False))


def test_a_model_trained_again_takes_its_measures_and_pairs_with_it(tmp_path, figures):
    spec = _spec(tmp_path, seed=[0, 1], **HESSIAN, **PAIRS)
    run(spec, spec.trials(), RunOptions(in_process=True, pack="2"), log=lambda line: None)
    folder = tmp_path / "s"
    before = load_sweep(str(folder))
    assert before.trials["pack_size"].tolist() == [2, 2]
    victim = before.trials.set_index("seed").loc[1, "trial_key"]
    record = folder / "trials" / f"{victim}.parquet"
    data = bytearray(record.read_bytes())
    data[24:32] = bytes(b ^ 0xFF for b in data[24:32])  # inside the first data page: a checksum error
    record.write_bytes(bytes(data))

    lines: list[str] = []
    run(spec, spec.trials(), RunOptions(in_process=True, pack="2"), log=lines.append)
    after = load_sweep(str(folder))
    retrained = after.trials.set_index("trial_key").loc[victim]
    assert retrained["pack_size"] == 1  # alone this time: other float32 weights
    assert retrained[WEIGHTS_ID] != before.trials.set_index("trial_key").loc[victim, WEIGHTS_ID]
    assert any("was computed from weights its model no longer has" in line for line in lines), lines
    checked = assert_lineage_holds(folder)
    assert len(after.measures) == 2 and len(after.pairs) == 1  # recomputed, not duplicated
    measures = _recomputed(after.measures, before.measures, ["trial_key", WEIGHTS_ID])
    pairs = _recomputed(after.pairs, before.pairs, ["pair_key", *PAIR_WEIGHTS_IDS])
    assert (measures, pairs) == (1, 1), "its Hessian and the pair, of the new weights"
    figures("model-retrained", "1 of {models} packed models' trials record garbled: retrained alone (new `weights_id`), "
            "its Hessian and the pair recomputed ({measures} measure, {pairs} pair), every record's lineage equal to "
            "the hash of the `final.pt` on disk ({checked} records)", models=len(before.trials), measures=measures,
            pairs=pairs, checked=checked)


def test_a_changed_code_default_is_a_new_spec_whose_measures_readers_show(tmp_path, figures):
    values = ["--set", "width=2", "--set", "batch_size=128", "--set", "lr=0.05", "--set", "epochs=2",
              "--set", "milestones=1", "--set", "seed=0", "--set", "metrics=hessian", "--set", "hessian.max_iter=10",
              "--set", "hessian.trace_probes=0", "--set", "measure_pairs=false"]
    # The first run under code whose default hessian.n_samples was 96, as an older checkout.
    older = ("import sys, dataclasses; import workers.catalog; from workers.metrics.hessian import HessianOptions; "
             "HessianOptions.__init__.__defaults__ = (96, *HessianOptions.__init__.__defaults__[1:]); "
             "from sweeps.run.cli import main; sys.exit(main('taxonomy', '', sys.argv[1:]))")
    first = subprocess.run([sys.executable, "-c", older, "--in-process", "--storage", str(tmp_path), "--name", "s",
                            *values], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    old = json.loads(load_sweep(str(tmp_path / "s")).measures["settings"].item())["n_samples"]
    assert old == 96
    assert _cli(tmp_path, *values).returncode == 0  # today's default: 256
    sweep = load_sweep(str(tmp_path / "s"))
    read = [json.loads(s)["n_samples"] for s in sweep.measures["settings"]]
    assert read == [256]
    named = re.search(r"hessian\.n_samples \d+ instead of \d+", sweep.others)
    assert named and named.group(0) == "hessian.n_samples 96 instead of 256", sweep.others
    assert len(list((tmp_path / "s" / "specs").glob("*.json"))) == 2
    figures("default-changes", "`hessian.n_samples` default {old} then {new}: {read} measure read ({new}), `{named}` "
            "named", old=old, new=read[0], read=len(read), named=named.group(0))


@pytest.mark.parametrize("damage", ["deleted", "cut"])
def test_a_missing_or_damaged_spec_key_file_is_written_again(tmp_path, damage, figures):
    spec = _spec(tmp_path, seed=[0, 1], metrics=[], measure_pairs=False, epochs=1, milestones=[])
    run(spec, spec.trials(), RunOptions(in_process=True), log=lambda line: None)
    spec_id = json.loads((tmp_path / "s" / "spec.json").read_text())["spec_id"]
    keys = tmp_path / "s" / "specs" / f"{spec_id}.json"
    if damage == "deleted":
        keys.unlink()
        fault, cut = "deleted", {}
    else:
        keys.write_text(keys.read_text()[:40])
        fault, cut = "cut to {size} bytes", {"size": keys.stat().st_size}
    assert load_sweep(str(tmp_path / "s")).lens is None  # readers pool every spec meanwhile
    run(spec, spec.trials(), RunOptions(in_process=True), log=lambda line: None)
    written = len(json.loads(keys.read_text())["records"]["trials"])
    assert written == 2
    assert load_sweep(str(tmp_path / "s")).lens is not None
    figures("spec-keys-damaged", fault + ": rewritten ({written} trial keys), lens back", **cut, written=written)


def test_the_spec_id_does_not_depend_on_the_order_or_spelling_of_values(tmp_path):
    ids = []
    for seeds, lr in (([0, 1], 0.05), ([1, 0], 5e-2)):
        spec = SweepSpec("taxonomy", "test", "s", str(tmp_path / str(len(ids))),
                         {**FAST, "seed": seeds, "lr": lr, "metrics": [], "measure_pairs": False, "epochs": 1,
                          "milestones": []})
        run(spec, spec.trials(), RunOptions(in_process=True), log=lambda line: None)
        ids.append(json.loads((tmp_path / str(len(ids)) / "s" / "spec.json").read_text())["spec_id"])
    assert ids[0] == ids[1]


def test_a_metric_failing_on_one_member_leaves_its_pack_and_pairs_measured(tmp_path, monkeypatch, figures):
    spec = _spec(tmp_path, seed=[0, 1, 2], **HESSIAN, **PAIRS)
    victim = spec.trials()[1].trial_key
    monkeypatch.setenv("LANDSCAPE_FAULT_RAISE", f"{victim}:hessian")
    lines: list[str] = []
    summary = run(spec, spec.trials(), RunOptions(in_process=True, pack="3"), log=lines.append)
    assert summary.failed == 0 and summary.ran == 6 and exit_code(summary) == 0  # the command's exit status
    sweep = load_sweep(str(tmp_path / "s"))
    assert sweep.trials["pack_size"].tolist() == [3, 3, 3]
    measures = sweep.measures.set_index("trial_key")
    assert measures.loc[victim, "status"] == "failed"
    assert "InjectedError: injected failure: hessian" in measures.loc[victim, "error"]
    ok = measures.drop(victim)
    assert (ok["status"] == "ok").all() and ok["hessian_top_eigenvalue"].notna().all()
    assert len(sweep.pairs) == 3 and (sweep.pairs["status"] == "ok").all()
    # status: the failed measure counted as failed, not done and not missing
    assert [(s.done, s.diverged, s.failed, s.missing) for s in table_status(sweep)] == \
        [(3, 0, 0, 0), (2, 0, 1, 0), (3, 0, 0, 0)]
    again = run(spec, spec.trials(), RunOptions(in_process=True, pack="3"), log=lines.append)
    assert again.ran == 0  # recorded as failed: it would fail the same way again
    figures("metric-fails", "injected in 1 of {members} packed members' Hessian: {failed} failed measure, {ok} ok, "
            "{pairs} pairs ok, exit {exit}, a rerun runs {rerun} jobs", members=len(sweep.trials),
            failed=int((measures["status"] == "failed").sum()), ok=len(ok), pairs=int((sweep.pairs["status"] == "ok").sum()),
            exit=exit_code(summary), rerun=again.ran)


@pytest.mark.parametrize("executor", [["--in-process"], []], ids=["in-process", "tune"])
def test_a_failure_that_would_repeat_is_tried_once_and_the_rest_still_runs(tmp_path, executor, figures):
    seeds, retries = (0, 1, 2), 2
    args = ["--set", "width=2", "--set", "batch_size=128", "--set", "lr=0.05", "--set", "epochs=2",
            "--set", "milestones=1", "--set", "metrics=", "--set", f"seed={','.join(map(str, seeds))}",
            "--set", "pairs.bezier_epochs=1", "--set", "pairs.bezier_points=3", "--set", "pairs.cka_samples=64",
            "--pack", "off", "--max-retries", str(retries)]
    victim = TrialConfig.from_flat({**FAST, "seed": seeds[1]}).trial_key
    done = subprocess.run([sys.executable, str(ROOT / "sweeps" / "taxonomy.py"), *executor, "--storage",
                           str(tmp_path), "--name", "s", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", "LANDSCAPE_FAULT_RAISE": f"{victim}:train"})
    assert done.returncode == 1, done.stdout + done.stderr
    failed = re.search(r", (\d+) failed, ", done.stdout)
    assert failed and failed.group(1) == "3", done.stdout  # the model and its two pairs, counted from the records
    assert re.search(r"FAILED: InjectedError: .* \(see failures/", done.stdout), done.stdout
    failures = list((tmp_path / "s" / "failures").glob(f"{victim}.*.parquet"))
    assert len(failures) == 1, "a failure that would repeat was retried"
    sweep = load_sweep(str(tmp_path / "s"))
    assert sorted(sweep.trials["seed"]) == [0, 2] and len(sweep.pairs) == 1
    executor_name = "in process" if executor else "Tune"
    figures("job-fails", executor_name + ": injected training failure in 1 of {models} models, {records} failure "
            "record (not {attempts}), {trained} models and {pairs} pair recorded, `{failed} failed`, exit {exit}",
            models=len(seeds), records=len(failures), attempts=retries + 1,
            trained=len(sweep.trials), pairs=len(sweep.pairs), failed=int(failed.group(1)), exit=done.returncode)


def test_a_diverged_model_owes_no_metric_so_nothing_counts_as_failed_or_runs_again(tmp_path):
    spec = _spec(tmp_path, seed=0, lr=[0.05, 1e6], **HESSIAN)
    summary = run(spec, spec.trials(), RunOptions(in_process=True, pack="2"), log=lambda line: None)
    assert summary.failed == 0 and summary.ran == 2
    sweep = load_sweep(str(tmp_path / "s"))
    measures = sweep.measures.set_index("lr")
    assert measures.loc[1e6, "status"] == "diverged" and measures.loc[1e6, "error"].startswith("not measured: ")
    assert measures.loc[0.05, "status"] == "ok"
    # status: the diverged model's measure is diverged, as the model is; nothing missing
    assert [(s.done, s.diverged, s.failed, s.missing) for s in table_status(sweep)[:2]] == [(1, 1, 0, 0)] * 2
    assert run(spec, spec.trials(), RunOptions(in_process=True, pack="2"), log=lambda line: None).ran == 0
