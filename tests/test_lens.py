"""The spec is the lens: one sweep folder, several specs run in it, and every reader
works on the records of the latest spec, naming the others instead of pooling them."""

from __future__ import annotations

import json
import re

from analysis import load_sweep
from analysis.__main__ import main as analysis_main
from analysis.lens import spec_path
from analysis.status import format_status
from sweeps.run.driver import RunOptions, run
from sweeps.run.spec import SweepSpec
from tests.test_lineage_readers import models, write_measure, write_pair, write_trial
from workers.core.records import measure_key, pair_key
from workers.core.storage import Storage

HESSIAN = {"metrics": ["hessian"], "hessian.max_iter": 20, "hessian.trace_probes": 0}


def _run(tiny: dict, storage, **values) -> None:
    spec = SweepSpec("taxonomy", "demo", "s", str(storage), {**tiny, "seed": [0, 1], **HESSIAN, **values})
    run(spec, spec.trials(), RunOptions(in_process=True), log=lambda line: None)


def test_a_changed_option_is_not_pooled_into_the_cells_of_the_new_spec(tiny, tmp_path, capsys, figures):
    _run(tiny, tmp_path, epochs=2, milestones=[1])
    _run(tiny, tmp_path, epochs=3, milestones=[1])
    folder = str(tmp_path / "s")
    sweep = load_sweep(folder)
    assert sorted(sweep.trials["epochs"]) == [3, 3] and sorted(sweep.trials["seed"]) == [0, 1]
    assert sweep.others == ("this folder also holds records of another spec: 2 model(s) (epochs 2 instead of 3), "
                            "2 measure(s) (of models outside the spec); `--all` to include them")
    status = format_status(sweep)
    trials_line = next(line for line in status.splitlines() if line.startswith("trials"))
    expected, done = (int(n) for n in trials_line.split()[1:3])
    assert (expected, done) == (2, 2)  # not 4 done of 2
    everything = load_sweep(folder, all_specs=True).trials
    assert len(everything) == 4
    assert analysis_main(["status", folder, "--all"]) == 0 and "another spec" not in capsys.readouterr().out
    named = int(re.search(r"(\d+) model\(s\)", sweep.others).group(1))
    figures("several-specs", "{trainings} trainings of {models} models: {read} read, {named} named; `status` "
            "{expected} expected / {done} done", trainings=len(everything), models=everything["seed"].nunique(),
            read=len(sweep.trials), named=named, expected=expected, done=done)


def test_of_two_measures_of_one_metric_the_one_with_the_spec_options_is_used(tiny, tmp_path):
    _run(tiny, tmp_path, **{"hessian.n_samples": 32})
    _run(tiny, tmp_path, **{"hessian.n_samples": 256})
    sweep = load_sweep(str(tmp_path / "s"))
    assert len(sweep.measures) == 2 and sweep.measures["settings"].str.contains('"n_samples": 256').all()
    assert len(load_sweep(str(tmp_path / "s"), all_specs=True).measures) == 4
    assert sweep.trials["hessian_top_eigenvalue"].notna().all()
    assert "2 measure(s) (hessian.n_samples 32 instead of 256)" in sweep.others  # not dropped silently


def test_an_extended_grid_keeps_reading_what_its_first_run_wrote(tiny, tmp_path):
    _run(tiny, tmp_path)
    _run(tiny, tmp_path, seed=[0, 1, 2])
    sweep = load_sweep(str(tmp_path / "s"))
    assert sorted(sweep.trials["seed"]) == [0, 1, 2] and sweep.others == ""


SPEC = {"epochs": 2, "milestones": [1], "hessian.n_samples": 256}  # options of the spec read


def _two_specs_folder(store: Storage) -> None:
    """The spec's two models with their Hessian (n_samples 256, top eigenvalue 7) and
    pair, beside another spec's records: the same models measured with n_samples 32
    (eigenvalue 5), a pair with other CKA settings, and a model trained for 3 epochs."""
    ours, old = models(**SPEC), models(**{**SPEC, "hessian.n_samples": 32, "pairs.cka_samples": 512})
    (other,) = models(1, **{**SPEC, "epochs": 3})
    for cfg, weights_id in ((ours[0], "a"), (ours[1], "b"), (other, "c")):
        write_trial(store, cfg, weights_id)
    write_measure(store, other, "c", 3.0)
    for cfg, past, weights_id in zip(ours, old, "ab"):
        write_measure(store, cfg, weights_id, 7.0)
        write_measure(store, past, weights_id, 5.0)
    write_pair(store, *ours, ("a", "b"))
    write_pair(store, *old, ("a", "b"))
    body = {"values": {"seed": [0, 1], **{k: [v] for k, v in SPEC.items()}, "metrics": [["hessian"]]},
            "spec_id": "ours"}
    records = {"trials": [c.trial_key for c in ours], "measures": [measure_key(c, "hessian") for c in ours],
               "pairs": [pair_key(*ours, with_mc=True)]}
    store.write_bytes(spec_path("ours"), json.dumps({**body, "records": records}).encode())
    store.write_bytes("spec.json", json.dumps(body).encode())


def test_the_lens_names_the_measures_and_pairs_of_another_spec_by_their_settings(tmp_path, capsys):
    store = Storage.open(str(tmp_path / "s"))
    _two_specs_folder(store)
    sweep = load_sweep(store.uri)
    assert len(sweep.trials) == 2 and list(sweep.trials["hessian_top_eigenvalue"]) == [7.0, 7.0]
    assert len(sweep.measures) == 2 and len(sweep.pairs) == 1
    assert sweep.others == ("this folder also holds records of another spec: 1 model(s) (epochs 3 instead of 2), "
                            "3 measure(s) (of models outside the spec; hessian.n_samples 32 instead of 256), "
                            "1 pair(s) (pairs.cka_samples 512 instead of 768); `--all` to include them")
    assert f"note: {sweep.others}" in capsys.readouterr().err


def test_all_specs_never_picks_one_of_two_measures_of_a_metric(tmp_path, capsys):
    """With `--all`, the spec's models hold two Hessian measures each (n_samples 256 and
    32): their Hessian columns are NaN and a warning says so, instead of the first one
    read; the model measured once keeps its value, and `measures` keeps every row."""
    store = Storage.open(str(tmp_path / "s"))
    _two_specs_folder(store)
    sweep = load_sweep(store.uri, all_specs=True)
    eigen = sweep.trials.set_index("epochs")["hessian_top_eigenvalue"]
    assert eigen[2].isna().all() and eigen[3] == 3.0
    assert len(sweep.measures) == 5 and sweep.measures["settings"].nunique() == 2
    assert sweep.conflicts.startswith("measured under more than one setting: hessian on 2 model(s); their columns")
    assert f"warning: {sweep.conflicts}" in capsys.readouterr().err
    assert load_sweep(store.uri).conflicts == ""  # the lens reads one measure per metric and model
