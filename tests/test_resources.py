"""GPU packing: each trial's GPU share follows its model size; small trials share a GPU.

The scheduling test runs in a subprocess with its own Ray that declares one logical GPU
(this machine has none; Ray schedules GPU shares the same way with or without one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sweeps.preflight.resources import AUTO, WHOLE_GPU, gpu_fraction, job_gpus
from sweeps.run.cli import main
from workers.base.models import MODELS


@pytest.mark.parametrize(("width", "share"), [(1, 0.25), (8, 0.25), (9, 0.5), (32, 0.5), (33, 1.0), (128, 1.0)])
def test_resnet_share_by_width(width, share):
    assert gpu_fraction("resnet18k", width) == share


def test_shares_never_shrink_as_width_grows():
    for model in MODELS.names():
        shares = [gpu_fraction(model, w) for w in range(1, 200)]
        assert shares == sorted(shares) and all(0 < s <= 1 for s in shares)


def test_unknown_model_gets_a_whole_gpu():
    assert gpu_fraction("vit-huge", 4) == WHOLE_GPU


def test_job_share_auto_and_override(tiny):
    small = {"kind": "train", "trial": {**tiny, "width": 4}}
    pair = {"kind": "pair", "a": {**tiny, "width": 64}, "b": {**tiny, "width": 64, "seed": 1}}
    assert job_gpus(small, AUTO) == 0.25
    assert job_gpus(pair, AUTO) == 1.0
    assert job_gpus(small, 0.5) == job_gpus(pair, 0.5) == 0.5  # a number overrides the table
    assert job_gpus(small, 0.0) == 0.0


def test_cli_accepts_auto(capsys):
    assert main("taxonomy", "", ["--gpus-per-trial", "auto", "--dry-run"]) == 0
    assert "GPU by model width (auto)" in capsys.readouterr().out


def test_cli_rejects_bad_gpu_value(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main("taxonomy", "", ["--gpus-per-trial", "lots", "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--gpus-per-trial" in err and "auto" in err


PACKING_SCRIPT = """
import json, os, time
import ray
from ray import tune
from sweeps.run.driver import RunOptions
from sweeps.run.execute import run_jobs
from sweeps.run.plan import Job

OUT = {out!r}

def probe(config):
    start = time.time()
    time.sleep(2.0)
    record = {{"width": config["trial"]["width"], "seed": config["trial"]["seed"], "start": start,
              "end": time.time(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
              "assigned": ray.get_runtime_context().get_assigned_resources()}}
    with open(os.path.join(OUT, f"{{record['width']}}-{{record['seed']}}.json"), "w") as f:
        json.dump(record, f)
    tune.report({{"status": "ok"}})

ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR")
trials = [(2, 0), (2, 1), (64, 0)]
jobs = [Job(f"w{{w}}s{{s}}", {{"kind": "train", "trial": {{"model": "resnet18k", "width": w, "seed": s}}}})
        for w, s in trials]
failed = run_jobs(jobs, finished=set(), options=RunOptions(gpus_per_trial="auto"),
                  tune_dir=os.path.join(OUT, "_tune"), name="packing", trainable=probe)
print("FAILED", failed)
"""


def test_small_trials_share_the_gpu_and_a_large_one_takes_it_whole(tmp_path):
    script = textwrap.dedent(PACKING_SCRIPT.format(out=str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and "FAILED 0" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    runs = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    small_a, small_b, large = runs["2-0"], runs["2-1"], runs["64-0"]

    assert small_a["assigned"]["GPU"] == small_b["assigned"]["GPU"] == 0.25
    assert large["assigned"]["GPU"] == 1.0
    assert small_a["gpu_ids"] == small_b["gpu_ids"] == large["gpu_ids"] == ["0"]

    def overlap(a, b):
        return max(a["start"], b["start"]) < min(a["end"], b["end"])

    assert overlap(small_a, small_b), "two small trials ran at once on the one GPU"
    assert not overlap(large, small_a) and not overlap(large, small_b), "the large trial ran alone"
