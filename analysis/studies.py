"""Reports of the two variant studies: `sweeps/interpolation.py` and `sweeps/optimizers.py`.

    python -m analysis study-report results/optimizers-demo
    python -m analysis study-report results/interpolation-demo --out report/

Both studies write the taxonomy sweep's record layout, so these reports read the same
tables (`analysis.load`). Figures use matplotlib's Agg canvas, never pyplot.

- optimizers: one row per training variant (optimizer, late-phase weights, SWA): test
  accuracy per width x batch-size cell and pooled over the grid, and the phase of each
  cell when the sweep measured the pair metrics the classifier needs.
- interpolation: the loss along the straight line from theta_0 to theta_T for every
  setting (full path and layer-wise), and barrier height against test accuracy across
  the sweep with its correlation coefficient.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.load import Sweep, load_sweep, status_counts
from workers.core.errors import ConfigError
from workers.core.storage import is_uri

# Columns that make up a training variant, with the value that means "off".
VARIANT_COLUMNS = ("optimizer", "late_phase_k", "swa_start")
GRID = ("width", "batch_size")


def variant_label(row: pd.Series) -> str:
    """`sgd`, `adam + late-phase K=4`, `alig + late-phase K=4 + SWA from 8`, ..."""
    parts = [str(row.get("optimizer", "sgd"))]
    k = row.get("late_phase_k", 0)
    if pd.notna(k) and k:
        parts.append(f"late-phase K={int(k)}")
    start = row.get("swa_start", 0)
    if pd.notna(start) and start:
        parts.append(f"SWA from {int(start)}")
    return " + ".join(parts)


def with_variants(trials: pd.DataFrame) -> pd.DataFrame:
    """`trials` plus a `variant` column (columns missing in older records count as off)."""
    if trials.empty:
        return trials.assign(variant=[])
    return trials.assign(variant=trials.apply(variant_label, axis=1))


def _figure(width: float, height: float) -> tuple[Figure, FigureCanvasAgg]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, FigureCanvasAgg(fig)


def _save(fig: Figure, path: str) -> str:
    fig.savefig(path, dpi=110)
    return path


def _mean_std_text(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if math.isfinite(std) else f"{mean:.3f}"


def _markdown(table: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table (no extra dependency)."""
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------- optimizers study


def variant_cells(sweep: Sweep) -> pd.DataFrame:
    """One row per variant and grid cell: models, diverged, mean test accuracy and
    training loss over seeds, and the phase where the classifier can decide it."""
    trials = with_variants(sweep.trials)
    grid = [g for g in GRID if g in trials.columns]
    keys = ["variant", *grid]
    ok = trials[trials["status"] == "ok"]
    cells = status_counts(trials, keys)[["models", "diverged"]]
    stats = ok.groupby(keys)[["test_acc", "train_loss"]].mean()
    cells = cells.join(stats).reset_index()
    phases = _phases(sweep, grid)
    if phases is not None:
        cells = cells.merge(phases, on=keys, how="left")
    return cells


def _phases(sweep: Sweep, grid: list[str]) -> pd.DataFrame | None:
    """The taxonomy phase of each (variant, cell), or None if the sweep has no pair
    metrics (mode connectivity is one of the classifier's two axes)."""
    if sweep.pairs.empty or "mc" not in sweep.pairs.columns or sweep.pairs["mc"].isna().all():
        return None
    from analysis.phases import cell_metrics, classify, resolve_thresholds

    axes = [c for c in VARIANT_COLUMNS if c in sweep.trials.columns] + grid
    cells = cell_metrics(sweep, axes)
    classified = classify(cells, resolve_thresholds(cells, "auto", {}))
    classified = with_variants(classified)
    return classified[["variant", *grid, "phase", "confidence"]]


