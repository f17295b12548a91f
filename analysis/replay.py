"""Replay a refined sweep on a finished full-grid sweep, answering cells from its records.

What would `--refine` have trained, and would its diagram match the full one? The replay
runs the refinement policy (`analysis.refine`) round after round, and where a sweep would
train a cell it copies that cell's recorded models and seed pairs from the full sweep
into a new sweep folder. So the whole procedure, records, classification and report
with inferred cells included, runs offline in seconds, e.g. on the published metrics:

    python -m analysis import-yang2021 tests/data/yang2021_results.tar.gz --out ref/yang2021
    python -m analysis refine-replay ref/yang2021 --out ref/refined [--refine budget=0.5]

Rounds here are synchronous (a round is planned when the previous one is complete); a
real sweep plans as soon as its queue runs dry, so it may start a few cells sooner.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import pandas as pd
import pyarrow as pa

from analysis.load import Sweep, load_sweep
from analysis.phases import cell_metrics, classify, resolve_thresholds
from analysis.refine import (
    Cell,
    Grid,
    RefineSettings,
    cell_of,
    check_budget,
    classify_cells,
    plan,
    with_inferred,
)
from workers.errors import ConfigError
from workers.records import PAIRS, TRIALS
from workers.storage import Storage


@dataclass(frozen=True)
class Replay:
    """What a replayed refinement trained."""

    path: str  # the refined sweep folder it wrote
    grid: Grid
    rounds: list[int]  # cells trained per round; round 0 is the coarse lattice
    models: int  # models in the trained cells
    total_models: int  # models in the full grid

    @property
    def cells(self) -> int:
        return sum(self.rounds)


def _by_cell(table: pd.DataFrame, grid: Grid) -> dict[Cell, pd.DataFrame]:
    if table.empty:
        return {}
    return {cell_of(rows.iloc[0], grid): rows for _, rows in table.groupby([grid.x, grid.y], sort=False)}


def _record_name(cell: Cell) -> str:
    return hashlib.sha256(json.dumps(cell, default=str).encode()).hexdigest()[:16]


def replay(source: str, out: str, settings: RefineSettings, thresholds: str = "paper",
           overrides: dict[str, str] | None = None) -> Replay:
    """Refine `source`'s grid into the new sweep folder `out`, each trained cell answered
    with `source`'s records of that cell (its models with their metrics, its pairs)."""
    full = load_sweep(source)
    if full.trials.empty:
        raise ConfigError("SOURCE", f"{source}: no trials records found")
    settings = settings.with_axes(full.axes())
    grid = Grid(settings.x, settings.y, tuple(sorted(full.trials[settings.x].unique().tolist())),
                tuple(sorted(full.trials[settings.y].unique().tolist())))
    check_budget(grid, settings)
    trials, pairs = _by_cell(full.trials, grid), _by_cell(full.pairs, grid)
    storage = Storage.open(out)
    if any(storage.list_names(table, ".parquet") for table in (TRIALS, PAIRS)):
        raise ConfigError("--out", f"{storage.uri} holds records already; give a new folder")
    spec = {**{k: v for k, v in full.spec.items() if k != "spec_id"},  # its lens holds the full grid's records
            "name": f"{full.spec.get('name', 'sweep')}-refined",
            "refine": {**asdict(settings), "thresholds": thresholds}, "replayed_from": full.path}
    storage.write_bytes("spec.json", json.dumps(spec, indent=2, default=str).encode())
    answered: set[Cell] = set()
    rounds: list[int] = []
    while True:
        sweep = load_sweep(storage.uri) if answered else None
        classified, used = classify_cells(sweep, grid, answered, thresholds, overrides)
        wanted = [c for c in plan(grid, classified, answered, settings, used) if c not in answered]
        if not wanted:
            break
        for cell in wanted:
            for table, rows in (("trials", trials), ("pairs", pairs)):
                if cell in rows:
                    storage.write_table(table, _record_name(cell), pa.Table.from_pandas(rows[cell], preserve_index=False))
        answered.update(wanted)
        rounds.append(len(wanted))
    models = sum(len(trials[c]) for c in answered if c in trials)
    return Replay(storage.uri, grid, rounds, models, len(full.trials))


def refined_phases(result: Replay, thresholds: str = "paper", overrides: dict[str, str] | None = None) -> pd.DataFrame:
    """The replayed diagram as its report draws it (without drawing): the trained cells
    classified, the others inferred from them."""
    sweep = load_sweep(result.path)
    trained = {cell_of(row, result.grid) for _, row in sweep.trials[[result.grid.x, result.grid.y]].iterrows()}
    classified, used = classify_cells(sweep, result.grid, trained, thresholds, overrides)
    return with_inferred(result.grid, classified, used)


def full_grid_phases(sweep: Sweep, grid: Grid, thresholds: str = "paper",
                     overrides: dict[str, str] | None = None) -> pd.DataFrame:
    """Every cell of a full sweep classified as its report would (the reference)."""
    cells = cell_metrics(sweep, [grid.x, grid.y])
    return classify(cells, resolve_thresholds(cells, thresholds, overrides or {}))


def agreement(reference: pd.DataFrame, refined: pd.DataFrame, grid: Grid) -> tuple[float, list[Cell]]:
    """Share of the reference's cells to which the refined diagram (trained and inferred
    cells) gives the same phase, and the cells where it does not (`?` marks ignored)."""
    phases = {cell_of(row, grid): row["phase"] for _, row in refined.iterrows()}
    differ = [cell_of(row, grid) for _, row in reference.iterrows() if phases.get(cell_of(row, grid)) != row["phase"]]
    return 1.0 - len(differ) / len(reference), differ
