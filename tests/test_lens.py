"""The spec is the lens: one sweep folder, several specs run in it, and every reader
works on the records of the latest spec, naming the others instead of pooling them."""

from __future__ import annotations

from analysis import load_sweep
from analysis.__main__ import main as analysis_main
from analysis.status import format_status
from sweeps.driver import RunOptions, run
from sweeps.spec import SweepSpec

HESSIAN = {"metrics": ["hessian"], "hessian.max_iter": 20, "hessian.trace_probes": 0}


def _run(tiny: dict, storage, **values) -> None:
    spec = SweepSpec("taxonomy", "demo", "s", str(storage), {**tiny, "seed": [0, 1], **HESSIAN, **values})
    run(spec, spec.trials(), RunOptions(in_process=True), log=lambda line: None)


def test_a_changed_option_is_not_pooled_into_the_cells_of_the_new_spec(tiny, tmp_path, capsys):
    _run(tiny, tmp_path, epochs=2, milestones=[1])
    _run(tiny, tmp_path, epochs=3, milestones=[1])
    folder = str(tmp_path / "s")
    sweep = load_sweep(folder)
    assert sorted(sweep.trials["epochs"]) == [3, 3] and sorted(sweep.trials["seed"]) == [0, 1]
    assert "2 model(s) of another spec: epochs 2 instead of 3; `--all` to include them" in sweep.others
    status = format_status(sweep)
    trials_line = next(line for line in status.splitlines() if line.startswith("trials"))
    assert trials_line.split()[1:3] == ["2", "2"]  # expected 2, done 2: not 4 done of 2
    assert len(load_sweep(folder, all_specs=True).trials) == 4
    assert analysis_main(["status", folder, "--all"]) == 0 and "another spec" not in capsys.readouterr().out


def test_of_two_measures_of_one_metric_the_one_with_the_spec_options_is_used(tiny, tmp_path):
    _run(tiny, tmp_path, **{"hessian.n_samples": 32})
    _run(tiny, tmp_path, **{"hessian.n_samples": 256})
    sweep = load_sweep(str(tmp_path / "s"))
    assert len(sweep.measures) == 2 and sweep.measures["settings"].str.contains('"n_samples": 256').all()
    assert len(load_sweep(str(tmp_path / "s"), all_specs=True).measures) == 4
    assert sweep.trials["hessian_top_eigenvalue"].notna().all() and sweep.others == ""


def test_an_extended_grid_keeps_reading_what_its_first_run_wrote(tiny, tmp_path):
    _run(tiny, tmp_path)
    _run(tiny, tmp_path, seed=[0, 1, 2])
    sweep = load_sweep(str(tmp_path / "s"))
    assert sorted(sweep.trials["seed"]) == [0, 1, 2] and sweep.others == ""
