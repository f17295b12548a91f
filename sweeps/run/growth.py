"""A refined sweep (`--refine`): which of the grid's models to run, read off its records.

The policy (`analysis.refine.plan_slices`) is a pure function of the classified cells;
this module feeds it a sweep's records: which cells are complete (every model, metric
and seed pair recorded, by the driver's own checks), which are under way, and how the
complete ones classify with the thresholds the report uses. A grid with axes besides
the diagram's two and the seed is one diagram per combination of their values (a
slice, e.g. each label noise), each refined alone. The driver asks `grow` at
the start, so a killed sweep rerun with the same command continues from the cells it
has, and again whenever Tune's queue runs dry while models still train, so the next
round's cells start beside this round's last ones (`sweeps.run.searcher`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from analysis.load import load_sweep
from analysis.refine import Grid, Place, RefineSettings, check_budget, classify_slices, plain, plan_slices
from sweeps.run.plan import Holdings, pending_pairs, pending_trials
from sweeps.run.spec import SweepSpec
from workers.core.errors import ConfigError
from workers.core.storage import Storage

if TYPE_CHECKING:
    from workers.core.config import TrialConfig


def column(key: str) -> str:
    """The records' column of a spec key (`hessian.n_samples` -> `hessian_n_samples`)."""
    return key.replace(".", "_")


class Refiner:
    """The cells of one refined sweep, and the models the records call for next."""

    def __init__(self, spec: SweepSpec, configs: list[TrialConfig], settings: RefineSettings,
                 thresholds: str) -> None:
        axes = spec.axes()
        self.settings = settings.with_axes([a for a in axes if a != "seed"])
        x, y = self.settings.x, self.settings.y
        self.keys = [a for a in axes if a not in (x, y, "seed")] + [x, y]  # spec keys: the slice's, then the cell's
        self.grid = Grid(column(x), column(y), tuple(sorted(axes[x])), tuple(sorted(axes[y])),
                         tuple((column(a), tuple(plain(v) for v in axes[a])) for a in self.keys[:-2]))
        check_budget(self.grid, self.settings)
        self.cells: dict[Place, list[TrialConfig]] = defaultdict(list)
        for cfg in configs:
            self.cells[self._place(cfg)].append(cfg)
        if not all(cfg.measure.measure_pairs for cfg in configs):
            raise ConfigError("--refine", "classifies cells by mode connectivity: needs measure_pairs=true")
        if len(axes.get("seed", ())) < 2:
            raise ConfigError("--refine", "classifies cells by their seed pairs: needs two seeds or more, e.g. --set seed=0,1")
        self.thresholds = thresholds
        self.storage = (spec.storage, spec.name)

    def spec_entry(self) -> dict[str, Any]:
        """What spec.json records, so reports fill in the untrained cells (`analysis.report`);
        `per`: the axes each of whose values is a diagram of its own, if any."""
        per = {"per": ",".join(self.grid.other_axes)} if self.grid.others else {}
        return {**asdict(self.settings), "x": self.grid.x, "y": self.grid.y, "thresholds": self.thresholds, **per}

    def describe(self) -> str:
        per_cell = len(next(iter(self.cells.values())))
        grid, stride, cells = self.grid, self.settings.stride, len(self.grid.cells)
        slices = len(grid.slices)
        per = " and ".join(f"{name} ({', '.join(map(str, values))})" for name, values in grid.others)
        per = f" per {per}" if per else ""
        diagrams, each = (f"{slices} diagrams of ", " in each") if slices > 1 else ("", "")
        return (f"refine: {grid.x} x {grid.y}{per}, {diagrams}{cells} cells of {per_cell} models; first the "
                f"{len(grid.coarse(stride))} cells of {grid.coarse_text(stride)}{each}, "
                f"then cells whose trained neighbours disagree ({self.thresholds} thresholds), "
                f"at most {grid.budget_cells(self.settings.budget)} cells{each} (budget {self.settings.budget:g})")

    def _open(self) -> Storage:
        location, name = self.storage
        return Storage.open(location).child(name)

    def _place(self, cfg: TrialConfig) -> Place:
        values = [plain(v) for v in map(cfg.to_flat().__getitem__, self.keys)]
        return tuple(values[:-2]), (values[-2], values[-1])

    def progress(self) -> tuple[set[Place], set[Place]]:
        """(complete, started) cells, from the records' listings: complete when every
        model, metric and seed pair of the cell is recorded; started when any model is."""
        storage = self._open()
        held = Holdings.listed(lambda table: storage.list_names(table, ".parquet"))
        configs = [cfg for members in self.cells.values() for cfg in members]
        unfinished = ({self._place(c) for c in pending_trials(configs, held)}
                      | {self._place(p.a) for p in pending_pairs(configs, held)})
        started = {self._place(c) for c in configs if c.trial_key in held.trained}
        return set(self.cells) - unfinished, started - (set(self.cells) - unfinished)

    def grow(self, planned: list[TrialConfig]) -> list[TrialConfig]:
        """The models of the cells the records now call for that `planned` lacks (at the
        start, `planned` is empty: every cell the records call for)."""
        complete, started = self.progress()
        under_way = (started | {self._place(c) for c in planned}) - complete
        sweep = load_sweep(self._open().uri) if complete else None
        classified = classify_slices(sweep, self.grid, complete, self.thresholds)
        have = {c.trial_key for c in planned}
        wanted = plan_slices(self.grid, classified, under_way, self.settings)
        return [cfg for place in wanted for cfg in self.cells[place] if cfg.trial_key not in have]

    def outcome(self) -> str:
        """`refined: 38 of 99 cells trained (76 of 198 models, 38%), 61 inferred`."""
        complete, started = self.progress()
        models = sum(len(self.cells[c]) for c in complete)
        total = sum(len(m) for m in self.cells.values())
        unfinished = f", {len(started)} unfinished" if started else ""
        return (f"refined: {len(complete)} of {len(self.cells)} cells trained ({models} of {total} models, "
                f"{models / total:.0%}){unfinished}; the other {len(self.cells) - len(complete) - len(started)} "
                "inferred from their nearest trained cells")
