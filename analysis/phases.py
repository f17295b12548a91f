"""Per-cell aggregation and the phase classifier of the loss-landscape taxonomy.

Yang et al. 2021 place every grid cell on two axes: locally sharp vs flat (Hessian top
eigenvalue) and globally poorly vs well connected (mode connectivity mc); flat and
well-connected cells split by the similarity of their models (CKA):

    sharp & poorly connected  -> I        flat & poorly connected -> III
    sharp & well connected    -> II       flat & well connected   -> IV-A (CKA low)
                                                                     IV-B (CKA high)

The paper draws the boundaries by eye; `PAPER` holds thresholds calibrated on the
published metrics (see its docstring), `auto_thresholds` derives them from a sweep's own
metrics (for settings whose scales differ), and users can set any of them.

A cell whose value sits within one seed spread of a threshold is flagged uncertain;
`confidence` is, over the rules that decided the phase, the smallest Phi(|value -
threshold| / spread): roughly the chance that another seed lands on the same side.
Cells where most models diverged are labelled "diverged" (not a phase); cells lacking a
needed metric are "unclassified", with the reason in `note`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import Sweep, status_counts
from workers.core.errors import ConfigError

MODEL_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "hessian_top_eigenvalue", "hessian_trace")
PAIR_METRICS = ("mc", "mc_loss", "mc_test", "cka_softmax", "cka_logits", "l2_distance")
PHASES = ("I", "II", "III", "IV-A", "IV-B", "IV")  # IV: flat and well connected, no CKA to split it
CONFIDENT = 0.5 * (1.0 + math.erf(1.0 / math.sqrt(2.0)))  # Phi(1): one spread from the threshold


# ---------------------------------------------------------------- aggregation


def select(sweep: Sweep, fixed: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The trials and pairs rows whose columns equal the `fixed` values (given as text)."""
    trials, pairs = sweep.trials, sweep.pairs
    for key, text in fixed.items():
        if trials.empty or key not in trials.columns:
            raise ConfigError(key, f"not a column of the trials table; valid: {', '.join(sweep.axes())}")
        keep = _matches(trials[key], text)
        if not keep.any():
            values = ", ".join(str(v) for v in sorted(trials[key].dropna().unique()))
            raise ConfigError(key, f"no models with {key}={text}; values in this sweep: {values}")
        trials = trials[keep]
        if not pairs.empty and key in pairs.columns:
            pairs = pairs[_matches(pairs[key], text)]
    return trials, pairs


