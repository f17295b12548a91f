"""The report's web page at the paper's size and at 10,000 models: file size, load time.

    python bench/report_page.py [--quick]

The paper's grid is the published metrics of Yang et al. 2021 (`analysis.yang2021`:
14 widths x 15 batch sizes x 5 seeds, 210 cells, 1,050 models, 2,100 seed pairs, a
Bezier curve per cell), plus what a sweep of ours also records and the archive lacks:
per model a 100-epoch training history and its interpolation paths (full path on 21
points and six stages on 5, train and test), synthetic but of a real sweep's shape.
The large case is that grid under ten values of a third axis (`label_noise`, a
selector on the page: 11 diagrams): 10,500 models, 2,100 cells, 21,000 pairs.

For each: `write_report` (seconds), the size of `index.html`, and in headless Chromium
(Debian's `chromium` with `chromedriver`, as tests/test_report_page.py) the load time
from navigation to the drawn diagram, from disk: the first load in a fresh browser
(cold: plotly.js compiled) and the median of two more (warm: Chromium's code cache), and
the time to open the middle cell's panel (its curve blocks parsed, its four plots drawn;
in the large case a pooled cell of 50 models). `--quick` runs the paper's size only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import record

ARCHIVE = Path(__file__).resolve().parent.parent / "tests" / "data" / "yang2021_results.tar.gz"
COPIES = 10  # the large case: the paper's grid under this many label_noise values
EPOCHS, POINTS, STAGE_POINTS = 100, 21, 5
STAGES = ("stem", "stages.0", "stages.1", "stages.2", "stages.3", "head")
LOADS = 3  # the first cold, the others warm


def _curves(trials, rng: np.random.Generator) -> tuple[Any, Any]:
    """A training history and interpolation curves for every model of `trials` (pyarrow)."""
    import pyarrow as pa

    keys, cells = trials.column("trial_key").to_pylist(), trials.column("cell_key").to_pylist()
    n = len(keys)
    epochs = np.arange(1, EPOCHS + 1)
    loss = np.exp(-epochs[None, :] / rng.uniform(5, 40, (n, 1))) * 2.3 + rng.uniform(0.001, 0.05, (n, 1))
    history = pa.table({"trial_key": np.repeat(keys, EPOCHS), "cell_key": np.repeat(cells, EPOCHS),
                        "epoch": np.tile(epochs, n), "train_loss": loss.ravel(),
                        "train_acc": (1 - loss / 2.5).ravel()})
    rows: dict[str, list] = {k: [] for k in ("trial_key", "cell_key", "kind", "group", "split", "t", "loss")}
    for kind, group, points in [("interp_full", "all", POINTS)] + [("interp_group", g, STAGE_POINTS) for g in STAGES]:
        t = np.linspace(0, 1, points)
        for split in ("train", "test"):
            bump = rng.uniform(0, 1, (n, 1))
            curve = 2.3 * (1 - t[None, :]) + bump * np.sin(np.pi * t[None, :]) + 0.05
            rows["trial_key"] += np.repeat(keys, points).tolist()
            rows["cell_key"] += np.repeat(cells, points).tolist()
            rows["kind"] += [kind] * (n * points)
            rows["group"] += [group] * (n * points)
            rows["split"] += [split] * (n * points)
            rows["t"] += np.tile(t, n).tolist()
            rows["loss"] += curve.ravel().tolist()
    return history, pa.table(rows)


def _suffixed(table, suffix: str, label_noise: float):
    """`table` with its keys made unique to one copy and that copy's label_noise."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for column in ("trial_key", "cell_key", "pair_key", "trial_key_a", "trial_key_b"):
        if column in table.column_names:
            i = table.column_names.index(column)
            table = table.set_column(i, column, pc.binary_join_element_wise(table.column(column), suffix, ""))
    i = table.column_names.index("label_noise")
    return table.set_column(i, "label_noise", pa.array([label_noise] * table.num_rows, pa.float64()))


def build(folder: Path, copies: int) -> str:
    """The published grid (`copies` > 1: under that many label_noise values) with
    histories and interpolation curves; returns the sweep folder."""
    import pyarrow.parquet as pq

    from analysis.yang2021 import import_archive
    from workers.core.storage import Storage

    source, sweep = folder / "published", folder / f"x{copies}"
    import_archive(str(ARCHIVE), str(source))
    storage = Storage.open(str(sweep))
    rng = np.random.default_rng(0)
    tables = {t: pq.read_table(sorted((source / t).glob("*.parquet"))) for t in ("trials", "pairs", "curves")}
    noise = [round(0.05 * i, 2) for i in range(copies)]
    for i, value in enumerate(noise):
        parts = {t: _suffixed(data, f"-n{i}" if copies > 1 else "", value) for t, data in tables.items()}
        history, interpolation = _curves(parts["trials"], rng)
        for table, data in (("trials", parts["trials"]), ("pairs", parts["pairs"]), ("curves", parts["curves"]),
                            ("history", history), ("curves", interpolation)):
            storage.write_table(table, f"copy{i}-{table}-{data.num_rows}", data)
    spec = json.loads((source / "spec.json").read_text())
    if copies > 1:
        spec["values"]["label_noise"] = noise
    storage.write_bytes("spec.json", json.dumps(spec).encode())
    return str(sweep)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def load_ms(driver, page: Path) -> float:
    driver.get("about:blank")
    driver.get(page.resolve().as_uri())
    for _ in range(1200):
        loaded = driver.execute_script("return window.phasePage ? window.phasePage.loadedMs : null")
        if loaded:
            return float(loaded)
        time.sleep(0.05)
    raise RuntimeError(f"{page} did not load in a minute")


def panel_ms(driver) -> float:
    """Open the cell in the middle of the diagram (as a click does) and time it."""
    return float(driver.execute_script("""
        const c = currentView().cells, i = Math.floor(c.xi.length / 2), start = performance.now();
        openCell(i);
        return performance.now() - start;"""))


def measure(copies: int, folder: Path) -> dict[str, Any]:
    from analysis.report import ReportOptions, write_report

    path = build(folder, copies)
    start = time.perf_counter()
    report = write_report(path, str(folder / f"report-x{copies}"), ReportOptions())
    write_s = time.perf_counter() - start
    page = Path(report.files["page"])
    driver = browser()
    try:
        loads = [load_ms(driver, page) for _ in range(LOADS)]
        opened = panel_ms(driver)
    finally:
        driver.quit()
    return {"models": int(report.cells["models"].sum()), "cells": len(report.cells) * copies,
            "views": 1 if copies == 1 else copies + 1,
            "file_mb": round(page.stat().st_size / 1e6, 2), "write_report_s": round(write_s, 2),
            "load_ms_cold": round(loads[0]), "load_ms_warm": round(statistics.median(loads[1:])),
            "open_cell_ms": round(opened)}


def run(quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        figures = {"paper": measure(1, Path(tmp))}
        if not quick:
            figures["large"] = measure(COPIES, Path(tmp))
    paper = figures["paper"]
    headline = (f"report page: {paper['file_mb']} MB, loads in {paper['load_ms_cold'] / 1000:.1f} s at the paper's "
                f"grid ({paper['cells']} cells, {paper['models']:,} models)")
    if "large" in figures:
        large = figures["large"]
        headline += f"; {large['file_mb']} MB, {large['load_ms_cold'] / 1000:.1f} s at {large['models']:,} models"
    print(headline)
    return {"headline": headline, **figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the paper's size only")
    args = parser.parse_args(argv)
    print(json.dumps(record("report_page", run(args.quick), args.quick), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
