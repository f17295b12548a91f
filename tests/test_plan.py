"""The planner is a pure function of the grid and the records: the same grid given in
any order or spelling gives the same plan, and a record held is work not planned."""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from sweeps.run.plan import Holdings, plan_run, spec_id, spec_records
from sweeps.run.spec import SweepSpec
from workers.core.records import measure_key
from workers.packing.policy import PackPolicy, plan_packs

CONTEXT = {"storage": "unused", "sweep": "t"}
BASE = {"dataset": "digits", "model": "resnet18k", "epochs": 2, "milestones": [1], "metrics": ["hessian"],
        "measure_pairs": True}
AXES = {"width": [1, 2, 4], "lr": [0.05, 0.1], "label_noise": [0.0, 0.2], "seed": [0, 1, 2]}
SPELLINGS = {("lr", 0.05): ["0.05", "5e-2", "0.050"], ("lr", 0.1): ["0.1", "1e-1"],
             ("label_noise", 0.0): ["0", "0.0"], ("label_noise", 0.2): ["0.2", "2e-1"]}
NOTHING = Holdings(frozenset(), frozenset(), frozenset())


def _plan(values: dict, held: Holdings = NOTHING, pack: str = "3"):
    configs = SweepSpec("taxonomy", "test", "t", "unused", {**BASE, **values}).trials()
    packer = functools.partial(plan_packs, policy=PackPolicy.parse(pack, "cpu"))
    return configs, plan_run(configs, held, packer, CONTEXT)


def _described(plan) -> list:
    """A plan as plain values: each job's key, kind, members' and pairs' configs."""
    return [(job.key, job.needs, job.trains, job.config) for job in plan.jobs]


@st.composite
def shuffled_grids(draw):
    """The same grid (a drawn subset of AXES) with its values in a drawn order and spelling."""
    grid = {key: draw(st.lists(st.sampled_from(values), min_size=1, max_size=len(values), unique=True))
            for key, values in AXES.items() if draw(st.booleans()) or key == "seed"}
    other = {key: [draw(st.sampled_from(SPELLINGS.get((key, v), [str(v)]))) for v in draw(st.permutations(values))]
             for key, values in grid.items()}
    return grid, other, draw(st.sampled_from(["off", "2", "3"]))


@settings(max_examples=30, deadline=None)
@given(shuffled_grids())
def test_the_same_grid_in_any_order_or_spelling_gives_the_same_plan(case):
    grid, other, pack = case
    configs, plan = _plan(grid, pack=pack)
    _, again = _plan({k: v if len(v) > 1 else v[0] for k, v in other.items()}, pack=pack)
    assert _described(plan) == _described(again)
    assert spec_id(spec_records(configs)) == spec_id(spec_records(_plan(other, pack=pack)[0]))


def test_what_the_records_hold_is_not_planned_again():
    configs, full = _plan({"width": [1, 2], "seed": [0, 1]}, pack="2")
    assert full.owed == 4 + 2 and full.packed == 4
    trained = frozenset(c.trial_key for c in configs)
    measured = frozenset(measure_key(c, "hessian") for c in configs[:3])
    paired = frozenset(p.key for p in full.pairs[:1])
    _, rest = _plan({"width": [1, 2], "seed": [0, 1]}, Holdings(trained, measured, paired), pack="2")
    assert [c.trial_key for c in rest.todo] == [configs[3].trial_key]  # missing only its Hessian
    assert [job.config["kind"] for job in rest.jobs] == ["train", "pair"]  # measured alone: nothing to train
    assert rest.jobs[0].config["solo_reason"] == "trained already"
    assert [p.key for p in rest.pairs] == [p.key for p in full.pairs[1:]]


def test_a_pack_measures_the_pairs_of_its_own_cells():
    _, plan = _plan({"seed": [0, 1, 2]}, pack="3")
    assert [job.config["kind"] for job in plan.jobs] == ["pack"]
    assert len(plan.jobs[0].config["pairs"]) == 3
