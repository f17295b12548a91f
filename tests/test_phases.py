"""Per-cell aggregation, thresholds and the phase classifier (analysis.phases), the report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from analysis import load_sweep
from analysis.phases import (
    PAPER,
    auto_thresholds,
    cell_metrics,
    classify,
    otsu,
    resolve_thresholds,
    with_overrides,
)
from analysis.report import ReportOptions, phase_grid, write_report
from analysis.yang2021 import import_archive
from workers.core.errors import ConfigError
from workers.core.storage import Storage

ARCHIVE = Path(__file__).resolve().parent / "data" / "yang2021_results.tar.gz"  # the published archive

# Cells of the published diagram far from any boundary: (width, batch size) -> phase.
FAR_FROM_BOUNDARIES = {
    (8, 16): "II", (23, 19): "II", (64, 16): "II", (128, 24): "II",
    (1, 128): "I", (2, 512): "I", (3, 64): "I", (4, 1024): "I", (6, 44): "I",
    (8, 256): "III", (11, 128): "III", (11, 1024): "III",
    (45, 1024): "IV-A", (64, 724): "IV-A", (23, 512): "IV-A",
    (64, 92): "IV-B", (91, 128): "IV-B", (128, 180): "IV-B", (45, 64): "IV-B",
}


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("yang2021")
    import_archive(str(ARCHIVE), str(out))
    return cell_metrics(load_sweep(str(out)), ["width", "batch_size"])


def _phases(cells: pd.DataFrame) -> dict[tuple[int, int], tuple[str, bool]]:
    return {(r.width, r.batch_size): (r.phase, r.uncertain) for r in cells.itertuples()}


def test_classifier_reproduces_the_published_diagram_far_from_boundaries(published):
    cells = classify(published, PAPER)
    assert len(cells) == 210
    got = _phases(cells)
    assert {cell: got[cell] for cell in FAR_FROM_BOUNDARIES} == {
        cell: (phase, False) for cell, phase in FAR_FROM_BOUNDARIES.items()
    }
    grid = phase_grid(cells, "width", "batch_size")
    assert grid.loc[16].str.startswith("II").sum() >= 12  # Phase II across the smallest batch
    assert set(grid[1].str.rstrip("?")) == {"I"} and set(grid[2].str.rstrip("?")) == {"I"}


def test_auto_thresholds_find_the_same_layout_on_the_published_data(published):
    auto = auto_thresholds(published)
    assert auto.log_top_eigenvalue == pytest.approx(PAPER.log_top_eigenvalue, abs=0.1)
    assert -3 < auto.mc < 0 and 0.6 < auto.cka < 0.75
    assert all(auto.describe(n).startswith("auto: Otsu") for n in ("log_top_eigenvalue", "mc", "cka"))
    got = _phases(classify(published, auto))
    assert {cell: got[cell][0] for cell in FAR_FROM_BOUNDARIES} == FAR_FROM_BOUNDARIES


def test_user_thresholds_override_and_are_checked(published):
    lenient = with_overrides(PAPER, {"mc": "-100"})
    assert lenient.mc == -100 and lenient.describe("mc") == "set by the user"
    assert lenient.cka == PAPER.cka
    phases = set(classify(published, lenient)["phase"])
    assert not phases & {"I", "III"}  # nothing counts as poorly connected any more
    with pytest.raises(ConfigError, match="valid: log_top_eigenvalue, mc, cka, train_loss"):
        with_overrides(PAPER, {"sharpness": "3"})
    with pytest.raises(ConfigError, match="expected a number"):
        with_overrides(PAPER, {"mc": "low"})
    with pytest.raises(ConfigError, match="--threshold train_loss: expected a loss above 0, got '0'"):
        with_overrides(PAPER, {"train_loss": "0"})  # its scale is logarithmic: once a traceback
    with pytest.raises(ConfigError, match="valid: paper, auto"):
        resolve_thresholds(published, "magic", {})


# ---------------------------------------------------------------- synthetic sweeps


def _write(storage: Storage, table: str, rows: list[dict]) -> None:
    for i, row in enumerate(rows):
        storage.write_table(table, f"{table}-{i}", pa.Table.from_pylist([row]))


def _synthetic_sweep(root: Path) -> str:
    """Two widths x two lrs x 3 seeds; width 8 diverged twice at lr 0.5."""
    storage = Storage.open(str(root))
    trials, pairs = [], []
    for width in (2, 8):
        for lr in (0.1, 0.5):
            cell = f"w{width}-lr{lr}"
            for seed in range(3):
                diverged = width == 8 and lr == 0.5 and seed > 0
                trials.append({
                    "sweep": "syn", "trial_key": f"{cell}-s{seed}", "cell_key": cell, "width": width, "lr": lr,
                    "batch_size": 32, "seed": seed, "status": "diverged" if diverged else "ok", "error": "",
                    "train_loss": math.nan if diverged else 0.1 * (seed + 1), "train_acc": 0.9 + 0.01 * seed,
                    "test_acc": 0.8, "hessian_top_eigenvalue": math.nan if diverged else float(10 * width + seed),
                    "hessian_trace": 100.0,
                })
            for a, b in ((0, 1), (0, 2), (1, 2)):
                row = {"sweep": "syn", "cell_key": cell, "width": width, "lr": lr, "batch_size": 32,
                       "seed_a": a, "seed_b": b, "status": "ok", "with_mc": False, "mc": math.nan,
                       "cka_softmax": 0.5 + 0.1 * a, "l2_distance": 10.0}
                pairs.append(row)
                if (a, b) == (0, 1):  # the same pair again, measured later with a curve
                    pairs.append({**row, "with_mc": True, "mc": -5.0 * width})
                if (a, b) == (1, 2):  # remeasured later (other options): the later row counts
                    row["written_at"] = "2026-01-01T00:00:00+00:00"
                    pairs.append({**row, "cka_softmax": 0.9, "written_at": "2026-02-01T00:00:00+00:00"})
    _write(storage, "trials", trials)
    _write(storage, "pairs", pairs)
    return str(root)


def test_cell_metrics_aggregates_seeds_and_pairs(tmp_path):
    sweep = load_sweep(_synthetic_sweep(tmp_path))
    cells = cell_metrics(sweep, ["width", "lr"]).set_index(["width", "lr"])
    cell = cells.loc[(2, 0.1)]
    assert (cell["models"], cell["ok"], cell["diverged"]) == (3, 3, 0)
    assert cell["log_top_eigenvalue"] == pytest.approx(math.log(21.0))  # ln of the seed mean
    assert cell["log_top_eigenvalue_std"] == pytest.approx(np.std(np.log([20, 21, 22]), ddof=1))
    assert cell["pairs"] == 3 and cell["mc_pairs"] == 1 and cell["mc_mean"] == -10.0  # duplicate pair counted once
    assert cell["cka_softmax_mean"] == pytest.approx((0.5 + 0.5 + 0.9) / 3)
    assert cell["train_err_std"] == pytest.approx(1.0)  # train_acc .90/.91/.92 -> 10/9/8 points
    assert cells.loc[(8, 0.5), "diverged"] == 2

    pooled = cell_metrics(sweep, ["width", "batch_size"]).set_index("width")  # lr pooled
    assert pooled.loc[2, "models"] == 6 and pooled.loc[2, "pairs"] == 6
    fixed = cell_metrics(sweep, ["width", "batch_size"], {"lr": "0.5"}).set_index("width")
    assert fixed.loc[2, "models"] == 3
    with pytest.raises(ConfigError, match="values in this sweep: 0.1, 0.5"):
        cell_metrics(sweep, ["width", "batch_size"], {"lr": "0.3"})
    with pytest.raises(ConfigError, match="depth"):
        cell_metrics(sweep, ["depth", "lr"])


def _cell(**values) -> dict:
    base = {"models": 5, "ok": 5, "log_top_eigenvalue": 2.0, "log_top_eigenvalue_std": 0.1,
            "mc_mean": 0.0, "mc_pairs": 1, "train_err_std": 0.1, "cka_softmax_mean": 0.75,
            "cka_softmax_std": 0.01}
    return {**base, **values}


@pytest.mark.parametrize(
    ("values", "phase"),
    [
        ({"log_top_eigenvalue": 5.0, "mc_mean": -10.0}, "I"),
        ({"log_top_eigenvalue": 5.0, "mc_mean": 3.0}, "II"),
        ({"mc_mean": -10.0}, "III"),
        ({"cka_softmax_mean": 0.5}, "IV-A"),
        ({}, "IV-B"),
        ({"cka_softmax_mean": math.nan}, "IV"),
        ({"ok": 2}, "diverged"),
        ({"mc_mean": math.nan}, "unclassified"),
        ({"log_top_eigenvalue": math.nan, "log_train_loss": math.log(0.5), "log_train_loss_std": 0.1}, "II"),
    ],
)
def test_rules(values, phase):
    assert classify(pd.DataFrame([_cell(**values)]), PAPER)["phase"].iloc[0] == phase


def test_cells_within_one_seed_spread_of_a_threshold_are_uncertain():
    near = _cell(log_top_eigenvalue=PAPER.log_top_eigenvalue - 0.1, log_top_eigenvalue_std=0.3)
    far = _cell(log_top_eigenvalue=PAPER.log_top_eigenvalue - 0.1, log_top_eigenvalue_std=0.01)
    cells = classify(pd.DataFrame([near, far]), PAPER)
    assert cells["uncertain"].tolist() == [True, False]
    assert cells["confidence"].iloc[0] == pytest.approx(0.5 * (1 + math.erf(1 / 3 / math.sqrt(2))))
    single_seed = classify(pd.DataFrame([_cell(log_top_eigenvalue_std=math.nan)]), PAPER)
    assert "spread unknown" in single_seed["note"].iloc[0]


def test_otsu_splits_two_groups():
    split, share = otsu(np.array([0.9, 1.0, 1.1, 1.0, 5.0, 5.2, 4.9, 5.1]))
    assert 1.1 < split < 4.9 and share > 0.9
    _, share = otsu(np.linspace(0, 1, 50))
    assert share == pytest.approx(0.75, abs=0.01)
    assert math.isnan(otsu(np.array([1.0, 1.0, 1.0, 1.0]))[0])


def test_auto_thresholds_fall_back_without_a_usable_split():
    few = pd.DataFrame([_cell(log_top_eigenvalue=v, mc_mean=m) for v, m in ((1, 2), (5, 3), (1, 4))])
    auto = auto_thresholds(few)
    assert auto.log_top_eigenvalue == PAPER.log_top_eigenvalue and "no usable split" in auto.describe("mc")
    no_barrier = pd.DataFrame([_cell(mc_mean=m) for m in (0.0, 0.0, 0.1, 3.0, 4.0, 5.0)])
    assert auto_thresholds(no_barrier).mc == PAPER.mc  # a split at mc > 0 is not a barrier


def test_report_on_other_axes_states_what_is_fixed_and_pooled(tmp_path):
    path = _synthetic_sweep(tmp_path / "sweep")
    report = write_report(path, str(tmp_path / "out"), ReportOptions(x="lr", y="width"))
    assert (report.x, report.y) == ("lr", "width")
    assert Path(report.files["phase_diagram"]).stat().st_size > 1000
    summary = Path(report.files["summary"]).read_text()
    assert "x = `lr`, y = `width`" in summary and "Fixed: none" in summary
    fixed = write_report(path, str(tmp_path / "out2"), ReportOptions(y="batch_size", fixed={"lr": "0.1"}))
    assert (fixed.x, fixed.y) == ("width", "batch_size")
    assert "Fixed: lr = 0.1" in Path(fixed.files["summary"]).read_text()
    assert len(fixed.cells) == 2
    pooled = write_report(path, str(tmp_path / "out3"), ReportOptions(x="width", y="batch_size"))
    assert "Pooled within each cell (models of all their values averaged together): lr (0.1, 0.5)" in \
        Path(pooled.files["summary"]).read_text()
    with pytest.raises(ConfigError, match="must differ"):
        write_report(path, str(tmp_path / "out4"), ReportOptions(x="lr", y="lr"))
    with pytest.raises(ConfigError, match="needs two axes"):  # lr fixed: only width varies
        write_report(path, str(tmp_path / "out5"), ReportOptions(fixed={"lr": "0.1"}))