def _matches(column: pd.Series, text: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(column):
        return column == (text.lower() in ("true", "1", "yes"))
    if pd.api.types.is_numeric_dtype(column):
        try:
            return pd.Series(np.isclose(column.astype(float), float(text)), index=column.index)
        except ValueError:
            return pd.Series(False, index=column.index)
    return column.astype(str) == text


def unique_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, seed pair): a row with a curve if there is one, else the latest.

    A seed pair has several records when a sweep was extended: a similarity-only record
    and, after raising `pairs.mc_pairs`, one with a curve; or records under older options.
    """
    if pairs.empty:
        return pairs
    order = pd.DataFrame({
        "has_mc": pairs["mc"].notna() if "mc" in pairs else False,
        "written": pairs["written_at"].fillna("").astype(str) if "written_at" in pairs else "",
    }, index=pairs.index).sort_values(["has_mc", "written"], kind="stable")
    return pairs.loc[order.index].drop_duplicates(["cell_key", "seed_a", "seed_b"], keep="last")


def cell_metrics(sweep: Sweep, axes: list[str], fixed: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per combination of `axes` (other axes pooled): counts, mean and spread.

    Counts: `models` (all seeds, and all values of pooled axes), `ok` (trained to the
    end), `diverged`.
    Per-model metrics: `<m>_mean`, `<m>_std` over models that trained to the end, and
    `log_top_eigenvalue` = ln(mean over seeds) as in the paper, with the seed spread of
    ln(eigenvalue) as `log_top_eigenvalue_std` (likewise `log_trace`, `log_train_loss`);
    `train_err_std` is the seed spread of the training error in percentage points.
    Pair metrics: `<m>_mean`, `<m>_std` over seed pairs, `pairs`, `mc_pairs`.
    """
    trials, pairs = select(sweep, fixed or {})
    missing = [a for a in axes if trials.empty or a not in trials.columns]
    if missing:
        raise ConfigError(missing[0], f"not a column of the trials table; valid axes: {', '.join(sweep.axes())}")
    table = status_counts(trials, axes)
    ok = trials[trials["status"] == "ok"]
    for metric in MODEL_METRICS:
        if metric in ok.columns:
            stats = ok.groupby(axes, dropna=False)[metric].agg(["mean", "std"])
            table[f"{metric}_mean"], table[f"{metric}_std"] = stats["mean"], stats["std"]
    for metric, name in (("hessian_top_eigenvalue", "log_top_eigenvalue"), ("hessian_trace", "log_trace"),
                         ("train_loss", "log_train_loss")):
        if f"{metric}_mean" in table:
            table[name] = np.log(table[f"{metric}_mean"].where(table[f"{metric}_mean"] > 0))
            logs = np.log(ok[metric].where(ok[metric] > 0))
            table[f"{name}_std"] = logs.groupby([ok[a] for a in axes], dropna=False).std()
    if "train_acc" in ok.columns:
        table["train_err_std"] = (100.0 * (1.0 - ok["train_acc"])).groupby([ok[a] for a in axes], dropna=False).std()

    usable = pairs[pairs["status"] == "ok"] if not pairs.empty else pairs
    usable = unique_pairs(usable)
    if not usable.empty and all(a in usable.columns for a in axes):
        by_cell = usable.groupby(axes, dropna=False)
        table["pairs"] = by_cell.size()
        for metric in PAIR_METRICS:
            if metric in usable.columns:
                stats = by_cell[metric].agg(["mean", "std", "count"])
                table[f"{metric}_mean"], table[f"{metric}_std"] = stats["mean"], stats["std"]
                if metric == "mc":
                    table["mc_pairs"] = stats["count"]
    for column in ("pairs", "mc_pairs"):
        table[column] = table[column].fillna(0).astype(int) if column in table else 0
    return table.reset_index()


# ---------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Thresholds:
    """Where the phase boundaries lie, and where each value came from.

    Defaults (`PAPER`) are calibrated on the published metrics of Yang et al. 2021
    (ResNet18-k on CIFAR-10, 14 widths x 15 batch sizes x 5 seeds, imported with
    `analysis.yang2021`), so that the classifier draws the paper's diagram:

    - log_top_eigenvalue = 3.45 (natural log of the mean top eigenvalue; lambda ~ 31.5):
      Otsu's split of the 210 cells, in the gap between 3.40 and 3.50. Above it: narrow
      models at any batch size and every width at batch <= 32 (Phases I/II); below it:
      wider models at batch >= 44 (III/IV). The same split agrees with "training loss
      above 0.01" in 207 of 210 cells: sharp cells are the ones that did not fit.
    - mc = -1.0 (percentage points of training error; mc below it: poorly connected).
      Wide models (width >= 23, batch >= 44) sit at |mc| <= 0.56; narrow ones (width <= 11,
      batch >= 64) have barriers of -1.8 to -30; width 16 straddles -0.4 .. -1.7, which
      makes it the edge of the Phase III wedge as the paper draws it (widths ~6-16).
      Positive mc (under-trained models, smallest batches) counts as well connected,
      which gives Phase II across the smallest batch sizes.
    - cka = 0.68 (softmax CKA; at or above: similar models, Phase IV-B): Otsu's split of
      the CKA of the flat, well-connected cells (0.666 .. 0.680 depending on the mc
      threshold). IV-B cells (moderate batch sizes) have CKA 0.68 .. 0.80, IV-A cells
      (the largest batch sizes, and the edge of the wedge) 0.50 .. 0.68.
    - train_loss = 0.02: used for sharpness only when a sweep has no Hessian metric
      (Otsu's split of log training loss over the published cells: 0.021).
    """

    log_top_eigenvalue: float = 3.45
    mc: float = -1.0
    cka: float = 0.68
    train_loss: float = 0.02
    source: dict[str, str] = field(default_factory=dict, compare=False)

    def describe(self, name: str) -> str:
        return self.source.get(name, "default (calibrated on Yang et al. 2021)")


