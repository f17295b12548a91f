"""`python -m analysis status PATH [--watch]`: what a sweep has done, what failed, what
is missing, and while it runs, its progress and the jobs in progress.

Expected counts come from the grid in `spec.json` (the product of every key's values),
so a sweep interrupted anywhere shows exactly how much is left. `--watch` prints it
again every few seconds until the grid is complete.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import pandas as pd

from analysis.load import Sweep, load_sweep
from analysis.progress import format_running, sweep_progress
from workers.core.records import MEASURES, PAIRS, TRIALS


@dataclass(frozen=True)
class TableStatus:
    table: str
    expected: int | None  # None: unknown (no spec.json, e.g. imported data)
    done: int  # records of status ok
    diverged: int  # records of status diverged (a metric or pair of a diverged model: not measured)
    failed: int  # jobs that failed with no record yet (a rerun tries them again), plus `recorded_failed`
    recorded_failed: int = 0  # records of status failed (a metric that raised: not tried again)

    @property
    def missing(self) -> int | None:
        return None if self.expected is None else max(0, self.expected - self.done - self.diverged
                                                      - self.recorded_failed)


def expected_counts(spec: dict) -> dict[str, int | None]:
    """Models, metric records and seed pairs the grid of `spec.json` calls for."""
    values = spec.get("values")
    if not values:
        return {TRIALS: None, MEASURES: None, PAIRS: None}
    models = math.prod(len(v) for v in values.values())
    metrics = len(values.get("metrics", [[]])[0])
    seeds = len(values.get("seed", [0]))
    pairs = models // seeds * math.comb(seeds, 2) if values.get("measure_pairs", [False])[0] else 0
    return {TRIALS: models, MEASURES: models * metrics, PAIRS: pairs}


def failed_jobs(sweep: Sweep) -> pd.DataFrame:
    """The latest failure of every job that has no record yet (later success clears it)."""
    failures = sweep.failures
    if failures.empty:
        return failures
    recorded = set(sweep.trials.get("trial_key", [])) | set(sweep.pairs.get("pair_key", []))
    latest = failures.sort_values("failed_at").groupby("key").tail(1)
    return latest[~latest["key"].isin(recorded)]


def table_status(sweep: Sweep) -> list[TableStatus]:
    lens = sweep.lens
    expected = expected_counts(sweep.spec) if lens is None else {t: len(keys) for t, keys in lens.done.items()}
    if sweep.spec.get("refine"):  # the refinement picks the cells it trains: the rest is inferred, not missing
        expected = dict.fromkeys(expected)
    failed = failed_jobs(sweep)
    n_failed = failed["kind"].value_counts().to_dict() if not failed.empty else {}
    counts = {table: _statuses(frame) for table, frame in ((TRIALS, sweep.trials), (MEASURES, sweep.measures),
                                                            (PAIRS, sweep.pairs))}
    jobs = {TRIALS: n_failed.get("train", 0), MEASURES: 0, PAIRS: n_failed.get("pair", 0)}
    return [TableStatus(table, expected[table], ok, diverged, jobs[table] + failed, failed)
            for table, (ok, diverged, failed) in counts.items()]


def _statuses(frame: pd.DataFrame) -> tuple[int, int, int]:
    """Records of status ok, diverged and failed (a record without a status is ok)."""
    statuses = frame["status"].fillna("ok") if "status" in frame else pd.Series("ok", index=frame.index)
    return tuple(int((statuses == status).sum()) for status in ("ok", "diverged", "failed"))


def format_status(sweep: Sweep) -> str:
    lines = [f"{sweep.path}", f"{'table':<10}{'expected':>10}{'done':>8}{'diverged':>10}{'failed':>8}{'missing':>9}"]
    for s in table_status(sweep):
        exp = "?" if s.expected is None else str(s.expected)
        miss = "?" if s.missing is None else str(s.missing)
        lines.append(f"{s.table:<10}{exp:>10}{s.done:>8}{s.diverged:>10}{s.failed:>8}{miss:>9}")
    failed = failed_jobs(sweep)
    live = sweep_progress(sweep, len(failed), known=not sweep.spec.get("refine"))
    if live.run_started is not None or live.running:
        lines.append(f"progress: {live.progress.line()}")
        lines += ["running:", *format_running(live.running)] if live.running else []
    if not failed.empty:
        lines.append("failed:")
        lines += [f"  {row.kind} {row.key}: {row.error}" for row in failed.itertuples()]
    if sweep.skipped:
        lines.append("unreadable files (skipped): " + ", ".join(sweep.skipped))
    if sweep.spec.get("refine"):
        lines.append("refined sweep (--refine): cells it does not train are inferred by the report, not missing; "
                     "rerun the command to let the refinement decide what is left")
    if sweep.others:
        lines.append(sweep.others)
    if sweep.stale:  # why measures or pairs done before are missing now
        lines.append(sweep.stale)
    if sweep.ignored:
        lines.append("consolidated tables ignored (records read instead; `python -m analysis compact` "
                     "rebuilds them): " + "; ".join(sweep.ignored))
    return "\n".join(lines)


def complete(sweep: Sweep) -> bool:
    """No job of the sweep runs, and every table holds what the grid expects (for a
    refined sweep, whose driver decides what is left: its driver's run is over)."""
    live = sweep_progress(sweep, 0)
    if live.running:
        return False
    if sweep.spec.get("refine"):
        return live.run_started is None
    return all(s.missing == 0 for s in table_status(sweep) if s.expected is not None)


def watch(path: str, every: float, out: TextIO | None = None, all_specs: bool = False) -> None:
    """Print the status every `every` seconds until the sweep is complete: redrawn on a
    terminal, one block after another elsewhere. Ctrl-C ends it sooner. `all_specs`: as
    `load_sweep`'s."""
    out = sys.stdout if out is None else out
    clear = "\x1b[H\x1b[2J" if out.isatty() else ""
    while True:
        sweep = load_sweep(path, all_specs)
        done = complete(sweep)
        note = "complete" if done else f"refreshed every {every:g}s, Ctrl-C to stop"
        out.write(f"{clear}{format_status(sweep)}\n[{time.strftime('%H:%M:%S')}] {note}\n\n")
        out.flush()
        if done:
            return
        time.sleep(every)
