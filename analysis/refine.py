"""Adaptive phase diagrams: which cells of a grid to train, and what the others are.

A phase diagram at full resolution trains every cell, yet most cells lie deep inside one
phase, where their neighbours already tell what they are. A refined sweep trains a
coarse lattice first (every `stride`-th value of each diagram axis, both ends kept),
then the cells whose nearest trained neighbours disagree, round after round, until none
is left or the budget is spent. Everything here is a pure function of the classified
cells, so the rounds are a function of a sweep's records: a killed sweep resumes from
what it has, and a finished full-grid sweep can be replayed (`analysis.replay`).

A grid with axes besides the diagram's two and the seed (`--set label_noise=0,0.2`) is
a diagram per *slice*, one combination of those axes' values (`Grid.others`): each slice
is refined alone, within its own share of the budget, and its cells are never pooled
with another slice's (`plan_slices`, `classify_slices`, `with_inferred_slices`).

Distances are counted in grid steps (index space). A cell's *ring* is the set of trained
cells at the smallest Chebyshev distance that holds any. The ring decides both

- whether to train a cell: its ring disagrees (two phases, a phase and `diverged`, or a
  cell marked `?`), and
- what an untrained cell is (`infer`): its ring's phase by a vote weighted by
  1/(Euclidean distance)^2, so side neighbours outweigh corners. A tie between phases
  goes to the phase of the ring's metrics interpolated at the cell. A tie between
  `diverged` and phases goes by the share of models that trained to the end, the
  quantity the classifier calls a cell diverged on (under one half): interpolated over
  the ring with the same weights, the cell is diverged unless more than half its
  models would finish. A share of exactly one half (a diverged cell where no model
  finished and a cell where all did, equally near) is diverged: a cell no model was
  trained in is not drawn as a phase when half the evidence says it diverges. Either
  way it is marked `?`.

So when refinement ends within its budget, every inferred cell is inferred from a
unanimous, confident ring. When the budget binds, the larger gaps go first (bisect big
gaps before small ones), then the cells most likely to flip: those whose interpolated
value lies nearest a threshold their ring straddles, relative to the ring's range of
that value. The share of models that finished is one of those values, with its
threshold one half: the edge of a diverged region is a boundary like any other. Measured
on the published grid by `bench/refine.py`. Imports neither torch nor ray: the driver,
the replay and the report all use it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import Sweep
from analysis.phases import Thresholds, cell_metrics, classify, mc_scale, resolve_thresholds
from workers.core.errors import ConfigError

Cell = tuple[Any, Any]  # (x value, y value) of a diagram cell
Slice = tuple[Any, ...]  # the values of a grid's other axes (`Grid.others`), in order; () if it has none
Place = tuple[Slice, Cell]  # one cell of one slice

DIVERGED = "diverged"  # the classifier's label of a cell where most models did not finish
# A cell is diverged when fewer than this share of its models train to the end
# (`analysis.phases`: ok * 2 < models).
FINISHED = 0.5

# The metrics a phase is decided on, with their thresholds and the scale they are
# interpolated on (mc: see `mc_scale`). Training loss stands in for the Hessian when a
# ring has none, as in the classifier.
DECIDING: tuple[tuple[str, Callable[[Thresholds], float], Callable], ...] = (
    ("log_top_eigenvalue", lambda t: t.log_top_eigenvalue, lambda v: v),
    ("log_train_loss", lambda t: math.log(t.train_loss), lambda v: v),
    ("mc_mean", lambda t: float(mc_scale(t.mc)), mc_scale),
    ("cka_softmax_mean", lambda t: t.cka, lambda v: v),
)


@dataclass(frozen=True)
class RefineSettings:
    """What `--refine budget=F,stride=N,x=AXIS,y=AXIS` asks for (each key optional)."""

    budget: float = 0.5  # most models to train, as a fraction of the full grid's (1: no cap)
    stride: int = 2  # the coarse round: every stride-th value of each diagram axis, both ends kept
    x: str = ""  # the diagram's axes; "" : as the report picks them (see `diagram_axes`)
    y: str = ""

    @classmethod
    def parse(cls, text: str) -> RefineSettings:
        """`budget=0.5,stride=2` and the like; "" gives the defaults."""
        defaults = asdict(cls())
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep or key not in defaults or not value:
                raise ConfigError("--refine", f"expected comma-separated {', '.join(f'{k}=' for k in defaults)} "
                                  f"(e.g. budget=0.5), got {item!r}")
            values[key] = value
        settings = cls(**{**defaults, **values,
                          "budget": _number("budget", values.get("budget"), float, defaults["budget"],
                                            "a number in (0, 1], the largest share of the grid's models to train"),
                          "stride": _number("stride", values.get("stride"), int, defaults["stride"],
                                            "an integer >= 2")})
        if not 0 < settings.budget <= 1:
            raise ConfigError("--refine budget", f"must be in (0, 1] (a share of the grid's models), got {settings.budget:g}")
        if settings.stride < 2:
            raise ConfigError("--refine stride", f"must be an integer >= 2, got {settings.stride}")
        return settings

    def with_axes(self, axes: list[str]) -> RefineSettings:
        """These settings with x and y resolved among the grid's `axes` (seed excluded)."""
        for name in (self.x, self.y):
            if name and name not in axes:
                raise ConfigError("--refine x/y", f"{name!r} is not an axis of this grid; its axes: {', '.join(axes) or 'none'}")
        x, y = diagram_axes(axes, self.x or None, self.y or None, field="--refine x/y")
        return RefineSettings(self.budget, self.stride, x, y)


