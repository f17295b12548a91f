"""The importer of the published metrics (analysis.yang2021) and its CLI, on the real archive."""

from __future__ import annotations

import io
import math
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from analysis import load_sweep
from analysis.__main__ import main
from analysis.yang2021 import ArchiveError, import_archive
from workers.core import safe_pickle

ARCHIVE = Path(__file__).resolve().parent / "data" / "yang2021_results.tar.gz"  # the published archive


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("yang2021")
    counts = import_archive(str(ARCHIVE), str(out))
    assert counts == {"cells": 210, "models": 1050, "pairs": 2100, "curve_points": 2100}
    return out


def test_importer_loads_all_210_cells_and_their_pairs(imported):
    sweep = load_sweep(str(imported))
    assert sweep.axes() == ["width", "batch_size"]
    trials, pairs, curves = sweep.trials, sweep.pairs, sweep.curves
    assert len(trials) == 1050 and trials["cell_key"].nunique() == 210
    assert trials.groupby(["width", "batch_size"]).size().eq(5).all()
    assert len(pairs) == 2100 and pairs.groupby("cell_key").size().eq(10).all()
    assert (pairs["seed_a"] < pairs["seed_b"]).all()
    with_curve = pairs[pairs["with_mc"]]
    assert len(with_curve) == 210 and set(zip(with_curve["seed_a"], with_curve["seed_b"])) == {(0, 1)}
    assert pairs.loc[~pairs["with_mc"], "mc"].isna().all()
    assert len(curves) == 2100 and set(curves["kind"]) == {"bezier"} and set(curves["t"]) == {0, 0.25, 0.5, 0.75, 1}

    # Values traced by hand from bs_128/lr_decay/ResNet18_w16/metrics/.
    cell = (trials["width"] == 16) & (trials["batch_size"] == 128)
    seed0 = trials[cell & (trials["seed"] == 0)].iloc[0]
    assert seed0["hessian_top_eigenvalue"] == pytest.approx(3.8018321990966797)
    assert seed0["hessian_trace"] == pytest.approx(53.51665540422712)
    assert seed0["train_acc"] == 1.0 and seed0["train_loss"] == pytest.approx(0.001992130540162325)
    pair01 = pairs[(pairs["width"] == 16) & (pairs["batch_size"] == 128) & (pairs["seed_b"] == 1)
                   & (pairs["seed_a"] == 0)].iloc[0]
    assert pair01["cka_softmax"] == pytest.approx((0.6395156 + 0.6514825) / 2, abs=1e-6)
    assert pair01["l2_distance"] == pytest.approx(39.096988677978516)
    assert pair01["mc"] == pytest.approx(-1.024)  # tr_err (0, .004, 1.024, .004, 0)

    assert trials.loc[trials["batch_size"].isin([19, 27]), "test_acc"].isna().all()  # no test file
    assert trials.loc[~trials["batch_size"].isin([19, 27]), "test_acc"].between(0.1, 1).all()
    assert pairs["cka_softmax"].isna().any()  # collapsed width-1 models: kept as missing
    assert pairs.loc[pairs["cka_softmax"].isna(), "width"].eq(1).all()


def test_report_on_the_imported_data(imported, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(imported), "--out", str(out)]) == 0
    names = sorted(os.listdir(out))
    assert "phase_diagram.png" in names and "summary.md" in names and "cells.csv" in names
    assert len([n for n in names if n.startswith("heatmap_")]) == 7
    summary = (out / "summary.md").read_text()
    assert "x = `width`, y = `batch_size`" in summary
    assert summary.count("\n| ") == (1 + 210) + (1 + 4)  # cells table and thresholds table, with headers
    printed = capsys.readouterr().out
    assert "IV-B" in printed and "III" in printed


CELL = "different_knobs_subset_10/bs_16/lr_decay/ResNet18_w1/metrics"


def _archive_with(tmp_path: Path, member: str, payload: bytes) -> Path:
    path = tmp_path / "crafted.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


class _RunsCode:
    """Unpickling this would call os.system: the classic malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_malicious_pickle_is_refused(tmp_path, capsys, figures):
    marker = tmp_path / "pwned"
    archive = _archive_with(tmp_path, f"{CELL}/loss_acc.pkl", pickle.dumps(_RunsCode(marker)))
    with pytest.raises(safe_pickle.UnsafePickleError, match=r"loss_acc\.pkl.*refusing to load (posix|os)\.system"):
        import_archive(str(archive), str(tmp_path / "out"))
    code = main(["import-yang2021", str(archive), "--out", str(tmp_path / "out")])
    assert code == 2 and "refusing to load" in capsys.readouterr().err
    assert not marker.exists()
    figures("untrusted", "a published-archive pickle calling `os.system` refused (exit {code}, not run)", code=code)


def test_plain_data_pickles_with_numpy_are_admitted():
    data = {0: {"top_eigenvalue": [np.float32(3.5)], "trace": np.float64(50.0)}, "a": np.arange(3)}
    loaded = safe_pickle.loads(pickle.dumps(data, protocol=3))
    assert loaded[0]["trace"] == 50.0 and loaded["a"].tolist() == [0, 1, 2]
    assert math.isclose(loaded[0]["top_eigenvalue"][0], 3.5)


def test_not_an_archive_is_a_clear_error(tmp_path, capsys):
    bogus = tmp_path / "results.tar.gz"
    bogus.write_bytes(b"not a tar file")
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        import_archive(str(bogus), str(tmp_path / "out"))
    empty = _archive_with(tmp_path, "results/README", b"hello")
    assert main(["import-yang2021", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert "no bs_*" in capsys.readouterr().err
