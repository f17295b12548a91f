"""End to end through real Ray: the CLI runs a grid, pandas reads it, a rerun does nothing."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis import load_sweep
from analysis.__main__ import main as analysis_main
from sweeps.run.cli import main
from workers.catalog import TrialConfig
from workers.jobs.runtime import RunContext
from workers.jobs.trial import run_trial

GRID = ["--set", "width=2,4", "--set", "seed=0,1", "--set", "epochs=2", "--set", "milestones=1",
        "--set", "batch_size=128", "--set", "metrics=", "--set", "measure_pairs=false"]


@pytest.fixture
def sweep_dir(tmp_path):
    return tmp_path / "store"


def test_four_trial_sweep_then_rerun_runs_nothing(ray_session, sweep_dir, capsys):
    assert main("taxonomy", "", ["--storage", str(sweep_dir), "--name", "four", *GRID]) == 0
    out = capsys.readouterr().out
    assert "4 to run" in out and out.count("[") >= 4  # one progress line per trial
    trials = pd.read_parquet(sweep_dir / "four" / "trials")
    assert len(trials) == 4 and set(trials["status"]) == {"ok"}
    import duckdb  # the README's query, across one file per trial

    per_width = duckdb.sql(f"SELECT width, count(*) AS n FROM '{sweep_dir}/four/trials/*.parquet' "
                           "WHERE status = 'ok' GROUP BY width ORDER BY width").fetchall()
    assert per_width == [(2, 2), (4, 2)]
    assert sorted(zip(trials["width"], trials["seed"])) == [(2, 0), (2, 1), (4, 0), (4, 1)]
    files = sorted(p.name for p in (sweep_dir / "four").rglob("*.parquet"))
    mtimes = {p: p.stat().st_mtime_ns for p in (sweep_dir / "four").rglob("*.parquet")}

    assert main("taxonomy", "", ["--storage", str(sweep_dir), "--name", "four", *GRID]) == 0
    out = capsys.readouterr().out
    assert "4 already done, 0 to run" in out
    assert sorted(p.name for p in (sweep_dir / "four").rglob("*.parquet")) == files
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    # Extending the grid adds only the new points.
    assert main("taxonomy", "", ["--storage", str(sweep_dir), "--name", "four",
                                 "--set", "width=2,4,8", *GRID[2:]]) == 0
    assert "4 already done, 2 to run" in capsys.readouterr().out
    assert len(load_sweep(str(sweep_dir / "four")).trials) == 6
    records = {p: m for p, m in mtimes.items() if p.parent.name != "tables"}  # consolidated files are replaced
    assert {p: p.stat().st_mtime_ns for p in records} == records
    consolidated = f"{sweep_dir}/four/tables/trials.parquet"  # rebuilt at the end of the run
    assert len(pd.read_parquet(consolidated)) == 6
    assert duckdb.sql(f"SELECT count(DISTINCT trial_key) FROM '{consolidated}'").fetchall() == [(6,)]

    assert analysis_main(["summary", str(sweep_dir / "four")]) == 0
    table = capsys.readouterr().out
    assert "width" in table and "±" in table and len(table.strip().splitlines()) == 2 + 3


def test_a_reused_worker_leaks_no_state_between_trials(ray_session, sweep_dir, tiny):
    """Two trials in one worker process give the results each gives alone."""
    from sweeps.run.driver import RunOptions, run
    from sweeps.run.spec import SweepSpec

    values = {**tiny, "width": [4, 2], "metrics": [], "measure_pairs": False}
    spec = SweepSpec("taxonomy", "demo", "reuse", str(sweep_dir), values)
    configs = spec.trials()
    summary = run(spec, configs, RunOptions(max_concurrent=1), log=lambda line: None)
    assert summary.ran == 2 and summary.failed == 0
    rows = load_sweep(str(sweep_dir / "reuse")).trials.set_index("width")
    assert rows.loc[2, "pid"] == rows.loc[4, "pid"], "the actor was not reused"
    for cfg in configs:
        alone = run_trial(cfg, RunContext(storage=str(sweep_dir / f"alone{cfg.model.width}"), sweep="x", threads=1))
        assert rows.loc[cfg.model.width, "train_loss"] == alone["train_loss"]
        assert TrialConfig.from_flat(cfg.to_flat()).trial_key == rows.loc[cfg.model.width, "trial_key"]
