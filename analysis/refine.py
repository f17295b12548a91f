"""Adaptive phase diagrams: which cells of a grid to train, and what the others are.

A phase diagram at full resolution trains every cell, yet most cells lie deep inside one
phase, where their neighbours already tell what they are. A refined sweep trains a
coarse lattice first (every `stride`-th value of each diagram axis, both ends kept),
then the cells whose nearest trained neighbours disagree, round after round, until none
is left or the budget is spent. Everything here is a pure function of the classified
cells, so the rounds are a function of a sweep's records: a killed sweep resumes from
what it has, and a finished full-grid sweep can be replayed (`analysis.replay`).

Distances are counted in grid steps (index space). A cell's *ring* is the set of trained
cells at the smallest Chebyshev distance that holds any. The ring decides both

- whether to train a cell: its ring disagrees (two phases, or a cell marked `?`), and
- what an untrained cell is (`infer`): its ring's phase by a vote weighted by
  1/(Euclidean distance)^2, so side neighbours outweigh corners; a tie goes to the phase
  of the ring's metrics interpolated at the cell.

So when refinement ends within its budget, every inferred cell is inferred from a
unanimous, confident ring. When the budget binds, the larger gaps go first (bisect big
gaps before small ones), then the cells whose interpolated metrics lie nearest a
threshold their ring straddles (the cells most likely to flip). Measured on the
published grid by `bench/refine.py`. Imports neither torch nor ray: the driver, the
replay and the report all use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import Sweep
from analysis.phases import Thresholds, cell_metrics, classify, mc_scale, resolve_thresholds
from workers.errors import ConfigError

Cell = tuple[Any, Any]  # (x value, y value) of a diagram cell

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
    """The full-resolution diagram: its two axes and their values in order."""

    x: str
    y: str
    xs: tuple
    ys: tuple

    @property
    def cells(self) -> list[Cell]:
        """Every cell, row by row (y outer)."""
        return [(xv, yv) for yv in self.ys for xv in self.xs]

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
        """Most cells a budget (share of the grid's models; every cell has as many) pays for."""
        return math.floor(budget * len(self.xs) * len(self.ys) + 1e-9)


def check_budget(grid: Grid, settings: RefineSettings) -> None:
    """Refuse a budget that does not pay for the coarse round."""
    coarse, total = len(grid.coarse(settings.stride)), len(grid.cells)
    if coarse > grid.budget_cells(settings.budget):
        raise ConfigError("--refine budget", f"{settings.budget:g} pays for {grid.budget_cells(settings.budget)} of "
                          f"the {total} cells, fewer than the first round's {coarse} ({grid.coarse_text(settings.stride)}); "
                          f"allowed: {math.ceil(100 * coarse / total) / 100:g} to 1, or a larger stride")


def refined_grid(spec: dict[str, Any], x: str, y: str) -> Grid | None:
    """The full (x, y) grid of a refined sweep, from its spec.json (`refine` and the grid's
    `values`); None if the sweep is not refined or does not list both axes' values."""
    values = {key.replace(".", "_"): v for key, v in spec.get("values", {}).items()}  # as record columns
    if not spec.get("refine") or x not in values or y not in values:
        return None
    return Grid(x, y, tuple(sorted(values[x])), tuple(sorted(values[y])))


def cell_of(row: Any, grid: Grid) -> Cell:
    """The cell of a row (pandas scalars become plain Python values, so cells compare and
    hash like the grid's values)."""
    def plain(value: Any) -> Any:
        return value.item() if isinstance(value, np.generic) else value

    return plain(row[grid.x]), plain(row[grid.y])


class _Known:
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


def _weights(at: tuple[int, int], ring: list[tuple[int, int]]) -> np.ndarray:
    """1 / (Euclidean distance in grid steps)^2 of each ring cell from `at`."""
    return np.array([1.0 / ((i - at[0]) ** 2 + (j - at[1]) ** 2) for i, j in ring])


def _values(rows: list[pd.Series], column: str, scale: Callable) -> np.ndarray:
    return np.array([scale(float(r.get(column, math.nan))) for r in rows], dtype=np.float64)


def _weighted(values: np.ndarray, weights: np.ndarray) -> float:
    """Weighted mean of the finite values (NaN if none)."""
    finite = np.isfinite(values)
    return float(weights[finite] @ values[finite] / weights[finite].sum()) if finite.any() else math.nan


def interpolate(at: tuple[int, int], rows: list[pd.Series], ring: list[tuple[int, int]]) -> dict[str, float]:
    """The deciding metrics at `at`, weighted 1/distance^2 over the ring's finite values
    (mc averaged on `mc_scale`, returned on its own scale)."""
    weights = _weights(at, ring)
    out = {column: _weighted(_values(rows, column, scale), weights) for column, _, scale in DECIDING}
    if math.isfinite(out["mc_mean"]):
        out["mc_mean"] = math.copysign(math.expm1(abs(out["mc_mean"])), out["mc_mean"])
    return out


def margin(at: tuple[int, int], rows: list[pd.Series], ring: list[tuple[int, int]], thresholds: Thresholds) -> float:
    """How close to a phase boundary a cell probably is: over the thresholds its ring
    straddles, the smallest |interpolated value - threshold| / (ring's range of the
    metric); 1 if the ring straddles none (it disagrees through a `?` or a label)."""
    weights = _weights(at, ring)
    has_hessian = any(math.isfinite(float(r.get("log_top_eigenvalue", math.nan))) for r in rows)
    margins = [1.0]
    for column, threshold, scale in DECIDING:
        if column == "log_train_loss" and has_hessian:
            continue
        values = _values(rows, column, scale)
        finite, t = values[np.isfinite(values)], threshold(thresholds)
        if len(finite) >= 2 and finite.min() <= t < finite.max():
            margins.append(abs(_weighted(values, weights) - t) / (finite.max() - finite.min()))
    return min(margins)


def plan(grid: Grid, classified: pd.DataFrame, pending: Iterable[Cell], settings: RefineSettings,
         thresholds: Thresholds) -> list[Cell]:
    """Every cell a refined sweep trains given its records, in the order to run them.

    `classified`: the complete cells (every model and seed pair recorded), classified
    with `thresholds` (`analysis.phases.classify`); `pending`: cells queued, running or
    partly recorded. The plan holds those, the coarse lattice, and the untrained cells
    whose ring disagrees, up to the budget. A cell whose ring holds a pending cell waits
    for it: that cell may settle it. When the budget binds while cells are in flight, a
    plan adds at most as many cells as are in flight: that keeps the workers busy and
    leaves the rest of the budget to plans that know the cells still training.
    """
    known = _Known(grid, classified, [*grid.coarse(settings.stride), *pending])
    base = list(dict.fromkeys([*grid.coarse(settings.stride), *pending,
                               *(cell for cell in grid.cells if grid.index(cell) in known.rows)]))
    room = grid.budget_cells(settings.budget) - len(base)
    if room <= 0 or not known.rows:
        return base
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
    return base + [c[-1] for c in sorted(candidates)[:room]]


def infer(grid: Grid, classified: pd.DataFrame, thresholds: Thresholds) -> pd.DataFrame:
    """One row per cell of `grid` that `classified` lacks: its axes, the phase its ring
    votes for, `uncertain` where the ring disagrees, `inferred` True and a note naming
    the ring. Empty if nothing is classified."""
    if classified.empty:
        return pd.DataFrame()
    known = _Known(grid, classified)
    rows = []
    for cell in grid.cells:
        at = grid.index(cell)
        if at in known.rows:
            continue
        distance, ring = known.ring(at)
        neighbours = [known.rows[p] for p in ring]
        votes: dict[str, float] = {}
        for row, weight in zip(neighbours, _weights(at, ring)):
            votes[row["phase"]] = votes.get(row["phase"], 0.0) + weight
        best = max(votes.values())
        tied = sorted(p for p, v in votes.items() if math.isclose(v, best))
        phase = tied[0]
        if len(tied) > 1:
            estimate = pd.DataFrame([{**interpolate(at, neighbours, ring), "ok": 1, "models": 1}])
            phase = next((p for p in classify(estimate, thresholds)["phase"] if p in tied), phase)
        counts = ", ".join(f"{p} {sum(r['phase'] == p for r in neighbours)}" for p in sorted(votes))
        rows.append({grid.x: cell[0], grid.y: cell[1], "models": 0, "ok": 0, "diverged": 0, "pairs": 0,
                     "mc_pairs": 0, "phase": phase, "confidence": math.nan, "uncertain": known.disagree(ring),
                     "note": f"inferred from {len(ring)} trained cell(s) {distance} step(s) away: {counts}",
                     "inferred": True})
    return pd.DataFrame(rows)


def with_inferred(grid: Grid, classified: pd.DataFrame, thresholds: Thresholds) -> pd.DataFrame:
    """`classified` (column `inferred` False) plus the inferred cells of `grid`, ordered
    by the diagram's axes."""
    trained = classified.assign(inferred=False)
    inferred = infer(grid, classified, thresholds)
    if inferred.empty:
        return trained
    both = pd.concat([trained, inferred.astype({"uncertain": bool, "inferred": bool})], ignore_index=True)
    return both.sort_values([grid.y, grid.x], kind="stable").reset_index(drop=True)


def classify_cells(sweep: Sweep | None, grid: Grid, complete: set[Cell], mode: str,
                   overrides: dict[str, str] | None = None) -> tuple[pd.DataFrame, Thresholds]:
    """The `complete` cells of `grid` aggregated and classified as the report does (same
    thresholds mode and overrides), and the thresholds; none classified when `sweep` is
    None or has no complete cell yet."""
    cells = pd.DataFrame()
    if sweep is not None and complete and not sweep.trials.empty:
        cells = cell_metrics(sweep, [grid.x, grid.y])
        cells = cells[[cell_of(row, grid) in complete for _, row in cells.iterrows()]].reset_index(drop=True)
    thresholds = resolve_thresholds(cells, mode, overrides or {})
    return classify(cells, thresholds), thresholds
