"""The plan of a sweep run: from the grid and the records a folder holds, the jobs to run.

One pure function, `plan_run`, decides what a run does, for the Tune executor and the
in-process one alike (`sweeps.run.execute`), at the start and each time a refined sweep
grows: the models still owed (untrained, or missing a metric), the seed pairs owed,
how the untrained models are cut into packs, and the jobs (a pack measures the pairs of
its own cells right after training). Nothing here reads storage, starts or imports
Ray, or touches a device (the configs come from `workers.catalog`, which does import
torch for its plug-ins), and nothing depends on the order the grid was given in: the configs are put in grid order first
(`grid_order`), so `--set seed=2,1,0` plans exactly what `--set seed=0,1,2` does, and a
pack's members are named by key (`workers.jobs.pack_job`).

The spec's record keys (`spec_records`) are every record the grid calls for, and the
spec id is their hash: it covers everything that decides a key, defaults included, so a
changed code default (a metric's sample count) is a new spec and readers see the new
records (`analysis.lens`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweeps.run.pairs import PairPlan, plan_pairs
from sweeps.run.spec import AXIS_ORDER
from workers.core.records import MEASURES, PAIRS, TRIALS, measure_key, pending
from workers.packing.policy import PackPlan

if TYPE_CHECKING:
    from workers.core.config import TrialConfig


@dataclass(frozen=True)
class Job:
    """One unit of work for an executor: train a model or a pack, or measure a pair."""

    key: str  # trial_key, pack id or pair_key
    config: dict[str, Any]  # what the job function (`workers.jobs.tune_entry.run_job`) receives
    needs: tuple[str, ...] = ()  # trial keys that must be finished first
    trains: tuple[str, ...] = ()  # trial keys it trains (a pack's members); () : just `key`

    @property
    def trained(self) -> tuple[str, ...]:
        """The trial keys that exist once this job has finished (none for a pair)."""
        return () if self.needs else (self.trains or (self.key,))


# More jobs for a refined sweep, and the trial keys of models they need that exist already.
Extend = Callable[[], tuple[list[Job], set[str]]]
# Cuts the models to train into packs and solo trials: `workers.packing.policy.plan_packs`
# with the run's `--pack` policy, given by the caller.
Packer = Callable[[list["TrialConfig"]], list["PackPlan"]]


@dataclass(frozen=True)
class Holdings:
    """The names of the done-records a sweep folder holds (`workers.core.records`)."""

    trained: frozenset[str]
    measured: frozenset[str]
    paired: frozenset[str]
    resumable: tuple[tuple[str, ...], ...] = ()  # the members of each pack a kill left to resume

    @classmethod
    def listed(cls, list_names: Callable[[str], Iterable[str]],
               resumable: tuple[tuple[str, ...], ...] = ()) -> Holdings:
        """From a listing function (`lambda table: storage.list_names(table, ".parquet")`)
        and the packs to resume (`workers.core.lineage.resumable_packs`)."""
        return cls(*(frozenset(list_names(table)) for table in (TRIALS, MEASURES, PAIRS)), resumable)


@dataclass(frozen=True)
class Plan:
    """What one run (or one round of a refined sweep) owes and how it runs it."""

    todo: tuple[TrialConfig, ...]  # models to train or measure, in grid order
    pairs: tuple[PairPlan, ...]  # seed pairs to measure
    packs: tuple[PackPlan, ...]  # the training jobs of `todo`
    jobs: tuple[Job, ...]

    @property
    def owed(self) -> int:
        """Models and pairs this plan records."""
        return len(self.todo) + len(self.pairs)

    @property
    def packed(self) -> int:
        """Models that train in a pack of two or more."""
        return sum(len(p.members) for p in self.packs if len(p.members) > 1)


def _sortable(value: Any) -> tuple[int, Any]:
    """Values of one key compare in grid order: numbers by value, anything else as text."""
    if isinstance(value, (bool, str)) or value is None:
        return (1, str(value))
    if isinstance(value, (int, float)):
        return (0, value)
    return (2, json.dumps(value, sort_keys=True, default=str))


def grid_order(configs: Iterable[TrialConfig]) -> list[TrialConfig]:
    """The configs sorted by their values, keys in the order axes are shown (`width`,
    `batch_size`, ..., then the others by name, the seed last): the same list whatever
    order the grid's values were given in."""
    def position(cfg: TrialConfig) -> tuple:
        flat = cfg.to_flat()
        seed = flat.pop("seed")
        keys = sorted(flat, key=lambda k: (AXIS_ORDER.index(k), "") if k in AXIS_ORDER else (len(AXIS_ORDER), k))
        return (*(_sortable(flat[k]) for k in keys), seed)

    return sorted(configs, key=position)


