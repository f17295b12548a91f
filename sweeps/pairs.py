"""Which seed pairs a sweep measures: every unordered pair of seeds within a grid cell.

CKA and L2 are cheap and run on all pairs; mode connectivity trains a Bezier curve,
so only the first `pairs.mc_pairs` pairs of a cell (in seed order) get it.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

from workers.catalog import TrialConfig
from workers.records import pair_key


@dataclass(frozen=True)
class PairPlan:
    a: TrialConfig
    b: TrialConfig
    with_mc: bool

    @property
    def key(self) -> str:
        return pair_key(self.a, self.b, self.with_mc)


def plan_pairs(configs: list[TrialConfig]) -> list[PairPlan]:
    """All seed pairs of every cell whose configs ask for pair metrics."""
    cells: dict[str, list[TrialConfig]] = defaultdict(list)
    for cfg in configs:
        if cfg.measure.measure_pairs:
            cells[cfg.cell_key].append(cfg)
    plans = []
    for members in cells.values():
        members.sort(key=lambda c: c.train.seed)
        for i, (a, b) in enumerate(itertools.combinations(members, 2)):
            plans.append(PairPlan(a, b, with_mc=i < a.pairs.mc_pairs))
    return plans
