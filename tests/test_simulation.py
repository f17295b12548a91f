"""The simulation of issue 22: small specs in drawn orders, runs killed at drawn writes
and damaged between runs, rerun until done; the invariants of `tests/simulation.py`
hold after every run and at the end.

The default run explores a few cases (about a minute on 2 busy CPUs: every case trains
real models, in process). A soak explores many more and prints one line of figures
(`python bench/reliability.py` runs a 12-minute soak and records them for the README's
Reliability table):

    LANDSCAPE_SOAK_EXAMPLES=200 .venv/bin/python -m pytest -q tests/test_simulation.py -k drawn

(`LANDSCAPE_SOAK=1` means 200; `LANDSCAPE_SOAK_SECONDS=900` stops drawing after 15
minutes.) Every case that breaks an invariant is printed in full: its `Case(...)` is a
deterministic reproduction; each seam it found is kept below as one, fixed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.simulation import (
    DAMAGE_KINDS,
    HISTORY,
    PAIRS,
    TRIALS,
    Case,
    Damage,
    Kill,
    Outcome,
    Reference,
    Snapshot,
    Step,
    differences_from_reference,
    make_values,
    reference,
    simulate,
    trial_keys,
)

SOAK = int(os.environ.get("LANDSCAPE_SOAK_EXAMPLES") or (200 if os.environ.get("LANDSCAPE_SOAK") else 0))
DRAWN = SOAK or 2  # cases drawn by the default run, after the fixed ones below
SOAK_SECONDS = float(os.environ.get("LANDSCAPE_SOAK_SECONDS") or "inf")  # then the soak draws no more
CHUNK = 10  # cases per hypothesis run of a soak: the clock is read between runs

# The axes' sizes a case may draw: (seeds, learning rates, label noises), at most 8
# models, so that a case costs seconds.
SHAPES = ((2, 1, 1), (3, 1, 1), (2, 2, 1), (2, 1, 2), (3, 2, 1), (3, 1, 2), (2, 2, 2))
SEEDS, LRS, NOISE = (0, 1, 2), (0.05, 0.1), (0.0, 0.2)
PACKS = ("off", "3", "auto")  # solo, packs of up to 3 (cells cut across packs), packs of up to 5


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict[Case, Reference]]:
    """Where cases run, and the uninterrupted run of each spec seen so far (shared by
    every test of this file: a reference costs as much as a case)."""
    return tmp_path_factory.mktemp("simulation"), {}


@st.composite
def specs(draw) -> Case:
    """A spec with its axes' values and its keys in a drawn order, packing, metrics and
    pairs drawn; no faults yet."""
    n_seeds, n_lrs, n_noise = draw(st.sampled_from(SHAPES))
    seeds = draw(st.permutations(SEEDS[:n_seeds]))
    lrs, noise = draw(st.permutations(LRS[:n_lrs])), draw(st.permutations(NOISE[:n_noise]))
    order = draw(st.permutations(("seed", "lr", "label_noise")))
    values = make_values(tuple(seeds), tuple(lrs), tuple(noise), width=draw(st.sampled_from((1, 2))),
                         metrics=draw(st.booleans()), pairs=draw(st.booleans()), order=tuple(order))
    return Case(values, draw(st.sampled_from(PACKS)))


@st.composite
def steps(draw, mutations: int) -> tuple[Step, ...]:
    """One to three runs: killed at a drawn storage mutation (of the `mutations` an
    uninterrupted run makes; a rerun makes fewer, so later kills come from the first
    half), damaged after it, or both, as the drawn kind of case says; each run gives the
    values in the case's order or the reverse."""
    kind = draw(st.sampled_from(("kills", "damage", "both")))
    harms = st.lists(st.builds(Damage, st.sampled_from(DAMAGE_KINDS), st.integers(0, 50), st.floats(0, 1)),
                     min_size=1, max_size=2).map(tuple)
    drawn = []
    for i in range(draw(st.integers(1, 3 if kind != "damage" else 2))):
        kill = Kill(draw(st.integers(1, mutations if i == 0 else max(1, mutations // 2))),
                    draw(st.sampled_from(("before", "partial", "after"))))
        reverse = draw(st.booleans())
        if kind == "kills":
            drawn.append(Step(kill, (), reverse))
        elif kind == "damage":
            drawn.append(Step(None, draw(harms), reverse))
        else:
            drawn.append(Step(draw(st.none() | st.just(kill)), draw(st.just(()) | harms), reverse))
    return tuple(drawn)


@dataclass
class Tally:
    """What a simulation explored and broke: the soak's summary line."""

    cases: int = 0
    kills: int = 0
    damage: int = 0
    checkpoints: int = 0  # of the damage: to checkpoints
    rot: int = 0  # of those: bit rot (mtime kept)
    broken: list[Outcome] = field(default_factory=list)  # cases with a violation

    def add(self, out: Outcome) -> None:
        self.cases += 1
        self.kills, self.damage = self.kills + len(out.kills), self.damage + len(out.damage)
        self.checkpoints += sum(".pt" in harm for harm in out.damage)
        self.rot += sum("mtime kept" in harm for harm in out.damage)
        if out.violations:
            self.broken.append(out)

    def figures(self) -> dict[str, int]:
        return {"cases": self.cases, "faults": self.kills + self.damage, "kills": self.kills, "damage": self.damage,
                "checkpoints": self.checkpoints, "rot": self.rot,
                "violations": sum(len(o.violations) for o in self.broken)}

    def line(self) -> str:
        return (f"simulation: {self.cases} cases explored, {self.kills + self.damage} faults injected "
                f"({self.kills} kills, {self.damage} damage), {sum(len(o.violations) for o in self.broken)} "
                f"violations (in {len(self.broken)} cases)")


def test_drawn_cases_keep_every_invariant(world, capsys, figures):
    root, cache = world
    tally = Tally()
    started = time.monotonic()
    stop = started + SOAK_SECONDS

    # The default run draws the same few cases every time (CI must be reproducible);
    # a soak draws fresh ones.
    @settings(max_examples=min(DRAWN, CHUNK), deadline=None, database=None, phases=[Phase.generate],
              derandomize=not SOAK,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def explore(data):
        spec = data.draw(specs(), label="spec")
        ref = reference(spec, root, cache)
        out = simulate(dataclasses.replace(spec, steps=data.draw(steps(ref.mutations), label="steps")), root, cache)
        tally.add(out)
        if SOAK:  # one line per case: what was done to it and what it broke
            with capsys.disabled():
                print(f"case {tally.cases}: {len(out.kills)} kills, {len(out.damage)} damage, {out.runs} runs, "
                      f"{len(out.violations)} violations", flush=True)
        if out.violations:
            with capsys.disabled():
                print(f"\n{out.report()}")
            assert SOAK, out.report()  # a soak goes on and counts; the default run stops here

    explore()
    while tally.cases < DRAWN and time.monotonic() < stop:  # a soak: more runs of new random cases
        explore()
    with capsys.disabled():
        print(f"\n{tally.line()}")
    assert not tally.broken, "\n\n".join(o.report() for o in tally.broken)
    minutes = (time.monotonic() - started) / 60
    if SOAK:
        figures("soak", "soak of {minutes:.0f} minutes: {cases} cases, {faults} faults ({kills} kills, {damage} "
                "damage, {checkpoints} of it to checkpoints, {rot} of those bit rot), {violations} violations",
                minutes=round(minutes, 1), **tally.figures())
    else:
        figures("simulation", "the default run: {cases} drawn cases, {faults} faults, {violations} violations, "
                "in {minutes:.1f} minutes", minutes=round(minutes, 2), **tally.figures())


# ---------------------------------------------------------------- fixed cases

SEEDS_REVERSED = make_values((2, 1, 0))
CELLS_GIVEN_BACKWARDS = make_values((1, 0), lrs=(0.1, 0.05), metrics=True, pairs=True,
                                    order=("label_noise", "lr", "seed"))

FIXED = {
    # A pack of 3 killed in its second epoch, its values given backwards; the rerun,
    # given them forwards (issue 22: it resumed members from each other's weights),
    # resumes from `last.pt` and is killed again mid-write of a record.
    "pack-killed-mid-training": Case(SEEDS_REVERSED, "3", (Step(Kill(1, "after", "last.pt")),
                                                           Step(Kill(2, "partial"), reverse=True))),
    # Two cells, Hessian and seed pairs, solo: a model's trials record deleted and its
    # final checkpoint garbled after the run, then the rerun killed while it writes the
    # model's new final checkpoint (stale measures, pairs and curves set aside first).
    "damaged-then-killed": Case(CELLS_GIVEN_BACKWARDS, "off", (
        Step(None, (Damage("delete_trials", 1), Damage("garble_checkpoint", 2, 0.6, "final.pt"))),
        Step(Kill(1, "partial", "final.pt")))),
}


@pytest.mark.parametrize("name", FIXED)
def test_fixed_cases_keep_every_invariant(world, name):
    out = simulate(FIXED[name], *world)
    assert out.kills and (out.damage or not FIXED[name].damaged), "the faults were injected"
    assert not out.violations, out.report()
    if name == "pack-killed-mid-training":  # every member resumed from the pack's epoch 1
        resumed = [rows[0]["resumed_from_epoch"] for rows in out.final.records[TRIALS].values()]
        assert resumed == [1, 1, 1], out.report()


# ---------------------------------------------------------------- the violations it found
# Each case below broke an invariant when the simulation found it (commits 17a9347,
# 41c72be, 57dc221) and was fixed since (5a733c4, 6163fa8, d2577c8); they stay as
# regressions, each naming its moment by path so that a change in the order of other
# writes keeps it. A case that no longer sets up its fault fails as such (`require`),
# so none can pass vacuously.


def require(condition: object, what: str) -> None:
    if not condition:
        pytest.fail(f"the reproduction no longer sets up its fault: {what}")


@pytest.fixture
def seam(figures):
    """Check a reproduction's outcome and count it as a seam the simulation found, all
    fixed, for the README's Reliability table."""

    def check(out: Outcome) -> None:
        assert not out.violations, out.report()
        figures("simulation", "it found {seams} seams, all fixed and kept as reproductions", seams=1)

    return check


def test_a_pack_killed_while_recording_its_members_ends_as_if_uninterrupted(world, seam):
    """Seeds 0, 1, 2 pack as one (--pack 3); the run dies right after the pack's second
    trials row. The rerun used to train the third member alone (other float32 weights
    and losses, a solo trials row) and leave the pack's `last.pt` for good."""
    case = Case(make_values((0, 1, 2)), "3", (Step(Kill(2, "after", f"{TRIALS}/")),))
    out = simulate(case, *world)
    require(out.kills and out.split, "the pack was left partly recorded")
    seam(out)


def test_a_pair_killed_after_its_curve_ends_as_if_uninterrupted(world, seam):
    """Seeds 0 and 1 and their pair, solo; the run dies just before the pairs row (its
    Bezier curve is written). The rerun takes the curve back (`curve_reused`) and used
    to record `bezier_objective` NaN where the uninterrupted run says 2.24."""
    case = Case(make_values((0, 1), pairs=True), "off", (Step(Kill(1, "before", f"{PAIRS}/")),))
    out = simulate(case, *world)
    require(out.kills, "the pair job was killed")
    seam(out)


def test_a_final_checkpoint_deleted_after_the_sweep_is_noticed(world, seam):
    """Seeds 0 and 1, solo: the sweep finishes, then one model's `final.pt` is deleted.
    The rerun used to find nothing to do, its trials row naming weights that exist
    nowhere; now the model is trained again (and its derived records follow)."""
    out = simulate(Case(make_values((0, 1)), "off", (Step(None, (Damage("delete_final"),)),)), *world)
    require(out.damage, "the checkpoint was deleted")
    seam(out)


def test_a_garbled_resume_checkpoint_is_not_resumed_from(world, seam):
    """Seeds 0 and 1, solo; the run dies right after model 0's `last.pt` (epoch 1 of 2)
    and 8 bytes in the middle of that file are flipped. `torch.load` reads it without
    an error, and the rerun used to resume from it: other weights, losses and history,
    recorded `ok`. Checkpoints now carry a checksum."""
    case = Case(make_values((0, 1)), "off",
                (Step(Kill(1, "after", "last.pt"), (Damage("garble_checkpoint", where=0.7, path="last.pt"),)),))
    out = simulate(case, *world)
    require(out.kills and out.damage, "the run was killed and its resume checkpoint garbled")
    seam(out)


def test_a_resume_checkpoint_does_not_outlive_its_model(world, seam):
    """Seeds 0 and 1, solo; the run dies right after model 0's trials row, before its
    `last.pt` is removed. The model is done, so no run ran its job again and the file
    used to stay for good (a pack's likewise)."""
    out = simulate(Case(make_values((0, 1)), "off", (Step(Kill(1, "after", f"{TRIALS}/")),)), *world)
    require(out.kills, "the run was killed after a trials row")
    seam(out)


def test_a_model_trained_again_by_a_pair_job_says_why_it_trained_alone(world, seam):
    """Seeds 0 and 1 and their pair, solo; the run dies just before the pairs row, and
    model 0's `final.pt` is garbled. The rerun's pair job finds the checksum wrong and
    trains model 0 again; its trials row used to say it trained alone (pack_size 1, no
    pack id) without a reason (fixed in 6163fa8; `packing_violations`)."""
    case = Case(make_values((0, 1), pairs=True), "off",
                (Step(Kill(1, "before", f"{PAIRS}/"), (Damage("garble_checkpoint", path="final.pt"),)),))
    out = simulate(case, *world)
    require(out.kills and out.damage, "the pair job was killed and a final checkpoint garbled")
    seam(out)


def test_a_kill_while_setting_aside_a_damaged_history_loses_nothing(world, seam):
    """Seeds 0 and 1, solo: the sweep finishes, model 0's history record is cut in half,
    and the rerun dies as it sets the damage aside. `quarantine_damaged` moves the
    done-record (the trials row) first and the damaged history second, so a kill between
    the two leaves a state the next run repairs (it once moved the history first, and a
    kill then kept a done model without its history for good)."""
    case = Case(make_values((0, 1)), "off", (Step(None, (Damage("truncate_record", path=f"{HISTORY}/"),)),
                                             Step(Kill(1, "before", f"{TRIALS}/"))))
    out = simulate(case, *world)
    require(out.kills and out.damage, "the rerun died setting the damaged history aside")
    seam(out)


# ---------------------------------------------------------------- seams the simulation found
# Each failed before its fix (issue 22); the drawn cases and the soak run into them too.


def test_a_final_checkpoint_rewritten_after_the_sweep_is_noticed(world, seam, figures):
    """Seeds 0 and 1, solo: the sweep finishes, then 8 bytes in the middle of one
    model's `final.pt` are flipped (the file stays, its checksum fails). The rerun once
    listed the checkpoints, found every file there and did nothing: the model's records
    named weights no file held. Now a checkpoint written after its model's record is
    read at start-up, found damaged and set aside with the model's records, and the
    model is trained again (solo, on one code path: the same weights, so its measures
    stay current)."""
    case = Case(make_values((0, 1)), "off", (Step(None, (Damage("garble_checkpoint", path="final.pt"),)),))
    out = simulate(case, *world)
    require(out.damage, "the checkpoint was garbled")
    seam(out)
    figures("checkpoint-rots", "in the simulation, a garbled `final.pt`: its model trained again to the same "
            "weights, every record equal to an uninterrupted run's bit for bit, after {reruns} rerun",
            reruns=out.runs - 1)


def test_a_record_with_an_undecodable_column_name_is_set_aside(world, seam):
    """Seeds 0 and 1, solo: the sweep finishes, then one byte of a column's name in a
    history record's footer (which no page checksum covers) becomes 0x90. Opening the
    file raises UnicodeDecodeError where pyarrow decodes the names; `open_parquet` turns
    that into damage like any other, so the record is set aside and recomputed (it once
    stopped every rerun at start-up; the soak found it with random 8-byte flips)."""
    case = Case(make_values((0, 1)), "off", (Step(None, (Damage("misname_column", path=f"{HISTORY}/"),)),))
    out = simulate(case, *world)
    require(out.damage, "a column name was garbled")
    seam(out)


def test_a_run_that_trains_a_model_again_mid_run_measures_what_that_left_stale(world, seam, figures):
    """Seeds 0, 1, 2 in one pack (--pack 3) with their three pairs. After the sweep,
    seed 2's trials record is deleted and seed 0's `final.pt` rots (bytes flipped, mtime
    kept: start-up cannot see it). The rerun trains seed 2 again and measures pairs
    (0, 2) and (1, 2); the first finds seed 0's checksum wrong and trains it again,
    alone: other weights. Pair (0, 1), measured before the run, then describes weights
    that are gone; the run once reported 0 failed (exit 0) with it missing. Now the
    driver settles again after the jobs and measures it in a second pass."""
    case = Case(make_values((0, 1, 2), pairs=True), "3")
    keys = trial_keys(case)
    case = dataclasses.replace(case, steps=(Step(None, (Damage("delete_trials", path=keys[2]),
                                                        Damage("rot_checkpoint", path=f"{keys[0]}/final.pt"))),))
    out = simulate(case, *world)
    require(len(out.damage) == 2, "a trials record was deleted and a final checkpoint rotted")
    seam(out)
    assert out.runs == 3, out.report()  # the sweep, one rerun that said nothing failed, the run after the scrub
    figures("checkpoint-rots", "a rotted `final.pt` read by a pair job: the pair that left stale measured in a "
            "second pass of the same run, which reported nothing failed with all {pairs} pairs recorded and current",
            pairs=len(out.final.records[PAIRS]))


def test_a_damaged_init_checkpoint_does_not_fail_a_resumed_model(world, seam):
    """Seeds 0 and 1, solo, no metrics; the run dies right after model 0's `last.pt`,
    and model 0's `init.pt` is garbled. The rerun resumes model 0 from `last.pt` and
    once failed its job loading `init` after recording it, leaving the file damaged.
    Now a resumed model writes its `init` again from the seed when it is not intact."""
    case = Case(make_values((0, 1)), "off",
                (Step(Kill(1, "after", "last.pt"), (Damage("garble_checkpoint", path="init.pt"),)),))
    out = simulate(case, *world)
    require(out.kills and out.damage, "the run was killed and an initial checkpoint garbled")
    seam(out)


def test_a_pack_members_file_does_not_outlive_its_pack(world, seam):
    """Two cells of seeds 0 and 1, packs of up to 3: a pack per cell. The run dies right
    after the second pack's `members.json` (before its first `last.pt`), and a trials
    record of the first pack is deleted. The rerun packs the three untrained models
    together, so the second pack never runs again: its members file, with no `last.pt`
    to describe, is removed when the folder is settled."""
    case = Case(make_values((0, 1), lrs=(0.05, 0.1)), "3",
                (Step(Kill(2, "after", "members.json", "write"), (Damage("delete_trials"),)),))
    out = simulate(case, *world)
    require(out.kills and out.damage, "the run died after the second pack's members file")
    seam(out)


def test_rotted_checkpoints_are_found_by_the_scrub(world):
    """Seeds 0 and 1, solo: after the sweep both checkpoints of model 1 rot (mtime
    kept). No run reads them, so the case ends with the scrub (`analysis verify`),
    which sets them aside; the next run trains model 1 again, on the same code path: the
    same weights, so nothing derived from it changes."""
    keys = trial_keys(Case(make_values((0, 1))))
    case = Case(make_values((0, 1)), "off", (Step(None, (Damage("rot_checkpoint", path=f"{keys[1]}/final.pt"),
                                                          Damage("rot_checkpoint", path=f"{keys[1]}/init.pt"))),))
    out = simulate(case, *world)
    require(len(out.damage) == 2, "both checkpoints rotted")
    assert not out.violations, out.report()


def test_the_comparison_sees_one_bit_and_ignores_run_dependent_columns(world):
    """The bit-for-bit comparison is not vacuous: a loss one ulp off is a difference, a
    row written at another time by another process is not."""
    root, cache = world
    ref = reference(Case(make_values((0, 1))), root, cache)
    name, rows = sorted(ref.shot.records[TRIALS].items())[0]

    def with_row(**changes) -> Snapshot:
        trials = {**ref.shot.records[TRIALS], name: [{**rows[0], **changes}]}
        return dataclasses.replace(ref.shot, records={**ref.shot.records, TRIALS: trials})

    nudged = math.nextafter(rows[0]["train_loss"], math.inf)
    assert differences_from_reference(ref.shot, with_row(train_loss=nudged), same_weights_only=False) == [
        f"trials/{name} row 0: train_loss: {rows[0]['train_loss']!r} != {nudged!r}"]
    elsewhere = with_row(pid=-1, host="elsewhere", written_at="1970", time_total_s=1e9, resumed_from_epoch=1)
    assert differences_from_reference(ref.shot, elsewhere, same_weights_only=False) == []