def optimizers_report(sweep: Sweep, out: str) -> dict[str, str]:
    """variants.csv, test_accuracy.png and summary.md for the optimizers study."""
    cells = variant_cells(sweep)
    written = {"cells": os.path.join(out, "variants.csv")}
    cells.to_csv(written["cells"], index=False)
    written["test_accuracy"] = _save(_variant_matrix(cells, "test_acc", "test accuracy (mean over seeds)"),
                                     os.path.join(out, "test_accuracy.png"))
    trials = with_variants(sweep.trials)
    ok = trials[trials["status"] == "ok"]
    pooled = trials.groupby("variant").agg(models=("status", "size"),
                                           diverged=("status", lambda s: int((s == "diverged").sum())))
    pooled = pooled.join(ok.groupby("variant")["test_acc"].agg(["mean", "std"])).sort_values("mean", ascending=False)
    pooled["test acc"] = [_mean_std_text(m, sd) for m, sd in zip(pooled["mean"], pooled["std"])]
    pooled = pooled.drop(columns=["mean", "std"]).reset_index()
    grid = [g for g in GRID if g in cells.columns]
    by_cell = cells.pivot_table(index="variant", columns=grid, values="test_acc") if grid else pd.DataFrame()
    by_cell.columns = [" × ".join(f"{g}={v}" for g, v in zip(grid, c if isinstance(c, tuple) else (c,)))
                       for c in by_cell.columns]
    lines = [
        f"# Optimizers study: {sweep.spec.get('name', os.path.basename(sweep.path))}",
        "",
        f"{len(trials)} models, {int((trials['status'] == 'ok').sum())} trained to the end. A variant is "
        "an optimizer, optionally with late-phase weights (K members from epoch t0) and SWA "
        "(average of the epoch-end weights from its start epoch).",
        "",
        "## Test accuracy per variant (mean ± std over the grid's cells and seeds)",
        "",
        _markdown(pooled),
        "",
        "## Test accuracy per cell (mean over seeds)",
        "",
        _markdown(by_cell.reset_index()) if not by_cell.empty else "no grid axes",
        "",
    ]
    if "phase" in cells.columns:
        phases = cells.pivot_table(index="variant", columns=grid, values="phase", aggfunc="first")
        phases.columns = by_cell.columns
        lines += ["## Phase per cell (auto thresholds, see `python -m analysis report`)", "",
                  _markdown(phases.reset_index()), ""]
    else:
        lines += ["Phases: not classified. The classifier needs mode connectivity, which this sweep did "
                  "not measure; rerun with `--set measure_pairs=true --set seed=0,1` (and "
                  "`--set metrics=hessian` for sharpness) to add them.", ""]
    lines += [f"Figure: [test accuracy]({os.path.basename(written['test_accuracy'])})", ""]
    written["summary"] = os.path.join(out, "summary.md")
    with open(written["summary"], "w") as f:
        f.write("\n".join(lines))
    return written


def _variant_matrix(cells: pd.DataFrame, column: str, title: str) -> Figure:
    """Variants (rows) x grid cells (columns), coloured and annotated with `column`."""
    grid = [g for g in GRID if g in cells.columns]
    table = cells.pivot_table(index="variant", columns=grid, values=column) if grid else \
        cells.set_index("variant")[[column]]
    fig, _ = _figure(1.6 + 1.1 * table.shape[1], 1.2 + 0.38 * table.shape[0])
    ax = fig.add_subplot()
    image = ax.imshow(table.to_numpy(dtype=float), aspect="auto", cmap="viridis")
    for (i, j), value in np.ndenumerate(table.to_numpy(dtype=float)):
        if math.isfinite(value):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if value < np.nanmean(table.to_numpy(dtype=float)) else "black")
    labels = [", ".join(str(v) for v in (c if isinstance(c, tuple) else (c,))) for c in table.columns]
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(table.index)), table.index, fontsize=8)
    ax.set_xlabel(", ".join(grid))
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax)
    return fig


# ---------------------------------------------------------------- interpolation study


# What `workers.metrics.paths` records: the full path and the layer-wise paths
# (other groups at theta_T) as curve kinds, and the barrier of the full path's training
# loss over the chord between its end points as a per-model scalar.
FULL_PATH, LAYER_PATHS = "interp_full", "interp_group"
BARRIER = "interpolation_train_barrier"


