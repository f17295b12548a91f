"""The phase report of a sweep: diagram, metric heatmaps, a Markdown summary, and a web
page (`index.html`, `analysis.page`) in which the diagram can be explored.

    python -m analysis report results/taxonomy-demo --out report/
    python -m analysis report PATH --x width --y label_noise --fix batch_size=128

Any two columns of the trials table can be the diagram's axes; `--fix key=value`
keeps only some models, and every other axis is pooled (its models are averaged
together per cell), which the summary states.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pandas as pd

from analysis import plots
from analysis.diagram import HEATMAPS, ReportOptions, classify_view
from analysis.load import Sweep, load_sweep
from analysis.page import write_page
from analysis.phases import THRESHOLD_NAMES, Thresholds
from analysis.refine import diagram_axes
from workers.core.errors import ConfigError

# Columns of the per-cell table in the summary: (column, header, format).
TABLE = (
    ("models", "models", "{:d}"), ("diverged", "diverged", "{:d}"), ("pairs", "pairs", "{:d}"),
    ("train_loss_mean", "train loss", "{:.3g}"), ("test_acc_mean", "test acc", "{:.3f}"),
    ("log_top_eigenvalue", "ln λmax", "{:.2f}"), ("log_trace", "ln trace", "{:.2f}"),
    ("mc_mean", "mc", "{:.2f}"), ("cka_softmax_mean", "CKA", "{:.3f}"), ("l2_distance_mean", "L2", "{:.3g}"),
    ("phase", "phase", "{}"), ("confidence", "confidence", "{:.2f}"), ("inferred", "inferred", "{}"),
    ("note", "note", "{}"),
)


DEFAULT_OPTIONS = ReportOptions()  # width x batch size, the paper's thresholds


def phase_grid(cells: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Phase labels as a y-by-x table ("?" appended where uncertain; inferred cells of a
    refined sweep in parentheses)."""
    labels = cells["phase"] + cells["uncertain"].map({True: "?", False: ""})
    if "inferred" in cells:
        labels = labels.where(~cells["inferred"].astype(bool), "(" + labels + ")")
    return cells.assign(label=labels).pivot(index=y, columns=x, values="label").fillna("")


def refined_per(spec: dict) -> list[str]:
    """The axes (record columns) a refined sweep was refined per: each of their values is
    a diagram of its own (`sweeps.run.growth`); none for a 2-D or a full-grid sweep."""
    return [a for a in spec.get("refine", {}).get("per", "").split(",") if a]


def slice_values(spec: dict, column: str) -> str:
    """The values of one axis (a record column) as the spec lists them, for messages."""
    values = {key.replace(".", "_"): v for key, v in spec.get("values", {}).items()}
    return ", ".join(str(v) for v in values.get(column, []))


@dataclass(frozen=True)
class Report:
    files: dict[str, str]  # name -> path written
    cells: pd.DataFrame  # one row per cell: axes, metrics, phase, confidence
    x: str
    y: str
    thresholds: Thresholds


def write_report(path: str, out: str, options: ReportOptions = DEFAULT_OPTIONS) -> Report:
    """Write phase_diagram.png, heatmap_*.png, cells.csv, summary.md and the web page
    index.html (`analysis.page`) into `out`."""
    sweep = load_sweep(path, options.all_specs)
    if sweep.trials.empty:
        raise ConfigError("PATH", f"{path}: no trials records found")
    unfixed = [a for a in refined_per(sweep.spec) if a not in options.fixed]
    if unfixed:  # its slices are separate diagrams, refined each on its own: never pooled
        raise ConfigError("--fix", f"this sweep was refined per {', '.join(unfixed)}, each value a diagram of "
                                   f"its own; give --fix {unfixed[0]}=VALUE (values: {slice_values(sweep.spec, unfixed[0])})")
    x, y = diagram_axes([a for a in sweep.axes() if a not in options.fixed], options.x, options.y)
    classified, thresholds = classify_view(sweep, x, y, options.fixed, options.thresholds, options.overrides)
    os.makedirs(out, exist_ok=True)
    written = {"phase_diagram": os.path.join(out, "phase_diagram.png")}
    name = sweep.spec.get("name") or os.path.basename(path.rstrip("/"))
    plots.phase_diagram(classified, x, y, written["phase_diagram"], f"{name}: phases ({options.thresholds} thresholds)")
    for column, stem, title in HEATMAPS:
        if column in classified and classified[column].notna().any():
            written[stem] = os.path.join(out, f"heatmap_{stem}.png")
            plots.heatmap(classified, x, y, column, written[stem], f"{name}: {title}")
    written["cells"] = os.path.join(out, "cells.csv")
    classified.to_csv(written["cells"], index=False)
    written["summary"] = os.path.join(out, "summary.md")
    with open(written["summary"], "w") as f:
        f.write(summary_markdown(sweep, classified, x, y, options, thresholds, written))
    written["page"] = write_page(sweep, os.path.join(out, "index.html"), x, y, options, f"{name}: phases")
    return Report(written, classified, x, y, thresholds)


def _pooled_axes(sweep: Sweep, x: str, y: str, options: ReportOptions) -> list[str]:
    trials = sweep.trials
    others = [a for a in sweep.axes() if a not in (x, y) and a not in options.fixed]
    return [f"{a} ({', '.join(str(v) for v in sorted(trials[a].dropna().unique()))})" for a in others]


def summary_markdown(
    sweep: Sweep, cells: pd.DataFrame, x: str, y: str, options: ReportOptions,
    thresholds: Thresholds, written: dict[str, str],
) -> str:
    trials, pairs = sweep.trials, sweep.pairs
    n_curves = int(pairs["mc"].notna().sum()) if "mc" in pairs else 0
    fixed = ", ".join(f"{k} = {v}" for k, v in options.fixed.items()) or "none"
    pooled = "; ".join(_pooled_axes(sweep, x, y, options)) or "none"
    counts = cells["phase"].value_counts()
    inferred = cells["inferred"].astype(bool)
    lines = [
        f"# Phase report: {sweep.path}",
        "",
        f"- Records: {len(trials)} models ({int((trials['status'] == 'ok').sum())} ok), "
        f"{len(pairs)} seed pairs ({n_curves} with a Bezier curve), {len(cells)} cells.",
    ]
    if inferred.any():
        refine = sweep.spec.get("refine", {})
        lines.append(
            f"- Refined sweep ({', '.join(f'{k}={v}' for k, v in refine.items())}): {int((~inferred).sum())} "
            f"cells trained, {int(inferred.sum())} inferred from their nearest trained cells "
            f"({int((inferred & cells['uncertain'].astype(bool)).sum())} of them uncertain: their neighbours "
            "disagree), drawn hatched and shown in parentheses.")
    lines += [
        f"- Diagram axes: x = `{x}`, y = `{y}` (small values at the top). Fixed: {fixed}. "
        f"Pooled within each cell (models of all their values averaged together): {pooled}.",
        "- Phases: " + ", ".join(f"{p} {counts[p]}" for p in counts.index)
        + f"; {int(cells['uncertain'].sum())} cells uncertain (marked `?`: a metric within one seed "
        "spread of its threshold).",
        "- Sharpness uses ln(mean top eigenvalue over seeds) with the seed spread of ln(eigenvalue)"
        + ("" if cells.get("log_top_eigenvalue", pd.Series(dtype=float)).notna().any()
           else " — this sweep has no Hessian metric, so training loss stands in for sharpness")
        + "; mc's spread is taken over pairs when a cell has several curves, else from the seeds' "
        "training-error spread (percentage points).",
    ]
    if sweep.skipped:
        lines.append(f"- Unreadable files left out: {', '.join(sweep.skipped)}")
    lines += ["", f"## Thresholds ({options.thresholds})", "", "| threshold | value | source |", "|---|---|---|"]
    lines += [f"| {n} | {getattr(thresholds, n):.4g} | {thresholds.describe(n)} |" for n in THRESHOLD_NAMES]
    lines += ["", "Rules: sharp if ln λmax > `log_top_eigenvalue` (training loss > `train_loss` when no Hessian); "
              "poorly connected if mc < `mc`; IV-B if CKA ≥ `cka`.", "", "## Phase diagram", "",
              "![phase diagram](phase_diagram.png)", "", "```",
              phase_grid(cells, x, y).to_string(), "```", "", "## Heatmaps", ""]
    lines += [f"![{stem}](heatmap_{stem}.png)" for _, stem, _ in HEATMAPS if stem in written]
    lines += ["", "## Cells", "", _markdown_table(cells, [x, y])]
    return "\n".join(lines) + "\n"


def _cell_text(value, fmt: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ""
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _markdown_table(cells: pd.DataFrame, axes: list[str]) -> str:
    columns = [(a, a, "{}") for a in axes] + [c for c in TABLE if c[0] in cells
                                              and (c[0] != "inferred" or cells["inferred"].any())]
    rows = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for _, row in cells.iterrows():
        rows.append("| " + " | ".join(_cell_text(row[c], f) for c, _, f in columns) + " |")
    return "\n".join(rows)
