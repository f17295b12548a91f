"""`run_jobs` at small scale: a 50-job grid of placeholder work through real Tune, split
into several experiments, with every seed pair started only after both its models."""

from __future__ import annotations

import itertools
import time

from ray import tune

from sweeps.run.driver import RunOptions
from sweeps.run.execute import run_jobs, shard_jobs
from sweeps.run.plan import Job


def grid(cells: int, seeds: int) -> list[Job]:
    """`cells x seeds` training jobs (seed fastest) and every seed pair of each cell."""
    train = [Job(f"c{c}s{s}", {"kind": "train", "key": f"c{c}s{s}"}) for c in range(cells) for s in range(seeds)]
    pairs = [Job(f"c{c}s{a}-s{b}", {"kind": "pair", "key": f"c{c}s{a}-s{b}"}, needs=(f"c{c}s{a}", f"c{c}s{b}"))
             for c in range(cells) for a, b in itertools.combinations(range(seeds), 2)]
    return train + pairs


class Collect(tune.Callback):
    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.rows[trial.last_result["key"]] = trial.last_result


def test_shards_keep_pairs_with_their_models():
    jobs = grid(cells=5, seeds=4)
    shards = shard_jobs(jobs, size=6)
    assert sorted(j.key for s in shards for j in s) == sorted(j.key for j in jobs)
    assert [sum(not j.needs for j in s) for s in shards] == [8, 8, 4]  # cuts only between cells
    for shard in shards:
        trained_here = {j.key for j in shard if not j.needs}
        assert all(set(j.needs) <= trained_here for j in shard if j.needs)
    assert shard_jobs(jobs, size=1000) == [jobs]


def test_pairs_of_models_trained_earlier_go_first():
    train = [Job(f"t{i}", {}) for i in range(4)]
    old_pair = Job("p-old", {}, needs=("done0", "done1"))  # both models exist already
    half_pair = Job("p-half", {}, needs=("done0", "t3"))  # one exists, one trains now
    shards = shard_jobs([*train, old_pair, half_pair], size=2)
    assert [[j.key for j in s] for s in shards] == [["t0", "t1", "p-old"], ["t2", "t3", "p-half"]]


def test_fifty_jobs_in_three_experiments_pairs_after_models(ray_session, tmp_path):
    jobs = grid(cells=5, seeds=4)  # 20 models + 30 pairs
    assert len(jobs) == 50

    def stamp(config: dict) -> None:  # nested: Ray ships it by value (tests/ is not importable there)
        start = time.time()
        time.sleep(0.02)
        tune.report({"key": config["key"], "start": start, "end": time.time()})

    collect = Collect()
    failed = run_jobs(jobs, finished=set(), options=RunOptions(), tune_dir=str(tmp_path), name="fifty",
                      callbacks=[collect], trainable=stamp, shard_size=8)
    assert failed == 0
    assert len(list(tmp_path.iterdir())) == 3, "one Tune experiment per shard"
    assert set(collect.rows) == {j.key for j in jobs}, "every job ran exactly once"
    for job in jobs:
        for need in job.needs:
            assert collect.rows[job.key]["start"] >= collect.rows[need]["end"], f"{job.key} before {need}"