def _number(name: str, text: str | None, kind: type, default: Any, allowed: str) -> Any:
    if text is None:
        return default
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"--refine {name}", f"must be {allowed}, got {text!r}") from None


def diagram_axes(axes: list[str], x: str | None, y: str | None, field: str = "--x/--y") -> tuple[str, str]:
    """A diagram's (x, y): as asked, else width x batch_size among `axes`, else the first two."""
    preferred = [a for a in ("width", "batch_size") if a in axes] + [a for a in axes if a not in ("width", "batch_size")]
    x = x or next((a for a in preferred if a != y), None)
    y = y or next((a for a in preferred if a != x), None)
    if x is None or y is None:
        raise ConfigError(field, f"the diagram needs two axes; this sweep varies {axes or 'nothing'}")
    if x == y:
        raise ConfigError(field, f"the two axes must differ (both are {x})")
    return x, y


@dataclass(frozen=True)
class Grid:
    """The full-resolution diagram: its two axes and their values in order, and the
    grid's other axes (seed excluded), each with its values: one diagram per slice."""

    x: str
    y: str
    xs: tuple
    ys: tuple
    others: tuple[tuple[str, tuple], ...] = ()  # ((record column, values), ...)

    @property
    def cells(self) -> list[Cell]:
        """Every cell of one diagram, row by row (y outer)."""
        return [(xv, yv) for yv in self.ys for xv in self.xs]

    @property
    def other_axes(self) -> list[str]:
        return [name for name, _ in self.others]

    @property
    def slices(self) -> list[Slice]:
        """Every combination of the other axes' values ([()] when there are none)."""
        return list(itertools.product(*(values for _, values in self.others)))

    def index(self, cell: Cell) -> tuple[int, int]:
        return self.xs.index(cell[0]), self.ys.index(cell[1])

    def coarse(self, stride: int) -> list[Cell]:
        """The first round: every `stride`-th value of each axis, both ends kept."""
        def every(values: tuple) -> list:
            return [values[i] for i in sorted({*range(0, len(values), stride), len(values) - 1})]

        return [(xv, yv) for yv in every(self.ys) for xv in every(self.xs)]

    def coarse_text(self, stride: int) -> str:
        """`every 2nd value of width and batch_size, both ends kept`."""
        nth = {2: "2nd", 3: "3rd"}.get(stride, f"{stride}th")
        return f"every {nth} value of {self.x} and {self.y}, both ends kept"

    def budget_cells(self, budget: float) -> int:
        """Most cells of one diagram a budget (share of the grid's models; every cell has
        as many) pays for: each slice spends its own share."""
        return math.floor(budget * len(self.xs) * len(self.ys) + 1e-9)


def check_budget(grid: Grid, settings: RefineSettings) -> None:
    """Refuse a budget that does not pay for the coarse round."""
    coarse, total = len(grid.coarse(settings.stride)), len(grid.cells)
    each = " of each slice" if grid.others else ""
    if coarse > grid.budget_cells(settings.budget):
        raise ConfigError("--refine budget", f"{settings.budget:g} pays for {grid.budget_cells(settings.budget)} of "
                          f"the {total} cells{each}, fewer than the first round's {coarse} "
                          f"({grid.coarse_text(settings.stride)}); "
                          f"allowed: {math.ceil(100 * coarse / total) / 100:g} to 1, or a larger stride")


def refined_grid(spec: dict[str, Any], x: str, y: str) -> Grid | None:
    """The full (x, y) grid of a refined sweep, from its spec.json (`refine` and the grid's
    `values`); None if the sweep is not refined or does not list both axes' values."""
    values = {key.replace(".", "_"): v for key, v in spec.get("values", {}).items()}  # as record columns
    if not spec.get("refine") or x not in values or y not in values:
        return None
    return Grid(x, y, tuple(sorted(values[x])), tuple(sorted(values[y])))


def plain(value: Any) -> Any:
    """A value as a grid holds it: pandas and numpy scalars become Python ones, lists
    (and arrays) tuples, so cells and slices compare and hash like the grid's values."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(plain(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


def cell_of(row: Any, grid: Grid) -> Cell:
    """The cell of a row."""
    return plain(row[grid.x]), plain(row[grid.y])


def place_of(row: Any, grid: Grid) -> Place:
    """The slice and cell of a row."""
    return tuple(plain(row[name]) for name in grid.other_axes), cell_of(row, grid)


class KnownCells:
    """Classified cells by grid index, and rings around other cells."""

    def __init__(self, grid: Grid, classified: pd.DataFrame, others: Iterable[Cell] = ()) -> None:
        cells = ((cell_of(row, grid), row) for _, row in classified.iterrows())
        self.rows = {grid.index(cell): row for cell, row in cells if cell[0] in grid.xs and cell[1] in grid.ys}
        self.others = {grid.index(c) for c in others} - set(self.rows)  # being trained: no row yet
        self.positions = np.array(sorted(set(self.rows) | self.others), dtype=np.int64).reshape(-1, 2)

    def ring(self, at: tuple[int, int]) -> tuple[int, list[tuple[int, int]]]:
        """(distance, cells) of the nearest known cells, by Chebyshev distance."""
        distance = np.abs(self.positions - np.asarray(at)).max(axis=1)
        nearest = int(distance.min())
        return nearest, [tuple(map(int, p)) for p in self.positions[distance == nearest]]

    def disagree(self, ring: list[tuple[int, int]]) -> bool:
        rows = [self.rows[p] for p in ring]
        return len({r["phase"] for r in rows}) > 1 or any(bool(r["uncertain"]) for r in rows)


def ring_weights(at: tuple[int, int], ring: list[tuple[int, int]]) -> np.ndarray:
    """1 / (Euclidean distance in grid steps)^2 of each ring cell from `at`."""
    return np.array([1.0 / ((i - at[0]) ** 2 + (j - at[1]) ** 2) for i, j in ring])


def _values(rows: list[pd.Series], column: str, scale: Callable) -> np.ndarray:
    return np.array([scale(float(r.get(column, math.nan))) for r in rows], dtype=np.float64)


def finished_shares(rows: list[pd.Series]) -> np.ndarray:
    """Each cell's share of models that trained to the end (NaN without counts)."""
    def share(row: pd.Series) -> float:
        models = float(row.get("models", math.nan))
        return float(row.get("ok", math.nan)) / models if models > 0 else math.nan

    return np.array([share(r) for r in rows], dtype=np.float64)


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """Weighted mean of the finite values (NaN if none)."""
    finite = np.isfinite(values)
    return float(weights[finite] @ values[finite] / weights[finite].sum()) if finite.any() else math.nan


def interpolate(at: tuple[int, int], rows: list[pd.Series], ring: list[tuple[int, int]]) -> dict[str, float]:
    """The deciding metrics at `at`, weighted 1/distance^2 over the ring's finite values
    (mc averaged on `mc_scale`, returned on its own scale)."""
    weights = ring_weights(at, ring)
    out = {column: weighted_mean(_values(rows, column, scale), weights) for column, _, scale in DECIDING}
    if math.isfinite(out["mc_mean"]):
        out["mc_mean"] = math.copysign(math.expm1(abs(out["mc_mean"])), out["mc_mean"])
    return out


def margin(at: tuple[int, int], rows: list[pd.Series], ring: list[tuple[int, int]], thresholds: Thresholds) -> float:
    """How close to a phase boundary a cell probably is: over the thresholds its ring
    straddles, the smallest |interpolated value - threshold| / (ring's range of the
    value); 1 if the ring straddles none (it disagrees through a `?` or a label). The
    share of models that finished counts with its threshold `FINISHED`, so the edge of
    a diverged region ranks as any other boundary."""
    weights = ring_weights(at, ring)
    has_hessian = any(math.isfinite(float(r.get("log_top_eigenvalue", math.nan))) for r in rows)
    margins = [1.0]

    def straddled(values: np.ndarray, t: float, below: Callable[[np.ndarray], np.ndarray]) -> None:
        finite = values[np.isfinite(values)]
        if len(finite) >= 2 and below(finite).any() and (~below(finite)).any():
            margins.append(abs(weighted_mean(values, weights) - t) / (finite.max() - finite.min()))

    for column, threshold, scale in DECIDING:
        if column == "log_train_loss" and has_hessian:
            continue
        t = threshold(thresholds)
        straddled(_values(rows, column, scale), t, lambda v, t=t: v <= t)  # the classifier: above iff > t
    straddled(finished_shares(rows), FINISHED, lambda v: v < FINISHED)  # diverged iff < FINISHED
    return min(margins)


