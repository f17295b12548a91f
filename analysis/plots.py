"""Phase diagram and metric heatmaps over two sweep axes, written as PNG files.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never through
pyplot, so no global backend state is touched and no display is needed. Numeric axes
spanning a factor of 4 or more are logarithmic (cells bounded at geometric midpoints);
the vertical axis grows downwards, so small batch sizes sit at the top as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullLocator

# Pastel fills, so the black labels stay readable; "?" marks an uncertain cell.
PHASE_COLORS = {
    "I": "#f4a6a6", "II": "#f9d28b", "III": "#c9b3e6", "IV-A": "#9ecae1", "IV-B": "#a1d99b",
    "IV": "#c6dbef", "diverged": "#555555", "unclassified": "#e6e6e6",
}


@dataclass(frozen=True)
class Axis:
    """One axis of the grid: its values in order, the cell edges and the scale."""

    name: str
    values: list
    edges: np.ndarray
    log: bool
    numeric: bool

    def position(self, value) -> float:
        return float(value) if self.numeric else float(self.values.index(value))


def make_axis(name: str, column: pd.Series) -> Axis:
    values = sorted(column.dropna().unique().tolist())
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if not numeric:
        return Axis(name, values, np.arange(len(values) + 1) - 0.5, False, False)
    v = np.asarray(values, dtype=np.float64)
    log = bool(v.min() > 0 and v.max() / v.min() >= 4)
    if len(v) == 1:
        edges = np.array([v[0] / 2, v[0] * 2]) if log else np.array([v[0] - 0.5, v[0] + 0.5])
    elif log:
        mid = np.sqrt(v[1:] * v[:-1])
        edges = np.concatenate([[v[0] ** 2 / mid[0]], mid, [v[-1] ** 2 / mid[-1]]])
    else:
        mid = (v[1:] + v[:-1]) / 2
        edges = np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])
    return Axis(name, values, edges, log, True)


def _grid(cells: pd.DataFrame, x: Axis, y: Axis, column: str) -> np.ndarray:
    """(len(y), len(x)) array of `column`; NaN where a cell is missing."""
    table = cells.pivot_table(index=y.name, columns=x.name, values=column, aggfunc="first", dropna=False)
    return table.reindex(index=y.values, columns=x.values).to_numpy(dtype=np.float64)


def _figure(x: Axis, y: Axis, title: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(max(5.0, 1.6 + 0.62 * len(x.values)), max(3.5, 1.3 + 0.36 * len(y.values))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    return fig, ax


def _finish_axes(ax, x: Axis, y: Axis) -> None:
    """Scales, one tick per grid value, small y values at the top."""
    for axis, letter in ((x, "x"), (y, "y")):
        if axis.log:
            getattr(ax, f"set_{letter}scale")("log")
        ticks = getattr(ax, f"{letter}axis")
        ticks.set_ticks([axis.position(v) for v in axis.values],
                        labels=[f"{v:g}" if isinstance(v, float) else str(v) for v in axis.values], fontsize=7)
        ticks.set_minor_locator(NullLocator())
    ax.set_xlim(x.edges[0], x.edges[-1])
    ax.set_ylim(y.edges[-1], y.edges[0])  # inverted: small values at the top
    ax.set_xlabel(x.name)
    ax.set_ylabel(y.name)


def _centres(x: Axis, y: Axis):
    for i, yv in enumerate(y.values):
        for j, xv in enumerate(x.values):
            yield i, j, x.position(xv), y.position(yv)


def phase_diagram(cells: pd.DataFrame, x_name: str, y_name: str, path: str, title: str) -> None:
    """Cells coloured and labelled by phase (`phase`, `uncertain` columns); cells with
    `inferred` True (a refined sweep's untrained cells) lighter and hatched."""
    x, y = make_axis(x_name, cells[x_name]), make_axis(y_name, cells[y_name])
    labels = list(PHASE_COLORS)
    codes = cells.assign(_code=cells["phase"].map({p: i for i, p in enumerate(labels)}))
    grid = _grid(codes, x, y, "_code")
    fig, ax = _figure(x, y, title)
    cmap = ListedColormap(list(PHASE_COLORS.values()))
    ax.pcolormesh(x.edges, y.edges, np.ma.masked_invalid(grid), cmap=cmap,
                  vmin=-0.5, vmax=len(labels) - 0.5, edgecolors="white", linewidth=0.5)
    uncertain = _grid(cells.assign(_u=cells["uncertain"].astype(float)), x, y, "_u")
    inferred = _grid(cells.assign(_i=cells.get("inferred", False)).astype({"_i": float}), x, y, "_i")
    for i, j, cx, cy in _centres(x, y):
        if np.isnan(grid[i, j]):
            continue
        label = labels[int(grid[i, j])]
        text = "div." if label == "diverged" else "?" if label == "unclassified" else label
        text += "?" if uncertain[i, j] == 1 else ""
        if inferred[i, j] == 1:  # a refined sweep's untrained cell: lighter, hatched, grey label
            ax.add_patch(Rectangle((x.edges[j], y.edges[i]), x.edges[j + 1] - x.edges[j], y.edges[i + 1] - y.edges[i],
                                   facecolor=(1, 1, 1, 0.5), edgecolor=(0.45, 0.45, 0.45, 0.6), hatch="////",
                                   linewidth=0))
        ax.text(cx, cy, text, ha="center", va="center", fontsize=7, in_layout=False,
                color="white" if label == "diverged" else "dimgray" if inferred[i, j] == 1 else "black",
                style="italic" if inferred[i, j] == 1 else "normal")
    if np.nansum(inferred) > 0:
        ax.set_title(f"{title}\nhatched: {int(np.nansum(inferred))} cells not trained, inferred from their "
                     f"nearest trained cells", fontsize=9)
    _finish_axes(ax, x, y)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def heatmap(cells: pd.DataFrame, x_name: str, y_name: str, column: str, path: str, title: str) -> None:
    """One metric over the grid, with its value written in each cell."""
    x, y = make_axis(x_name, cells[x_name]), make_axis(y_name, cells[y_name])
    grid = _grid(cells, x, y, column)
    fig, ax = _figure(x, y, title)
    mesh = ax.pcolormesh(x.edges, y.edges, np.ma.masked_invalid(grid), cmap="viridis",
                         edgecolors="white", linewidth=0.3)
    fig.colorbar(mesh, ax=ax, shrink=0.85)
    for i, j, cx, cy in _centres(x, y):
        if np.isfinite(grid[i, j]):  # dark text on the light (upper) half of viridis
            ax.text(cx, cy, f"{grid[i, j]:.2g}", ha="center", va="center", fontsize=5.5, in_layout=False,
                    color="black" if mesh.norm(grid[i, j]) > 0.55 else "white")
    _finish_axes(ax, x, y)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