def pending_trials(configs: Sequence[TrialConfig], held: Holdings) -> list[TrialConfig]:
    """The configs whose model is not trained or misses a metric."""
    return pending(list(configs), held.trained, held.measured)


def pending_pairs(configs: Sequence[TrialConfig], held: Holdings) -> list[PairPlan]:
    """The seed pairs of `configs` with no pairs record."""
    return [p for p in plan_pairs(list(configs)) if p.key not in held.paired]


def plan_run(configs: Sequence[TrialConfig], held: Holdings, packer: Packer, context: dict[str, Any]) -> Plan:
    """The plan for `configs` given the records `held`; `context` is the jobs' plain
    `RunContext` values (`dataclasses.asdict`)."""
    todo = grid_order(pending_trials(configs, held))
    pairs = sorted(pending_pairs(configs, held), key=lambda p: p.key)
    resumed = _resumed_packs(configs, todo, held)
    in_resumed = {c.trial_key for plan in resumed for c in plan.members}
    untrained = [c for c in todo if c.trial_key not in held.trained and c.trial_key not in in_resumed]
    # A trained model missing only a metric is measured by a solo job: it trains
    # nothing, so it gains nothing in a pack.
    measured_only = [PackPlan((c,), "trained already") for c in todo
                     if c.trial_key in held.trained and c.trial_key not in in_resumed]
    packs = [*measured_only, *resumed, *packer(untrained)]
    return Plan(tuple(todo), tuple(pairs), tuple(packs), tuple(plan_jobs(packs, pairs, context)))


def _resumed_packs(configs: Sequence[TrialConfig], todo: list[TrialConfig], held: Holdings) -> list[PackPlan]:
    """The packs a kill left partly recorded, as they were (all their members, the
    recorded ones included: the pack job resumes the whole pack from its checkpoint and
    records only the missing), when every member is in `configs` and one is owed.
    Cutting such a pack anew would train its members with other weights than the
    uninterrupted run."""
    by_key, owed = {c.trial_key: c for c in configs}, {c.trial_key for c in todo}
    return [PackPlan(tuple(by_key[k] for k in members)) for members in held.resumable
            if members and all(k in by_key for k in members) and any(k in owed and k not in held.trained
                                                                      for k in members)]


def plan_jobs(packs: Sequence[PackPlan], pairs: Sequence[PairPlan], context: dict[str, Any]) -> list[Job]:
    """Jobs: one per solo trial or pack, then the pairs no pack measures itself.

    A pack measures each seed pair of its cells right after training (same worker, no
    queueing) when the pair's other model is in the pack too or was trained before.
    """
    training = {c.trial_key for plan in packs for c in plan.members}
    jobs, folded = [], set()
    for plan in packs:
        if len(plan.members) == 1:
            cfg = plan.members[0]
            jobs.append(Job(cfg.trial_key, {"kind": "train", "trial": cfg.to_flat(), "context": context,
                                            "solo_reason": plan.solo_reason}))
            continue
        members = plan.members  # in grid order; the pack trains them in key order (workers.jobs.pack_job)
        keys = {c.trial_key for c in members}
        own = [p for p in pairs if _pack_measures(p, keys, training)]
        folded.update(p.key for p in own)
        jobs.append(Job(plan.key, {
            "kind": "pack", "members": [c.to_flat() for c in members], "context": context,
            "pairs": [{"a": p.a.to_flat(), "b": p.b.to_flat(), "with_mc": p.with_mc} for p in own],
        }, trains=tuple(sorted(keys))))
    jobs += [Job(p.key, {"kind": "pair", "a": p.a.to_flat(), "b": p.b.to_flat(), "with_mc": p.with_mc,
                         "context": context}, needs=(p.a.trial_key, p.b.trial_key))
             for p in pairs if p.key not in folded]
    return jobs


def _pack_measures(pair: PairPlan, pack: set[str], training: set[str]) -> bool:
    """Whether the pack training `pack` measures `pair`: one model of the pair is in it,
    and the other too or trained already (not training in this run)."""
    models = (pair.a.trial_key, pair.b.trial_key)
    return any(k in pack for k in models) and all(k in pack or k not in training for k in models)


def spec_records(grid: Sequence[TrialConfig]) -> dict[str, list[str]]:
    """The record key of every model, metric and pair the grid calls for, per table."""
    return {TRIALS: sorted(c.trial_key for c in grid),
            MEASURES: sorted(measure_key(c, m) for c in grid for m in c.measure.metrics),
            PAIRS: sorted(p.key for p in plan_pairs(list(grid)))}


def spec_id(records: dict[str, list[str]]) -> str:
    """Id of a spec: a hash of its record keys (`spec_records`)."""
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]