def plan(grid: Grid, classified: pd.DataFrame, pending: Iterable[Cell], settings: RefineSettings,
         thresholds: Thresholds) -> list[Cell]:
    """Every cell of one diagram a refined sweep trains given its records, in the order
    to run them.

    `classified`: the complete cells (every model and seed pair recorded), classified
    with `thresholds` (`analysis.phases.classify`); `pending`: cells queued, running or
    partly recorded. The plan holds those, the coarse lattice, and the untrained cells
    whose ring disagrees, up to the budget. A cell whose ring holds a pending cell waits
    for it: that cell may settle it. When the budget binds while cells are in flight, a
    plan adds at most as many cells as are in flight: that keeps the workers busy and
    leaves the rest of the budget to plans that know the cells still training.
    """
    base, added = _plan(grid, classified, pending, settings, thresholds)
    return base + [c[-1] for c in added]


def _plan(grid: Grid, classified: pd.DataFrame, pending: Iterable[Cell], settings: RefineSettings,
          thresholds: Thresholds) -> tuple[list[Cell], list[tuple]]:
    """`plan`'s cells: those it keeps, and those it adds as (priority..., cell), in order."""
    pending = list(pending)
    known = KnownCells(grid, classified, [*grid.coarse(settings.stride), *pending])
    base = list(dict.fromkeys([*grid.coarse(settings.stride), *pending,
                               *(cell for cell in grid.cells if grid.index(cell) in known.rows)]))
    room = grid.budget_cells(settings.budget) - len(base)
    if room <= 0 or not known.rows:
        return base, []
    candidates = []
    for cell in grid.cells:
        at = grid.index(cell)
        if at in known.rows or at in known.others:
            continue
        distance, ring = known.ring(at)
        if any(p not in known.rows for p in ring) or not known.disagree(ring):
            continue
        doubt = margin(at, [known.rows[p] for p in ring], ring, thresholds)
        candidates.append((-distance, doubt, at[1], at[0], cell))
    if len(candidates) > room and known.others:
        room = min(room, len(known.others))
    return base, sorted(candidates)[:room]


def plan_slices(grid: Grid, classified: dict[Slice, tuple[pd.DataFrame, Thresholds]], pending: Iterable[Place],
                settings: RefineSettings) -> list[Place]:
    """`plan` for every slice of `grid`, each alone and within its own share of the
    budget: every slice's kept cells (the coarse lattices first), then the cells the
    slices add, the larger gaps and nearer thresholds first whichever slice they are in.

    `classified`: per slice, its complete cells classified and the thresholds used
    (`classify_slices`); `pending`: the places queued, running or partly recorded."""
    pending = list(pending)
    kept: list[Place] = []
    added: list[tuple] = []
    for order, part in enumerate(grid.slices):
        cells, thresholds = classified[part]
        base, more = _plan(grid, cells, [c for s, c in pending if s == part], settings, thresholds)
        kept += [(part, cell) for cell in base]
        added += [(*priority, order, (part, cell)) for *priority, cell in more]
    coarse = {(part, cell) for part in grid.slices for cell in grid.coarse(settings.stride)}
    kept.sort(key=lambda place: place not in coarse)  # stable: the first round first, then the rest
    return kept + [a[-1] for a in sorted(added, key=lambda a: a[:-1])]