PAPER = Thresholds()
THRESHOLD_NAMES = tuple(f.name for f in fields(Thresholds) if f.name != "source")


def with_overrides(thresholds: Thresholds, overrides: dict[str, str]) -> Thresholds:
    """Thresholds with user-set values (`name -> number as text`), marked as such."""
    values: dict[str, Any] = {}
    source = dict(thresholds.source)
    for name, text in overrides.items():
        if name not in THRESHOLD_NAMES:
            raise ConfigError("--threshold", f"unknown threshold {name!r}; valid: {', '.join(THRESHOLD_NAMES)}")
        try:
            values[name] = float(text)
        except ValueError:
            raise ConfigError(f"--threshold {name}", f"expected a number, got {text!r}") from None
        if name == "train_loss" and not values[name] > 0:  # compared on a log scale
            raise ConfigError(f"--threshold {name}", f"expected a loss above 0, got {text!r}")
        source[name] = "set by the user"
    return replace(thresholds, **values, source=source)


def otsu(values: np.ndarray) -> tuple[float, float]:
    """Otsu's two-group split of 1-D values: (threshold, between-group share of variance).

    The threshold maximises the between-group variance. The share (0..1) is reported, not
    used as a test: it is near 1 for two tight clusters but already 0.75 for uniform
    values, and only 0.61 for the published ln(eigenvalue), whose sharp group has a long
    tail. NaN threshold if there are fewer than 4 finite values or all are equal.
    """
    v = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
    if len(v) < 4 or v[0] == v[-1]:
        return float("nan"), 0.0
    n = len(v)
    k = np.arange(1, n)  # size of the lower group
    csum = np.cumsum(v)[:-1]
    mean_low, mean_high = csum / k, (v.sum() - csum) / (n - k)
    between = k * (n - k) * (mean_low - mean_high) ** 2 / n**2
    best = int(np.argmax(between))
    return float(0.5 * (v[best] + v[best + 1])), float(between[best] / v.var())


def mc_scale(mc):
    """sign(mc) * ln(1 + |mc|): keeps the cluster of mc values near 0 (well connected)
    apart from the long tail of barriers (down to -30 points), where a split or an
    average of raw mc would be decided by the tail."""
    return np.sign(mc) * np.log1p(np.abs(mc))


def auto_thresholds(cells: pd.DataFrame, fallback: Thresholds = PAPER) -> Thresholds:
    """Thresholds from the sweep's own cells, by Otsu's split of each metric.

    Sharpness on ln(top eigenvalue) (and ln training loss for the fallback rule); mc on
    sign(mc) * ln(1 + |mc|), which keeps the cluster of ~0 values apart from the long
    tail of barriers, and only if the split is a barrier (< 0); CKA on the cells that
    these two thresholds call flat and well connected. On the published data this gives
    3.45, -1.77 and 0.67 (see `Thresholds`). A metric with fewer than 4 cells, no spread,
    or a split on the wrong side keeps its fallback value.

    Auto mode assumes the sweep reaches both sides of each boundary: on a sweep that lies
    inside one phase, Otsu still splits it in two. The summary reports each split's
    between-group share of variance so that a reader can judge.
    """
    values: dict[str, float] = {}
    source: dict[str, str] = {}

    def fit(name: str, data: pd.Series, back=lambda x: x, accept=lambda x: True) -> None:
        split, share = otsu(data.to_numpy(dtype=np.float64))
        if math.isfinite(split) and accept(back(split)):
            values[name] = back(split)
            source[name] = f"auto: Otsu split of {data.notna().sum()} cells (between-group share {share:.2f})"
        else:
            source[name] = f"auto found no usable split in {data.notna().sum()} cells: {fallback.describe(name)}"

    def column(name: str) -> pd.Series:
        return cells[name] if name in cells else pd.Series(np.nan, index=cells.index)

    fit("log_top_eigenvalue", column("log_top_eigenvalue"))
    fit("train_loss", column("log_train_loss"), back=math.exp)
    fit("mc", mc_scale(column("mc_mean")), back=lambda s: math.copysign(math.expm1(abs(s)), s),
        accept=lambda x: x < 0)
    flat_connected = classify(cells, replace(fallback, **values))["phase"].isin(["IV-A", "IV-B", "IV"])
    fit("cka", column("cka_softmax_mean")[flat_connected])
    return replace(fallback, **values, source=source)


