"""Adaptive phase diagrams (`--refine`): the policy, the replay on the published grid,
the searcher and driver growing a sweep through real Ray, and a killed refined sweep
resumed by rerunning its command."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis import load_sweep
from analysis.__main__ import main as analysis_main
from analysis.phases import PAPER
from analysis.refine import Grid, RefineSettings, check_budget, classify_cells, infer, plan
from analysis.replay import agreement, full_grid_phases, refined_phases, replay
from analysis.report import ReportOptions, write_report
from analysis.status import format_status
from analysis.yang2021 import import_archive
from sweeps.run.cli import main
from sweeps.run.driver import RunOptions, run
from sweeps.run.growth import Refiner
from sweeps.run.pairs import plan_pairs
from sweeps.run.searcher import Job, SweepSearcher
from sweeps.run.spec import SweepSpec
from workers.core.errors import ConfigError
from workers.core.records import PAIRS, TRIALS, config_columns, to_table
from workers.core.storage import Storage

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = ROOT / "tests" / "data" / "yang2021_results.tar.gz"

# A refined grid cheap enough for a test: 2 x 4 cells of 2 seeds, 1 epoch, training
# loss for sharpness (no Hessian), a 1-epoch Bezier curve per cell.
SMALL_GRID = ["--set", "width=2,4", "--set", "batch_size=64,128,256,512", "--set", "seed=0,1",
              "--set", "epochs=1", "--set", "milestones=1", "--set", "metrics=", "--set", "lr=0.05",
              "--set", "pairs.bezier_epochs=1"]

# Phases of a synthetic 5 x 5 grid: x index <= 1 is Phase I, the rest IV-B, with metrics
# on the matching sides of the paper thresholds.
SIDES = {"I": {"log_top_eigenvalue": 4.0, "mc_mean": -5.0, "cka_softmax_mean": 0.5},
         "IV-B": {"log_top_eigenvalue": 3.0, "mc_mean": -0.1, "cka_softmax_mean": 0.8}}
GRID = Grid("width", "batch_size", (1, 2, 4, 8, 16), (16, 32, 64, 128, 256))


def classified(cells, phase_of=lambda i, j: "I" if i <= 1 else "IV-B", uncertain=()) -> pd.DataFrame:
    """Rows as `analysis.phases.classify` gives them for the given cells (grid indices)."""
    rows = [{"width": GRID.xs[i], "batch_size": GRID.ys[j], "phase": phase_of(i, j), "uncertain": (i, j) in uncertain,
             "ok": 2, "models": 2, **SIDES[phase_of(i, j)]} for i, j in cells]
    return pd.DataFrame(rows)


def indices(cells) -> set[tuple[int, int]]:
    return {GRID.index(c) for c in cells}


def diverge(rows: pd.DataFrame, cells: set[tuple[int, int]], finished: float = 0.0) -> pd.DataFrame:
    """`rows` (from `classified`) with `cells` (grid indices) diverged: `finished` of
    their 4 models trained to the end (under half: classify's "diverged"), their metrics
    those of the models that did (NaN when none did)."""
    out = rows.copy()
    hit = [GRID.index((w, b)) in cells for w, b in zip(out["width"], out["batch_size"])]
    out.loc[hit, ["phase", "ok", "models"]] = ["diverged", round(4 * finished), 4]
    if finished == 0:
        out.loc[hit, list(SIDES["I"])] = float("nan")
    return out


# ---------------------------------------------------------------- the policy


def test_settings_parse_and_refuse_bad_values():
    assert RefineSettings.parse("") == RefineSettings(budget=0.5, stride=2)
    assert RefineSettings.parse("budget=0.7, stride=3,x=lr") == RefineSettings(0.7, 3, "lr", "")
    for text, field in (("budget=0", "--refine budget"), ("budget=1.5", "--refine budget"), ("budget=half", "--refine budget"),
                        ("stride=1", "--refine stride"), ("stride=2.5", "--refine stride"), ("rounds=3", "--refine"),
                        ("budget", "--refine"), ("budget=", "--refine")):
        with pytest.raises(ConfigError) as exc:
            RefineSettings.parse(text)
        assert exc.value.field == field, text
    assert RefineSettings.parse("").with_axes(["batch_size", "lr", "width"]) == RefineSettings(0.5, 2, "width", "batch_size")
    with pytest.raises(ConfigError, match="not an axis"):
        RefineSettings.parse("x=depth").with_axes(["width", "batch_size"])
    with pytest.raises(ConfigError, match="needs two axes"):
        RefineSettings.parse("").with_axes(["width"])


def test_coarse_round_takes_every_other_value_and_both_ends():
    paper = Grid("width", "batch_size", tuple(range(14)), tuple(range(15)))
    assert sorted({x for x, _ in paper.coarse(2)}) == [0, 2, 4, 6, 8, 10, 12, 13]
    assert sorted({y for _, y in paper.coarse(2)}) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert sorted({x for x, _ in paper.coarse(4)}) == [0, 4, 8, 12, 13]
    check_budget(paper, RefineSettings(budget=0.31))  # 64 of 210 cells fit
    with pytest.raises(ConfigError, match="fewer than the first round's 64"):
        check_budget(paper, RefineSettings(budget=0.3))


def test_plan_trains_the_cells_between_disagreeing_neighbours_only():
    coarse = indices(GRID.coarse(2))
    assert coarse == {(i, j) for i in (0, 2, 4) for j in (0, 2, 4)}
    assert indices(plan(GRID, classified([]), [], RefineSettings(budget=1), PAPER)) == coarse
    # Phase I at x index 0, IV-B at 2 and 4: the column between them is the boundary.
    wanted = indices(plan(GRID, classified(coarse), [], RefineSettings(budget=1), PAPER))
    assert wanted == coarse | {(1, j) for j in range(5)}
    # Column 1 turns out Phase I: cells (2, 1) and (2, 3) now have Phase I at their side
    # and IV-B above and below (a tied vote), so they are boundary cells too; then
    # nothing is left (column 3 lies deep inside IV-B, column 0 inside I).
    wanted = indices(plan(GRID, classified(wanted), [], RefineSettings(budget=1), PAPER))
    assert wanted == coarse | {(1, j) for j in range(5)} | {(2, 1), (2, 3)}
    assert indices(plan(GRID, classified(wanted), [], RefineSettings(budget=1), PAPER)) == wanted
    # A budget of 11 cells: the coarse 9 and two boundary cells.
    capped = plan(GRID, classified(coarse), [], RefineSettings(budget=11 / 25), PAPER)
    assert len(capped) == 11 and indices(capped[9:]) <= {(1, j) for j in range(5)}
    # A cell whose nearest cells include one still training waits for it.
    in_flight = [(GRID.xs[2], GRID.ys[0])]
    waiting = plan(GRID, classified(coarse - {(2, 0)}), in_flight, RefineSettings(budget=1), PAPER)
    assert (1, 0) not in indices(waiting) and (1, 1) not in indices(waiting) and (1, 2) in indices(waiting)
    # When the budget binds, a plan spends no more than the cells in flight: the rest
    # waits for what they tell.
    assert len(plan(GRID, classified(coarse - {(2, 0)}), in_flight, RefineSettings(budget=11 / 25), PAPER)) == 10
    # An uncertain cell makes its untrained neighbours boundary cells even in one phase.
    one_phase = classified(coarse, phase_of=lambda i, j: "IV-B", uncertain={(4, 4)})
    assert indices(plan(GRID, one_phase, [], RefineSettings(budget=1), PAPER)) - coarse == {(3, 3), (3, 4), (4, 3)}


def test_untrained_cells_take_the_phase_of_their_nearest_trained_cells():
    coarse = indices(GRID.coarse(2))
    cells = infer(GRID, classified(coarse), PAPER).set_index(["width", "batch_size"])
    assert len(cells) == 25 - 9 and cells["inferred"].all() and (cells["models"] == 0).all()
    assert cells.loc[(8, 64), "phase"] == "IV-B" and not cells.loc[(8, 64), "uncertain"]  # deep inside IV-B
    column1 = cells.loc[[(2, y) for y in GRID.ys]]
    assert column1["uncertain"].all()  # between I and IV-B
    # Side neighbours tie (I left, IV-B right): the interpolated metrics decide: ln lambda
    # 3.5 > 3.45 (sharp) and mc -1.57 < -1 (poorly connected, on mc_scale): Phase I.
    assert cells.loc[(2, 16), "phase"] == "I"
    assert "2 trained cell(s) 1 step(s) away: I 1, IV-B 1" in cells.loc[(2, 16), "note"]


def test_the_edge_of_a_diverged_region_is_a_boundary_like_any_other():
    coarse = indices(GRID.coarse(2))
    rows = diverge(classified(coarse), {(4, j) for j in range(5)})  # Phase I | IV-B | diverged
    # Both columns between the coarse ones are boundaries. Column 3 lies exactly on the
    # threshold of the share of models that finished (all of IV-B's, none of the
    # diverged ones': 1/2 interpolated), nearer than column 1 lies to its thresholds
    # (ln lambda 3.5 against 3.45), so it goes first when the budget binds.
    assert indices(plan(GRID, rows, [], RefineSettings(budget=1), PAPER)) - coarse == {
        (i, j) for i in (1, 3) for j in range(5)}
    first = plan(GRID, rows, [], RefineSettings(budget=14 / 25), PAPER)[9:]
    assert indices(first) == {(3, j) for j in range(5)}


def test_a_tie_between_diverged_and_a_phase_goes_by_the_models_that_finished():
    coarse = indices(GRID.coarse(2))
    # (8, 16): IV-B at its left, diverged at its right, one step each: a tie. No model
    # of the diverged cell finished, every model of the IV-B one did: the interpolated
    # share is 1/2, not a majority that trains, so the cell is inferred diverged.
    cells = infer(GRID, diverge(classified(coarse), {(4, j) for j in range(5)}), PAPER).set_index(["width", "batch_size"])
    assert cells.loc[(8, 16), "phase"] == "diverged" and cells.loc[(8, 16), "uncertain"]
    assert cells.loc[(8, 32), "phase"] == "diverged"  # four corners: IV-B 2, diverged 2
    # One of the diverged cell's four models finished (still under half: diverged):
    # the share interpolates to (1 + 1/4) / 2 = 0.625, a majority that trains, so the
    # cell takes the phase.
    partly = diverge(classified(coarse), {(4, j) for j in range(5)}, finished=0.25)
    cells = infer(GRID, partly, PAPER).set_index(["width", "batch_size"])
    assert cells.loc[(8, 16), "phase"] == "IV-B" and cells.loc[(8, 16), "uncertain"]


# ---------------------------------------------------------------- replay on the published grid


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("yang2021")
    import_archive(str(ARCHIVE), str(out))
    return out


def test_replay_on_the_published_grid_agrees_using_half_the_models(published, tmp_path):
    result = replay(str(published), str(tmp_path / "refined"), RefineSettings())
    assert result.total_models == 1050 and result.rounds[0] == 64  # 8 widths x 8 batch sizes first
    assert result.models <= 525 and len(result.rounds) >= 2
    report = write_report(result.path, str(tmp_path / "report"), ReportOptions())
    cells = pd.read_csv(tmp_path / "report" / "cells.csv")
    assert len(cells) == 210 and cells["inferred"].sum() == 210 - result.cells
    assert set(cells.loc[cells["inferred"], "models"]) == {0}
    share, differ = agreement(full_grid_phases(load_sweep(str(published)), result.grid), report.cells, result.grid)
    assert share >= 0.95 and len(differ) <= 10
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert f"{result.cells} cells trained, {210 - result.cells} inferred" in summary
    # The rounds are a function of the records: planning on the finished records wants
    # no more cells, and a replay of the same grid trains the same cells.
    sweep = load_sweep(result.path)
    status = format_status(sweep)
    assert "inferred by the report, not missing" in status
    assert next(line for line in status.splitlines() if line.startswith("trials")).split()[1] == "?"
    done = {(w, b) for w, b in zip(sweep.trials["width"], sweep.trials["batch_size"])}
    classified_cells, thresholds = classify_cells(sweep, result.grid, done, "paper")
    assert set(plan(result.grid, classified_cells, [], RefineSettings(), thresholds)) == done
    again = replay(str(published), str(tmp_path / "again"), RefineSettings())
    assert again.rounds == result.rounds


def test_refine_replay_cli_and_its_bad_input(published, tmp_path, capsys):
    out = tmp_path / "r"
    assert analysis_main(["refine-replay", str(published), "--out", str(out), "--refine", "stride=4,budget=0.6"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"agreement with the full grid \(paper thresholds\): \d+\.\d% of cells", printed)
    assert "rounds: 25 + " in printed and (out / "report" / "phase_diagram.png").stat().st_size > 1000
    for bad in ("budget=0.1", "stride=0", "rounds=2"):
        assert analysis_main(["refine-replay", str(published), "--out", str(tmp_path / "bad"), "--refine", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --refine") and err.count("\n") == 1
        assert not (tmp_path / "bad").exists()
    assert analysis_main(["refine-replay", str(published), "--out", str(out)]) == 2  # holds records already
    assert "holds records already" in capsys.readouterr().err


# ---------------------------------------------------------------- a third axis: one diagram per slice

SLICED_GRID = Grid("width", "batch_size", (2, 4, 6, 8, 10), (16, 32, 64, 128, 256))


@pytest.fixture
def sliced(tiny) -> dict:
    """Width x batch size x label noise, 2 seeds, records written by hand (nothing trains):
    with label_noise 0, Phase I at the two smallest widths and IV-B from width 6 on; with
    label_noise 0.2, IV-B everywhere (see `_phase`)."""
    return {**tiny, "metrics": [], "measure_pairs": True, "width": list(SLICED_GRID.xs),
            "batch_size": list(SLICED_GRID.ys), "label_noise": [0, 0.2], "seed": [0, 1]}


def _phase(cfg) -> str:
    return "I" if cfg.data.label_noise == 0 and cfg.model.width <= 4 else "IV-B"


def write_records(folder: Path, configs) -> None:
    """Trials and pairs records of `configs` as a sweep writes them (named by their
    keys), with the metrics of `_phase`: training loss for sharpness, mc, CKA."""
    storage = Storage.open(str(folder))
    metrics = {"I": {"train_loss": 0.5, "train_acc": 0.8, "mc": -5.0, "cka_softmax": 0.5},
               "IV-B": {"train_loss": 0.001, "train_acc": 1.0, "mc": -0.1, "cka_softmax": 0.8}}
    for cfg in configs:
        m = metrics[_phase(cfg)]
        row = {**config_columns(cfg, "sliced"), "status": "ok", "error": "", "train_loss": m["train_loss"],
               "train_acc": m["train_acc"]}
        storage.write_table(TRIALS, cfg.trial_key, to_table([row]))
    for pair in plan_pairs(configs):
        if pair.a in configs and pair.b in configs:
            m = metrics[_phase(pair.a)]
            row = {**config_columns(pair.a, "sliced"), "pair_key": pair.key, "seed_a": pair.a.train.seed,
                   "seed_b": pair.b.train.seed, "trial_key_a": pair.a.trial_key, "trial_key_b": pair.b.trial_key,
                   "with_mc": True, "status": "ok", "error": "", "mc": m["mc"], "cka_softmax": m["cka_softmax"]}
            storage.write_table(PAIRS, pair.key, to_table([row]))


def test_refine_plans_each_slice_of_a_third_axis_alone(sliced, tmp_path):
    """`--set ...,label_noise=0,0.2 --refine`: each label noise is a diagram of its own;
    its cells are never pooled with the other's as if they were seeds."""
    spec = SweepSpec("taxonomy", "demo", "sliced", str(tmp_path), sliced)
    configs = spec.trials()
    refiner = Refiner(spec, configs, RefineSettings(budget=1), "paper")
    assert "x batch_size per label_noise (0.0, 0.2), 2 diagrams of 25 cells of 2 models" in refiner.describe()
    assert refiner.spec_entry()["per"] == "label_noise"
    coarse = [c for c in configs if (c.model.width, c.train.batch_size) in set(SLICED_GRID.coarse(2))]
    assert len(coarse) == 9 * 2 * 2
    assert {c.trial_key for c in refiner.grow([])} == {c.trial_key for c in coarse}  # nothing recorded yet
    write_records(tmp_path / "sliced", coarse)
    wanted = refiner.grow([])
    added = {(c.data.label_noise, c.model.width, c.train.batch_size) for c in wanted if c not in coarse}
    # label_noise 0: the column between Phase I (width 2) and IV-B (width 6); 0.2: none.
    assert added == {(0, 4, b) for b in SLICED_GRID.ys}
    assert len(wanted) == len(coarse) + 2 * 5
    assert re.match(r"refined: 18 of 50 cells trained \(36 of 100 models, 36%\)", refiner.outcome())


def test_replay_refines_each_slice_of_a_third_axis_alone(sliced, tmp_path, capsys):
    spec = SweepSpec("taxonomy", "demo", "full", str(tmp_path), sliced)
    write_records(tmp_path / "full", spec.trials())
    Storage.open(str(tmp_path / "full")).write_bytes("spec.json", json.dumps(spec.to_json()).encode())
    result = replay(str(tmp_path / "full"), str(tmp_path / "refined"), RefineSettings(budget=1))
    assert result.grid.others == (("label_noise", (0.0, 0.2)),)
    trained = load_sweep(result.path).trials.groupby("label_noise")["trial_key"].count().to_dict()
    assert trained[0.2] == 9 * 2  # one phase: the coarse round, nothing more
    assert trained[0.0] > (9 + 5) * 2  # the boundary column, then the cells beside it
    refined = refined_phases(result)
    assert len(refined) == 2 * 25 and refined.groupby("label_noise").size().eq(25).all()
    assert (refined.loc[refined["label_noise"] == 0.2, "phase"] == "IV-B").all()
    share, differ = agreement(full_grid_phases(load_sweep(str(tmp_path / "full")), result.grid), refined, result.grid)
    assert share == 1.0 and differ == []
    # a report never pools the slices: it asks for one, and draws each alone
    with pytest.raises(ConfigError, match=r"--fix: this sweep was refined per label_noise.*values: 0.0, 0.2"):
        write_report(result.path, str(tmp_path / "report"))
    sliced_report = write_report(result.path, str(tmp_path / "report"), ReportOptions(fixed={"label_noise": "0.2"}))
    assert (sliced_report.cells["phase"] == "IV-B").all() and len(sliced_report.cells) == 25
    assert analysis_main(["refine-replay", str(tmp_path / "full"), "--out", str(tmp_path / "cli"), "--refine", "budget=1"]) == 0
    out = capsys.readouterr().out
    assert "label_noise=0.0:" in out and "label_noise=0.2:" in out and "100.0% of cells" in out


# ---------------------------------------------------------------- the searcher and the driver


def test_searcher_asks_for_more_jobs_only_when_its_queue_runs_dry():
    asked = []
    more = [[Job("c", {"n": "c"}), Job("pair-cd", {"n": "pair-cd"}, needs=("c", "d"))], []]

    def extend():
        asked.append(len(asked))
        return more[len(asked) - 1], {"d"}  # d was trained before this run

    searcher = SweepSearcher([Job("a", {"n": "a"}), Job("b", {"n": "b"})], set(), extend)
    assert searcher.suggest("1") == {"n": "a"} and searcher.suggest("2") == {"n": "b"}
    assert searcher.suggest("3") is None and asked == []  # dry, but nothing finished since
    searcher.on_trial_complete("1")
    assert searcher.suggest("3") == {"n": "c"} and asked == [0]  # asked while b still trains
    searcher.on_trial_complete("3")
    assert searcher.suggest("4") == {"n": "pair-cd"}  # c done, d trained before: ready
    searcher.on_trial_complete("2")
    searcher.on_trial_complete("4")
    assert searcher.suggest("5") == SweepSearcher.FINISHED and asked == [0, 1]


@pytest.mark.parametrize("in_process", [False, True])
def test_driver_grows_a_sweep_through_ray(in_process, ray_session, tiny, tmp_path):
    """The driver runs what `grow` adds while the sweep runs: in one Tune experiment, or
    (`--in-process`) batch after batch."""
    spec = SweepSpec("taxonomy", "demo", "grow", str(tmp_path), {**tiny, "metrics": [], "measure_pairs": False,
                                                                  "width": [2, 4], "seed": [0, 1]})
    configs = spec.trials()
    batches = [configs[:2], configs[2:3], configs[3:], []]
    calls = []

    def grow(planned):
        calls.append([c.trial_key for c in planned])
        return batches[len(calls) - 1]

    summary = run(spec, configs, RunOptions(in_process=in_process), log=lambda line: None, grow=grow)
    assert summary.ran == 4 and summary.failed == 0 and summary.total == 4
    assert calls[0] == [] and len(calls) == 4 and calls[-1] == [c.trial_key for c in configs]
    assert sorted(load_sweep(str(tmp_path / "grow")).trials["trial_key"]) == sorted(c.trial_key for c in configs)
    experiments = list((tmp_path / "grow" / "_tune").iterdir()) if not in_process else []
    assert len(experiments) == (0 if in_process else 1)


def test_bad_refine_on_the_sweep_command_exits_2_and_writes_nothing(tmp_path, capsys):
    for bad, field in (("budget=2", "--refine budget"), ("stride=x", "--refine stride"), ("budget=0.25", "--refine budget"),
                       ("x=lr", "--refine x/y"), ("depth=3", "--refine")):
        assert main("taxonomy", "", ["--storage", str(tmp_path / "s"), *SMALL_GRID, "--refine", bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith(f"error: {field}:") and err.count("\n") == 1, err
    one_seed = [*SMALL_GRID[:4], *SMALL_GRID[6:], "--set", "seed=0"]  # SMALL_GRID[4:6] sets the seeds
    assert main("taxonomy", "", ["--storage", str(tmp_path / "s"), *one_seed, "--refine", "budget=1"]) == 2
    assert "two seeds" in capsys.readouterr().err
    assert main("taxonomy", "", ["--storage", str(tmp_path / "s"), *SMALL_GRID, "--set", "measure_pairs=false",
                                 "--refine", "budget=1"]) == 2
    assert "measure_pairs" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main("taxonomy", "", ["--storage", str(tmp_path / "s"), *SMALL_GRID, "--refine", "budget=0.75", "--dry-run"]) == 0
    assert "first the 6 cells of every 2nd value" in capsys.readouterr().out and not (tmp_path / "s").exists()


# ---------------------------------------------------------------- a refined sweep, killed and resumed


def _sweep_command(storage: Path) -> list[str]:
    return [sys.executable, str(ROOT / "sweeps" / "taxonomy.py"), "--address", "local", "--storage", str(storage),
            "--name", "r", *SMALL_GRID, "--refine", "budget=1", "--max-concurrent", "1"]


def test_a_killed_refined_sweep_resumes_from_its_records(tmp_path, capsys):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(_sweep_command(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    trials = tmp_path / "r" / "trials"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(trials.glob("*.parquet"))) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-round
    proc.wait()
    killed_with = {p.name for p in trials.glob("*.parquet")}
    assert 3 <= len(killed_with) < 12, "the driver was not killed mid-sweep"

    out = subprocess.run(_sweep_command(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    done_before = int(re.search(r"(\d+) already done", out.stdout).group(1))
    assert done_before >= 2  # the models of the killed run count; a half-recorded cell is finished
    sweep = load_sweep(str(tmp_path / "r"))
    assert sweep.trials["trial_key"].is_unique and killed_with <= {p.name for p in trials.glob("*.parquet")}
    cells = {(w, b) for w, b in zip(sweep.trials["width"], sweep.trials["batch_size"])}
    assert set(Grid("width", "batch_size", (2, 4), (64, 128, 256, 512)).coarse(2)) <= cells
    assert sweep.trials.groupby(["width", "batch_size"]).size().eq(2).all()  # both seeds of every cell
    assert len(sweep.pairs) == len(cells)  # and its seed pair
    match = re.search(r"refined: (\d+) of 8 cells trained \((\d+) of 16 models", out.stdout)
    assert match and int(match[1]) == len(cells) and int(match[2]) == 2 * len(cells)

    # The rounds are a function of the records: the same command again trains nothing.
    capsys.readouterr()
    assert main("taxonomy", "", ["--storage", str(tmp_path), "--name", "r", *SMALL_GRID, "--refine", "budget=1",
                                 "--in-process"]) == 0
    assert f"{2 * len(cells)} models, {2 * len(cells)} already done, 0 to run" in capsys.readouterr().out
    report = pd.read_csv(tmp_path / "r" / "report" / "cells.csv")
    assert len(report) == 8 and report["inferred"].sum() == 8 - len(cells)