def infer(grid: Grid, classified: pd.DataFrame, thresholds: Thresholds) -> pd.DataFrame:
    """One row per cell of `grid` that `classified` lacks: its axes, the phase its ring
    votes for, `uncertain` where the ring disagrees, `inferred` True and a note naming
    the ring. Empty if nothing is classified."""
    if classified.empty:
        return pd.DataFrame()
    known = KnownCells(grid, classified)
    rows = []
    for cell in grid.cells:
        at = grid.index(cell)
        if at in known.rows:
            continue
        distance, ring = known.ring(at)
        neighbours = [known.rows[p] for p in ring]
        votes: dict[str, float] = {}
        for row, weight in zip(neighbours, ring_weights(at, ring)):
            votes[row["phase"]] = votes.get(row["phase"], 0.0) + weight
        best = max(votes.values())
        tied = sorted(p for p, v in votes.items() if math.isclose(v, best))
        phase = tied[0] if len(tied) == 1 else _break_tie(at, neighbours, ring, tied, thresholds)
        counts = ", ".join(f"{p} {sum(r['phase'] == p for r in neighbours)}" for p in sorted(votes))
        rows.append({grid.x: cell[0], grid.y: cell[1], "models": 0, "ok": 0, "diverged": 0, "pairs": 0,
                     "mc_pairs": 0, "phase": phase, "confidence": math.nan, "uncertain": known.disagree(ring),
                     "note": f"inferred from {len(ring)} trained cell(s) {distance} step(s) away: {counts}",
                     "inferred": True})
    return pd.DataFrame(rows)


def _break_tie(at: tuple[int, int], rows: list[pd.Series], ring: list[tuple[int, int]], tied: list[str],
               thresholds: Thresholds) -> str:
    """The label of a cell whose ring's vote ties between the labels `tied` (see the
    module docstring): `diverged` unless the interpolated share of models that
    finished is above `FINISHED`; among phases, the phase of the interpolated metrics."""
    if DIVERGED in tied and not weighted_mean(finished_shares(rows), ring_weights(at, ring)) > FINISHED:
        return DIVERGED
    phases = [p for p in tied if p != DIVERGED]
    if len(phases) == 1:
        return phases[0]
    estimate = pd.DataFrame([{**interpolate(at, rows, ring), "ok": 1, "models": 1}])
    return next((p for p in classify(estimate, thresholds)["phase"] if p in phases), phases[0])


def with_inferred(grid: Grid, classified: pd.DataFrame, thresholds: Thresholds) -> pd.DataFrame:
    """`classified` (column `inferred` False) plus the inferred cells of `grid`, ordered
    by the diagram's axes."""
    trained = classified.assign(inferred=False)
    inferred = infer(grid, classified, thresholds)
    if inferred.empty:
        return trained
    both = pd.concat([trained, inferred.astype({"uncertain": bool, "inferred": bool})], ignore_index=True)
    return both.sort_values([grid.y, grid.x], kind="stable").reset_index(drop=True)


def with_inferred_slices(grid: Grid, classified: dict[Slice, tuple[pd.DataFrame, Thresholds]]) -> pd.DataFrame:
    """`with_inferred` for every slice of `grid` (`classified` as `classify_slices` gives
    it), the inferred cells with their slice's values, ordered by slice then diagram."""
    frames = [with_inferred(grid, *classified[part]).assign(**dict(zip(grid.other_axes, part))) for part in grid.slices]
    frames = [frame for frame in frames if not frame.empty]
    if not frames:
        return pd.DataFrame()
    both = pd.concat(frames, ignore_index=True)
    return both.sort_values([*grid.other_axes, grid.y, grid.x], kind="stable").reset_index(drop=True)


def classify_slices(sweep: Sweep | None, grid: Grid, complete: set[Place], mode: str,
                    overrides: dict[str, str] | None = None) -> dict[Slice, tuple[pd.DataFrame, Thresholds]]:
    """Per slice of `grid`, its `complete` cells aggregated and classified as the report
    does with that slice fixed (`--fix`: same thresholds mode, each slice its own auto
    thresholds, same overrides), and the thresholds; none classified when `sweep` is
    None or has no complete cell yet."""
    cells, places = pd.DataFrame(), []
    if sweep is not None and complete and not sweep.trials.empty:
        cells = cell_metrics(sweep, [grid.x, grid.y, *grid.other_axes])
        places = [place_of(row, grid) for _, row in cells.iterrows()]
    out = {}
    for part in grid.slices:
        mine = cells[[s == part and (s, c) in complete for s, c in places]].reset_index(drop=True) if places else cells
        thresholds = resolve_thresholds(mine, mode, overrides or {})
        out[part] = (classify(mine, thresholds), thresholds)
    return out


def classify_cells(sweep: Sweep | None, grid: Grid, complete: set[Cell], mode: str,
                   overrides: dict[str, str] | None = None) -> tuple[pd.DataFrame, Thresholds]:
    """`classify_slices` for a grid without other axes (one diagram)."""
    assert not grid.others, "a grid with other axes is classified slice by slice (classify_slices)"
    return classify_slices(sweep, grid, {((), cell) for cell in complete}, mode, overrides)[()]
