"""Assemble `index.html`: the template with its style, Plotly's bundled JavaScript (the
copy inside the `plotly` package, so the page needs no network), the page's data as
JSON, one JSON block of curves per grid cell (`analysis.page.payload`) and `app.js`."""

from __future__ import annotations

import html
import json
import shlex
from importlib import resources
from string import Template
from typing import Any

from plotly.offline import get_plotlyjs

from analysis.diagram import HEATMAPS, ReportOptions
from analysis.load import Sweep
from analysis.page.payload import HISTORY_POINTS, curve_blocks, models_json, pairs_json, shown_pairs
from analysis.page.views import label, selectors, views
from analysis.phases import PHASES, THRESHOLD_NAMES, select
from analysis.plots import PHASE_COLORS
from analysis.refine import FINISHED, refined_grid


def _static(name: str) -> str:
    return resources.files("analysis.page").joinpath(name).read_text(encoding="utf-8")


def _json(value: Any) -> str:
    """JSON safe inside a <script> element: every "<" escaped, so no text in the
    records ("</script>", "<!--") can end or change the element."""
    return _escaped(json.dumps(value, separators=(",", ":"), allow_nan=False))


def _escaped(text: str) -> str:
    return text.replace("<", "\\u003c")


def _axis_values(trials, axis: str, grid_values: tuple | None) -> list:
    """An axis's values in order: the refined grid's (untrained cells included), else the models'."""
    return list(grid_values) if grid_values else sorted(trials[axis].dropna().unique().tolist())


def page_data(sweep: Sweep, x: str, y: str, options: ReportOptions, title: str) -> tuple[dict[str, Any], list[str]]:
    """The page's data and its curve blocks (JSON texts)."""
    trials, pairs = select(sweep, options.fixed)
    pairs = shown_pairs(pairs)
    grid = refined_grid(sweep.spec, x, y)
    xs = _axis_values(trials, x, grid.xs if grid else None)
    ys = _axis_values(trials, y, grid.ys if grid else None)
    axes = selectors(sweep, trials, x, y, options.fixed)
    history = sweep.history
    history = history[history["trial_key"].isin(set(trials["trial_key"]))] if not history.empty else history
    texts, blob_of = curve_blocks(history, sweep.curves, trials, pairs)
    fixed = "".join(f" --fix {k}={v}" for k, v in options.fixed.items())
    data = {
        "title": title, "x": x, "y": y, "xs": [label(v) for v in xs], "ys": [label(v) for v in ys],
        "meta": f"{sweep.path}: {len(trials)} models, {len(pairs)} seed pairs; thresholds {options.thresholds}"
                + (f"; fixed: {', '.join(f'{k}={v}' for k, v in options.fixed.items())}" if options.fixed else ""),
        "command": f"python -m analysis report {shlex.quote(sweep.path)} --out OUT --x {x} --y {y}{fixed}",
        "selectors": [{"axis": s.axis, "labels": s.labels()} for s in axes],
        "views": views(sweep, x, y, options.fixed, options.thresholds, options.overrides, xs, ys, axes),
        "threshold_names": list(THRESHOLD_NAMES), "phases": list(PHASES),
        "colors": PHASE_COLORS, "finished": FINISHED, "history_points": HISTORY_POINTS,
        "heatmaps": [list(h) for h in HEATMAPS],
        "models": models_json(trials, x, y, xs, ys, axes, blob_of),
        "pairs": pairs_json(pairs, x, y, xs, ys, axes, blob_of),
    }
    return data, texts


def write_page(sweep: Sweep, path: str, x: str, y: str, options: ReportOptions, title: str) -> str:
    """Write the page to `path`; returns `path`."""
    data, texts = page_data(sweep, x, y, options, title)
    plotly_js, app_js = get_plotlyjs(), _static("app.js")
    assert "</script" not in plotly_js.lower() and "</script" not in app_js.lower(), "a script would end early"
    blocks = "\n".join(f'<script type="application/json" id="curves-{i}">{_escaped(text)}</script>'
                        for i, text in enumerate(texts))
    page = Template(_static("page.html")).substitute(
        title=html.escape(title), css=_static("page.css"), plotly=plotly_js, data=_json(data), blocks=blocks,
        app=app_js)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
