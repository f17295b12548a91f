"""The Tune searcher that hands out training trials and starts each seed pair early.

A pair (two seeds of one grid cell) needs both trained models. Rather than waiting for
the whole training stage, the searcher offers a pair the moment its second model
finishes, ahead of any further training, so global metrics stream in with the sweep.

A refined sweep (`--refine`) does not know all its jobs up front: when the queue runs
dry and a job has finished since it last asked, the searcher asks `extend` for more (the
cells the records now call for, `sweeps.run.growth`), so the next round's cells start while
this round's last ones still train. It finishes when nothing runs and `extend` has
nothing more.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ray.tune.search import Searcher

from sweeps.run.plan import Extend, Job
from sweeps.watch.terminal import failed_for_good


class SweepSearcher(Searcher):
    """Suggests ready pairs first, then training trials; finishes when both run out
    (and, with `extend`, when it has nothing more either)."""

    def __init__(self, jobs: list[Job], finished: set[str], extend: Extend | None = None) -> None:
        super().__init__(metric=None, mode=None)
        self._finished: set[str] = set()  # trial keys whose models exist (any status)
        self._waiting: list[Job] = []
        self._train: deque[Job] = deque()
        self._ready: deque[Job] = deque()
        self._running: dict[str, Job] = {}
        self._extend = extend
        self._news = False  # a job finished since `extend` was last asked
        self.add(jobs, finished)

    def add(self, jobs: list[Job], finished: set[str]) -> None:
        """Queue more jobs; `finished`: trial keys of models that exist already."""
        self._finished.update(finished)
        self._waiting += [j for j in jobs if j.needs]
        self._train.extend(j for j in jobs if not j.needs)
        self._release()

    def _release(self) -> None:
        still = []
        for job in self._waiting:
            (self._ready if all(k in self._finished for k in job.needs) else still).append(job)
        self._waiting = still

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not (self._ready or self._train) and self._extend is not None and self._news:
            self._news = False
            self.add(*self._extend())
        queue = self._ready or self._train
        if queue:
            job = queue.popleft()
            self._running[trial_id] = job
            return job.config
        if self._running:
            return None  # pairs may still become ready as running trials finish
        return Searcher.FINISHED  # waiting pairs whose models never finished are dropped

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        job = self._running.pop(trial_id, None)
        self._news = True
        if job is not None and job.trained and not error and not failed_for_good(result or {}):
            self._finished.update(job.trained)
            self._release()

    def save(self, checkpoint_path: str) -> None:  # resume comes from the records instead
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass
