"""The two variant studies: presets, entry points, and their reports on real sweeps."""

from __future__ import annotations

import math
import runpy
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import load_sweep
from analysis.__main__ import main as analysis_main
from analysis.studies import barrier_correlation, variant_label, write_study_report
from sweeps.run.cli import main as sweep_main
from sweeps.run.presets import PRESETS
from sweeps.run.spec import SweepSpec
from workers.core.errors import ConfigError


@pytest.mark.parametrize("study", ["interpolation", "optimizers"])
@pytest.mark.parametrize("preset", ["demo", "paper"])
def test_every_study_preset_expands_to_valid_trials(study, preset):
    spec = SweepSpec(study=study, preset=preset, name=f"{study}-{preset}", storage="unused",
                     values=dict(PRESETS[study][preset]))
    trials = spec.trials()
    assert len({c.trial_key for c in trials}) == len(trials) > 1
    if study == "interpolation":
        assert all(c.measure.metrics == ("interpolation",) for c in trials)
        assert {c.model.batchnorm for c in trials} == {True, False}
    else:
        variants = {(c.optim.optimizer, c.late_phase.k > 0, c.swa.start > 0) for c in trials}
        assert len(variants) == 12  # 3 optimizers, each alone, late-phase, SWA, both


@pytest.mark.parametrize("study", ["interpolation", "optimizers"])
def test_study_entry_points_print_their_grid(study, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"sweeps/{study}.py", "--dry-run"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(f"sweeps/{study}.py", run_name="__main__")
    assert exited.value.code == 0
    assert f"sweep {study}-demo ({study}, preset demo)" in capsys.readouterr().out


def test_variant_labels_name_what_is_switched_on():
    assert variant_label(pd.Series({"optimizer": "sgd", "late_phase_k": 0, "swa_start": 0})) == "sgd"
    row = pd.Series({"optimizer": "alig", "late_phase_k": 4, "swa_start": 8})
    assert variant_label(row) == "alig + late-phase K=4 + SWA from 8"
    assert variant_label(pd.Series({"optimizer": "adam"})) == "adam"  # records from before the variants


def test_barrier_correlation_uses_finished_models_only():
    trials = pd.DataFrame({
        "status": ["ok"] * 4 + ["diverged"],
        "barrier": [0.0, 1.0, 2.0, 3.0, 10.0],
        "test_acc": [0.9, 0.8, 0.85, 0.6, math.nan],
    })
    pearson, spearman, n = barrier_correlation(trials, "barrier")
    assert n == 4
    assert pearson == pytest.approx(np.corrcoef([0, 1, 2, 3], [0.9, 0.8, 0.85, 0.6])[0, 1])
    assert spearman == pytest.approx(-0.8)  # ranks (1, 2, 3, 4) vs (4, 2, 3, 1)


def test_optimizers_report_on_a_real_sweep(tmp_path, capsys):
    code = sweep_main("optimizers", "", [
        "--storage", str(tmp_path), "--name", "opt", "--in-process",
        "--set", "width=2", "--set", "batch_size=128", "--set", "epochs=3", "--set", "seed=0,1",
        "--set", "optimizer=sgd,alig", "--set", "late_phase.k=0,2", "--set", "late_phase.t0=1",
        "--set", "swa.start=0", "--set", "measure_pairs=true", "--set", "pairs.bezier_epochs=1",
        "--set", "pairs.bezier_points=3", "--set", "pairs.cka_samples=64",
    ])
    assert code == 0
    assert analysis_main(["study-report", str(tmp_path / "opt")]) == 0
    summary = capsys.readouterr().out
    report = tmp_path / "opt" / "report"
    assert (report / "test_accuracy.png").stat().st_size > 1000
    cells = pd.read_csv(report / "variants.csv")
    assert sorted(cells["variant"].unique()) == ["alig", "alig + late-phase K=2", "sgd", "sgd + late-phase K=2"]
    assert (cells["models"] == 2).all()
    trials = load_sweep(str(tmp_path / "opt")).trials
    sgd = trials[(trials["optimizer"] == "sgd") & (trials["late_phase_k"] == 0)]
    assert cells.loc[cells["variant"] == "sgd", "test_acc"].item() == pytest.approx(sgd["test_acc"].mean())
    assert "| sgd + late-phase K=2 |" in summary
    assert "## Phase per cell" in summary and cells["phase"].notna().all()


def test_interpolation_report_on_a_real_sweep(tmp_path):
    code = sweep_main("interpolation", "", [
        "--storage", str(tmp_path), "--name", "interp", "--in-process",
        "--set", "width=2", "--set", "batch_size=128", "--set", "epochs=2", "--set", "milestones=1",
        "--set", "label_noise=0", "--set", "init_scale=1,2", "--set", "optimizer=sgd",
        "--set", "batchnorm=true,false", "--set", "interpolation.points=5", "--set", "interpolation.group_points=3",
        "--set", "interpolation.eval_samples=128",
    ])
    assert code == 0
    written = write_study_report(str(tmp_path / "interp"), str(tmp_path / "out"))
    assert {"curves_full", "curves_layers", "barrier_vs_test_acc", "settings", "summary"} <= set(written)
    for name in ("curves_full", "curves_layers", "barrier_vs_test_acc"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 1000
    trials = load_sweep(str(tmp_path / "interp")).trials
    r = np.corrcoef(trials["interpolation_train_barrier"], trials["test_acc"])[0, 1]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert f"over 4 models: Pearson r = {r:.3f}" in summary
    settings = pd.read_csv(tmp_path / "out" / "settings.csv")
    assert len(settings) == 4 and settings["setting"].str.contains("batchnorm=False").sum() == 2


def test_study_report_refuses_a_sweep_of_another_study(tmp_path):
    code = sweep_main("taxonomy", "", ["--storage", str(tmp_path), "--name", "tax", "--in-process",
                                       "--set", "width=2", "--set", "batch_size=128", "--set", "seed=0",
                                       "--set", "epochs=1", "--set", "milestones=1"])
    assert code == 0
    with pytest.raises(ConfigError, match="no study report for 'taxonomy'"):
        write_study_report(str(tmp_path / "tax"))
    assert analysis_main(["study-report", str(tmp_path / "tax")]) == 2