# ---------------------------------------------------------------- classifier


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@dataclass
class _Rule:
    """One threshold decision with its margin in units of the spread."""

    above: bool
    confidence: float
    spread_known: bool


def _decide(value: float, threshold: float, spread: float) -> _Rule:
    """value > threshold, with confidence Phi(margin / spread); a zero spread (every seed
    alike) is certain off the threshold, an unknown one (a single seed) is not scored."""
    if not math.isfinite(spread):
        return _Rule(value > threshold, 1.0, False)
    if spread == 0:
        return _Rule(value > threshold, 1.0 if value != threshold else 0.5, True)
    return _Rule(value > threshold, _phi(abs(value - threshold) / spread), True)


def _classify_row(row: pd.Series, t: Thresholds) -> tuple[str, float, str]:
    def get(name: str) -> float:
        return float(row[name]) if name in row and pd.notna(row[name]) else math.nan

    if row["ok"] * 2 < row["models"]:
        return "diverged", 1.0, f"{row['models'] - row['ok']} of {row['models']} models did not finish"
    notes = []
    if math.isfinite(get("log_top_eigenvalue")):
        sharp = _decide(get("log_top_eigenvalue"), t.log_top_eigenvalue, get("log_top_eigenvalue_std"))
    elif math.isfinite(get("log_train_loss")):
        sharp = _decide(get("log_train_loss"), math.log(t.train_loss), get("log_train_loss_std"))
        notes.append("sharpness from training loss (no Hessian)")
    else:
        return "unclassified", math.nan, "no Hessian or training loss"
    if not math.isfinite(get("mc_mean")):
        return "unclassified", math.nan, "no mode connectivity (pairs not measured)"
    # mc's spread: over pairs if several have a curve, else the seeds' training-error spread
    mc_spread = get("mc_std") if row.get("mc_pairs", 0) >= 2 else get("train_err_std")
    connected = _decide(get("mc_mean"), t.mc, mc_spread)
    rules = [sharp, connected]
    if sharp.above:
        phase = "II" if connected.above else "I"
    elif not connected.above:
        phase = "III"
    elif math.isfinite(get("cka_softmax_mean")):
        similar = _decide(get("cka_softmax_mean"), t.cka, get("cka_softmax_std"))
        rules.append(similar)
        phase = "IV-B" if similar.above else "IV-A"
    else:
        phase = "IV"
        notes.append("no CKA to split IV")
    if not all(r.spread_known for r in rules):
        notes.append("spread unknown for a rule")
    if row["ok"] < row["models"]:
        notes.append(f"{row['models'] - row['ok']} of {row['models']} models did not finish")
    return phase, min(r.confidence for r in rules), "; ".join(notes)


def classify(cells: pd.DataFrame, thresholds: Thresholds = PAPER) -> pd.DataFrame:
    """`cells` (from `cell_metrics`) with `phase`, `confidence`, `uncertain` and `note`."""
    out = cells.copy()
    if out.empty:
        return out.assign(phase=[], confidence=[], uncertain=[], note=[])
    decided = [_classify_row(row, thresholds) for _, row in out.iterrows()]
    out["phase"] = [d[0] for d in decided]
    out["confidence"] = [d[1] for d in decided]
    out["uncertain"] = [d[0] in PHASES and d[1] < CONFIDENT for d in decided]
    out["note"] = [d[2] for d in decided]
    return out


def resolve_thresholds(cells: pd.DataFrame, mode: str, overrides: dict[str, str]) -> Thresholds:
    """`mode` "paper" (calibrated defaults) or "auto" (from `cells`), then user overrides."""
    if mode not in ("paper", "auto"):
        raise ConfigError("--thresholds", f"unknown mode {mode!r}; valid: paper, auto")
    base = auto_thresholds(cells) if mode == "auto" else PAPER
    return with_overrides(base, overrides)
