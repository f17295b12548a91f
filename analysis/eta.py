"""How far a sweep is and how long it has left: one arithmetic for the driver's progress
line (`sweeps.watch.terminal`) and `python -m analysis status`, so both say the same.

Work is counted in units, as the driver's per-job lines number them: a model to train
(and measure) or a seed pair to measure. A finished unit's cost is the worker-seconds
it took (a pack's time shared by its models and pairs), averaged per class (kind, width,
batch size): a width-128 model at batch 16 costs a thousand width-2 models at batch
1024, so one mean over the grid would be wrong by that much. A class not seen yet
takes the mean of its kind, then of everything. The ETA is the worker-seconds left
(pending units, and what running jobs have still to go) over the jobs running.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Shape = tuple[str, int, int]  # a unit's class: ("train" or "pair", width, batch size)


def shape(kind: str, values: Mapping[str, Any]) -> Shape:
    """The class of a unit of `kind` from its values (a flat config or a row)."""
    return kind, int(values.get("width", 0)), int(values.get("batch_size", 0))


class Durations:
    """Worker-seconds per unit seen so far, by class."""

    def __init__(self) -> None:
        self._total: dict[Shape, float] = defaultdict(float)
        self._count: dict[Shape, int] = defaultdict(int)

    def add(self, unit: Shape, seconds: float) -> None:
        self._total[unit] += seconds
        self._count[unit] += 1

    def estimate(self, unit: Shape) -> float | None:
        """Mean seconds of `unit`'s class, else of its kind, else of every unit; None
        before any unit finished."""
        for same in (lambda s: s == unit, lambda s: s[0] == unit[0], lambda s: True):
            count = sum(n for s, n in self._count.items() if same(s))
            if count:
                return sum(t for s, t in self._total.items() if same(s)) / count
        return None


def eta_seconds(durations: Durations, pending: Mapping[Shape, int],
                running: Iterable[tuple[list[Shape], float]], workers: int) -> float | None:
    """Seconds until the last unit ends: what the `pending` units (count by class) and
    the `running` jobs ((their units, seconds they have run)) still take, over `workers`
    jobs at a time; None while nothing has finished to learn from."""
    left = 0.0
    for unit, count in pending.items():
        estimate = durations.estimate(unit)
        if estimate is None:
            return None
        left += count * estimate
    for units, elapsed in running:
        estimates = [durations.estimate(u) for u in units]
        if None in estimates:
            return None
        left += max(0.0, sum(estimates) - elapsed)
    return left / max(1, workers)


def clock(seconds: float) -> str:
    """`45s`, `4m10s`, `2h05m`, `3d04h`."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


@dataclass(frozen=True)
class Progress:
    """Counts of units, the rate and the ETA, as one line."""

    done: int
    running: int
    pending: int | None  # None: not known (a refined sweep's driver decides as it goes)
    failed: int
    models_per_hour: float | None = None
    eta_s: float | None = None

    def line(self) -> str:
        """`10/24 done, 4 running, 9 pending, 1 failed | 41.3 models/h | ETA 3m20s`."""
        pending = "?" if self.pending is None else self.pending
        total = "?" if self.pending is None else self.done + self.running + self.pending + self.failed
        rate = "-" if self.models_per_hour is None else f"{self.models_per_hour:.3g}"
        eta = "-" if self.eta_s is None else ("0s" if not (self.running or self.pending) else clock(self.eta_s))
        return (f"{self.done}/{total} done, {self.running} running, {pending} pending, {self.failed} failed"
                f" | {rate} models/h | ETA {eta}")


def per_hour(count: int, seconds: float) -> float | None:
    """A rate per hour; None until a few seconds have passed (no rate from one sample)."""
    return count * 3600.0 / seconds if seconds >= 1.0 and count else None