def interpolation_settings(sweep: Sweep) -> list[str]:
    """The sweep's axes other than seed: what makes one setting."""
    return [a for a in sweep.axes() if a != "seed"]


def _setting_label(row: pd.Series, axes: list[str]) -> str:
    return ", ".join(f"{a}={row[a]}" for a in axes) or "all models"


def barrier_correlation(trials: pd.DataFrame, barrier: str) -> tuple[float, float, int]:
    """(Pearson r, Spearman rho, n) between barrier height and test accuracy over the
    models that trained to the end and have a finite barrier."""
    usable = trials[(trials["status"] == "ok") & np.isfinite(trials[barrier]) & np.isfinite(trials["test_acc"])]
    n = len(usable)
    if n < 3 or usable[barrier].nunique() < 2 or usable["test_acc"].nunique() < 2:
        return math.nan, math.nan, n
    pearson = float(np.corrcoef(usable[barrier], usable["test_acc"])[0, 1])
    ranks = usable[[barrier, "test_acc"]].rank()
    spearman = float(np.corrcoef(ranks[barrier], ranks["test_acc"])[0, 1])
    return pearson, spearman, n


def interpolation_report(sweep: Sweep, out: str) -> dict[str, str]:
    """curves_full.png, curves_layers.png, barrier_vs_test_acc.png, settings.csv and
    summary.md for the interpolation study."""
    if BARRIER not in sweep.trials.columns:
        raise ConfigError("metrics", f"{sweep.path}: no interpolation records; run the sweep with "
                          "metrics=interpolation")
    axes = interpolation_settings(sweep)
    trials = sweep.trials.copy()
    trials["setting"] = trials.apply(lambda r: _setting_label(r, axes), axis=1)
    curves = sweep.curves
    curves = curves[curves["metric"] == "interpolation"] if "metric" in curves.columns else curves.iloc[0:0]
    curves = curves.merge(trials[["trial_key", "setting"]], on="trial_key", how="inner")
    written = {
        "curves_full": _save(_curve_panels(curves[curves["kind"] == FULL_PATH], trials,
                                           "full path: θ(α) = (1-α) θ0 + α θT", by_group=False),
                             os.path.join(out, "curves_full.png")),
        "curves_layers": _save(_curve_panels(curves[curves["kind"] == LAYER_PATHS], trials,
                                             "layer-wise paths, others at θT (training loss, one line per group)",
                                             by_group=True),
                               os.path.join(out, "curves_layers.png")),
    }
    pearson, spearman, n = barrier_correlation(trials, BARRIER)
    written["barrier_vs_test_acc"] = _save(_barrier_scatter(trials, BARRIER, pearson, n),
                                           os.path.join(out, "barrier_vs_test_acc.png"))
    ok = trials[trials["status"] == "ok"]
    scalar_cols = [c for c in trials.columns if c.startswith("interpolation_") and not c.endswith("time_s")]
    settings = ok.groupby("setting")[["test_acc", "train_loss", *scalar_cols]].mean(numeric_only=True)
    settings.insert(0, "models", ok.groupby("setting").size())
    written["settings"] = os.path.join(out, "settings.csv")
    settings.to_csv(written["settings"])
    shown = ["models", "test_acc", "train_loss", BARRIER, "interpolation_train_monotone",
             "interpolation_group_max_train_barrier"]
    lines = [
        f"# Interpolation study: {sweep.spec.get('name', os.path.basename(sweep.path))}",
        "",
        f"{len(trials)} models, {len(ok)} trained to the end; settings vary {', '.join(axes) or 'nothing'}.",
        "",
        f"Barrier height (`{BARRIER}`) vs test accuracy over {n} models: Pearson r = {pearson:.3f}, "
        f"Spearman rho = {spearman:.3f}.",
        "",
        "## Per setting (mean over seeds)",
        "",
        _markdown(settings[[c for c in shown if c in settings.columns]].reset_index()),
        "",
        "Figures: " + ", ".join(f"[{k}]({os.path.basename(v)})" for k, v in written.items() if v.endswith(".png")),
        "",
    ]
    written["summary"] = os.path.join(out, "summary.md")
    with open(written["summary"], "w") as f:
        f.write("\n".join(lines))
    return written


