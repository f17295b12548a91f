"""Replay a refined sweep on a finished full-grid sweep, answering cells from its records.

What would `--refine` have trained, and would its diagram match the full one? The replay
runs the refinement policy (`analysis.refine`) round after round, and where a sweep would
train a cell it copies that cell's recorded models and seed pairs from the full sweep
into a new sweep folder. So the whole procedure, records, classification and report
with inferred cells included, runs offline in seconds, e.g. on the published metrics:

    python -m analysis import-yang2021 tests/data/yang2021_results.tar.gz --out ref/yang2021
    python -m analysis refine-replay ref/yang2021 --out ref/refined [--refine budget=0.5]

Rounds here are synchronous (a round is planned when the previous one is complete); a
real sweep plans as soon as its queue runs dry, so it may start a few cells sooner. A
grid with axes besides the diagram's two and the seed is refined slice by slice, as a
sweep refines it (`analysis.refine`), and compared with the full grid slice by slice.
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
    Grid,
    Place,
    RefineSettings,
    check_budget,
    classify_slices,
    place_of,
    plain,
    plan_slices,
    with_inferred_slices,
)
from workers.core.errors import ConfigError
from workers.core.records import PAIRS, TRIALS
from workers.core.storage import Storage


@dataclass(frozen=True)
class Replay:
    """What a replayed refinement trained."""

    path: str  # the refined sweep folder it wrote
    grid: Grid  # with the other axes, if any: each of their slices refined alone
    rounds: list[int]  # cells trained per round, over all slices; round 0 is the coarse lattice
    models: int  # models in the trained cells
    total_models: int  # models in the full grid

    @property
    def cells(self) -> int:
        return sum(self.rounds)


def _by_place(table: pd.DataFrame, grid: Grid) -> dict[Place, pd.DataFrame]:
    if table.empty:
        return {}
    groups = table.groupby([grid.x, grid.y, *grid.other_axes], sort=False)
    return {place_of(rows.iloc[0], grid): rows for _, rows in groups}


def _record_name(place: Place) -> str:
    part, cell = place
    return hashlib.sha256(json.dumps([*part, *cell] if part else cell, default=str).encode()).hexdigest()[:16]


def replay(source: str, out: str, settings: RefineSettings, thresholds: str = "paper",
           overrides: dict[str, str] | None = None) -> Replay:
    """Refine `source`'s grid into the new sweep folder `out`, each trained cell answered
    with `source`'s records of that cell (its models with their metrics, its pairs)."""
    full = load_sweep(source)
    if full.trials.empty:
        raise ConfigError("SOURCE", f"{source}: no trials records found")
    axes = full.axes()
    settings = settings.with_axes(axes)

    def values(column: str) -> tuple:
        return tuple(sorted(plain(v) for v in full.trials[column].unique()))

    grid = Grid(settings.x, settings.y, values(settings.x), values(settings.y),
                tuple((a, values(a)) for a in axes if a not in (settings.x, settings.y)))
    check_budget(grid, settings)
    trials, pairs = _by_place(full.trials, grid), _by_place(full.pairs, grid)
    storage = Storage.open(out)
    if any(storage.list_names(table, ".parquet") for table in (TRIALS, PAIRS)):
        raise ConfigError("--out", f"{storage.uri} holds records already; give a new folder")
    spec = {**{k: v for k, v in full.spec.items() if k != "spec_id"},  # its lens holds the full grid's records
            "name": f"{full.spec.get('name', 'sweep')}-refined",
            "refine": {**asdict(settings), "thresholds": thresholds,
                       **({"per": ",".join(grid.other_axes)} if grid.others else {})},  # as `sweeps.run.growth` says
            "replayed_from": full.path}
    storage.write_bytes("spec.json", json.dumps(spec, indent=2, default=str).encode())
    answered: set[Place] = set()
    rounds: list[int] = []
    while True:
        sweep = load_sweep(storage.uri) if answered else None
        classified = classify_slices(sweep, grid, answered, thresholds, overrides)
        wanted = [p for p in plan_slices(grid, classified, answered, settings) if p not in answered]
        if not wanted:
            break
        for place in wanted:
            for table, rows in ((TRIALS, trials), (PAIRS, pairs)):
                if place in rows:
                    storage.write_table(table, _record_name(place),
                                        pa.Table.from_pandas(rows[place], preserve_index=False))
        answered.update(wanted)
        rounds.append(len(wanted))
    models = sum(len(trials[c]) for c in answered if c in trials)
    return Replay(storage.uri, grid, rounds, models, len(full.trials))


def refined_phases(result: Replay, thresholds: str = "paper", overrides: dict[str, str] | None = None) -> pd.DataFrame:
    """The replayed diagram as its report draws it (without drawing): the trained cells
    classified, the others inferred from them; a diagram per slice, one after another."""
    sweep = load_sweep(result.path)
    columns = [result.grid.x, result.grid.y, *result.grid.other_axes]
    trained = {place_of(row, result.grid) for _, row in sweep.trials[columns].iterrows()}
    return with_inferred_slices(result.grid, classify_slices(sweep, result.grid, trained, thresholds, overrides))


def full_grid_phases(sweep: Sweep, grid: Grid, thresholds: str = "paper",
                     overrides: dict[str, str] | None = None) -> pd.DataFrame:
    """Every cell of a full sweep classified as its report would (the reference): with
    each slice of the other axes fixed, and its own thresholds where they are auto."""
    frames = []
    cells = cell_metrics(sweep, [grid.x, grid.y, *grid.other_axes])
    slices = [place_of(row, grid)[0] for _, row in cells.iterrows()]
    for part in grid.slices:
        mine = cells[[s == part for s in slices]].reset_index(drop=True)
        frames.append(classify(mine, resolve_thresholds(mine, thresholds, overrides or {})))
    return pd.concat(frames, ignore_index=True)


def agreement(reference: pd.DataFrame, refined: pd.DataFrame, grid: Grid) -> tuple[float, list[tuple]]:
    """Share of the reference's cells to which the refined diagram (trained and inferred
    cells) gives the same phase, and the cells where it does not, each as (the other
    axes' values..., x, y) (`?` marks ignored)."""
    missing = [a for a in grid.other_axes if a not in refined.columns]
    if missing:
        raise ConfigError("SOURCE", f"also varies {', '.join(missing)}: a refined grid is a diagram per slice, "
                          "and this one pools them; compare analysis.replay.refined_phases with the full grid")

    def key(row: pd.Series) -> tuple:
        part, cell = place_of(row, grid)
        return (*part, *cell)

    phases = {key(row): row["phase"] for _, row in refined.iterrows()}
    differ = [key(row) for _, row in reference.iterrows() if phases.get(key(row)) != row["phase"]]
    return 1.0 - len(differ) / len(reference), differ
