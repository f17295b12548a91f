"""`python bench/run.py --gpu` runs end to end in its CPU fallback, without Ray.

The GPU benchmark is run once, by hand, on a lent machine that has no Ray: this test is
what keeps its code working in between. CUDA is hidden from the child process, so the
fallback runs (and stays small) on any machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from numbers import Number
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs bench/run.py's command line, then fails if it imported Ray itself.
SCRIPT = ("import runpy, sys; sys.argv = ['bench/run.py', '--gpu', '--out', sys.argv[1]]; "
          "runpy.run_path('bench/run.py', run_name='__main__'); "
          "assert 'ray' not in sys.modules, 'bench/run.py imported ray'")


def numbers(figures: dict) -> list[float]:
    """Every number in a nested dict of figures (booleans are flags, not figures)."""
    found = []
    for value in figures.values():
        if isinstance(value, dict):
            found += numbers(value)
        elif isinstance(value, Number) and not isinstance(value, bool):
            found.append(value)
    return found


def errors(figures: dict, prefix: str = "") -> list[str]:
    """Every recorded failure or skip in a nested dict of figures."""
    found = []
    for key, value in figures.items():
        if isinstance(value, dict):
            found += errors(value, f"{prefix}{key}.")
        elif key in ("error", "skipped"):
            found.append(f"{prefix}{key}: {value}")
    return found


def test_gpu_bench_cpu_fallback(tmp_path):
    out = tmp_path / "results-gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["device"] == "cpu (fallback, no CUDA)"
    assert results["ray_imported"] is False
    for part in ("packing", "throughput", "hessian"):
        assert not errors(results[part]), (part, errors(results[part]), proc.stderr[-3000:])
    assert results["packing"]["w1_b16"]["ratio"] > 0
    for variant in ("fp32", "channels_last", "channels_last_bf16", "channels_last_bf16_compile"):
        cell = results["throughput"]["w2_b16"][variant]
        assert cell["ratio"] > 0 and cell["vs_fp32"] > 0
        assert cell["ran"]["ran_compiled"] is False and cell["ran"]["ran_channels_last"] is False  # CPU: plain
    assert results["throughput"]["w2_b16"]["channels_last_bf16"]["ran"]["ran_precision"] == "bf16"
    hessian = results["hessian"]["w2_n32"]
    assert hessian["hvps_ours"] > 0 and hessian["value_ours"] > 0
    assert hessian["hvps_pyhessian"] > 0 and hessian["wall_ratio"] > 0  # pyhessian is a test dependency
    assert all(number == number for number in numbers(results)), "a figure is NaN"