def _curve_panels(curves: pd.DataFrame, trials: pd.DataFrame, title: str, by_group: bool) -> Figure:
    """One panel per setting: loss against alpha (train solid, test dashed for the full
    path; one training-loss line per group for layer-wise paths), mean over seeds."""
    settings = sorted(trials["setting"].unique())
    n_cols = min(4, max(1, len(settings)))
    n_rows = max(1, math.ceil(len(settings) / n_cols))
    fig, _ = _figure(3.4 * n_cols, 2.7 * n_rows + 0.4)
    fig.suptitle(title, fontsize=10)
    for i, setting in enumerate(settings):
        ax = fig.add_subplot(n_rows, n_cols, i + 1)
        parts = setting.split(", ")
        ax.set_title("\n".join(", ".join(parts[j : j + 2]) for j in range(0, len(parts), 2)), fontsize=7)
        ax.set_xlabel("α", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        part = curves[curves["setting"] == setting]
        if part.empty:
            ax.text(0.5, 0.5, "no curve (diverged?)", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            continue
        if by_group:
            train = part[part["split"] == "train"]
            for group, rows in train.groupby("group"):
                mean = rows.groupby("t")["loss"].mean()
                ax.plot(mean.index, mean.to_numpy(), linewidth=0.8, label=str(group))
            if train["group"].nunique() <= 8:
                ax.legend(fontsize=5)
        else:
            for split, style in (("train", "-"), ("test", "--")):
                mean = part[part["split"] == split].groupby("t")["loss"].mean()
                ax.plot(mean.index, mean.to_numpy(), style, label=split)
            ax.legend(fontsize=6)
        ax.set_yscale("log")
    return fig


def _barrier_scatter(trials: pd.DataFrame, barrier: str, pearson: float, n: int) -> Figure:
    """Barrier height against test accuracy, one point per model, coloured by setting."""
    ok = trials[trials["status"] == "ok"]
    fig, _ = _figure(9.5, 4.6)
    ax = fig.add_subplot()
    colors = colormaps["tab20"]
    for i, (setting, rows) in enumerate(ok.groupby("setting")):
        ax.scatter(rows[barrier], rows["test_acc"], s=24, color=colors(i % 20), label=setting)
    ax.set_xlabel(f"barrier height ({barrier})")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"barrier vs test accuracy: Pearson r = {pearson:.3f} (n = {n})", fontsize=10)
    if ok["setting"].nunique() <= 20:
        fig.legend(fontsize=6, loc="outside right upper")
    return fig


# ---------------------------------------------------------------- entry point

REPORTS: dict[str, Callable[[Sweep, str], dict[str, str]]] = {
    "optimizers": optimizers_report,
    "interpolation": interpolation_report,
}


def default_out(path: str) -> str:
    """`<sweep>/report` for a local sweep (a folder pyarrow's table discovery ignores),
    `./report-<name>` for a URI."""
    if is_uri(path):  # s3://bucket/prefix/name?endpoint_override=... -> report-name
        return f"report-{path.partition('?')[0].rstrip('/').rsplit('/', 1)[-1]}"
    return os.path.join(path, "report")


def write_study_report(path: str, out: str | None = None, study: str | None = None) -> dict[str, str]:
    """Write the report of the study that produced the sweep at `path` (from its
    spec.json, or `study`); returns name -> file written."""
    sweep = load_sweep(path)
    if sweep.trials.empty:
        raise ConfigError("PATH", f"{path}: no trials records found")
    study = study or sweep.spec.get("study", "")
    if study not in REPORTS:
        raise ConfigError("--study", f"no study report for {study!r}; valid: {', '.join(REPORTS)} "
                          "(the taxonomy sweep has `python -m analysis report`)")
    out = out or default_out(path)
    os.makedirs(out, exist_ok=True)
    return REPORTS[study](sweep, out)
