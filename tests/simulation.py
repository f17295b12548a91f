"""A sweep's life under faults, simulated: small specs, drawn orders, kills and damage.

Each feature of the driver is tested alone elsewhere; what goes wrong is where features
meet (a pack resumed after its values were given in another order, a model trained again
while its measures survive: issue 22). `simulate` runs one `Case` to the end in this
process (`--in-process`) and checks what must hold whatever happened to it:

1. after interruptions alone, the records equal those of one uninterrupted run of the
   same spec (`reference`), bit for bit on every column but `run_dependent` ones: on
   the CPU an in-process run is deterministic and resumes exactly, packs included;
2. after damage, every derived record names the weights on disk (lineage): a measure's
   `weights_id` is its model's trials row's, which is the hash of `final.pt`; a pair's
   and a curve's likewise. A record computed from the reference's very weights must
   still equal the reference's record (a model trained again may get other weights,
   and then everything derived from it follows);
3. always, after every run: no record is shown twice, `analysis.status` counts what the
   record files hold, readers show no derived record of weights that are gone (and
   none raises), and a run that reports nothing failed has recorded every model,
   measure and pair of the grid, current. At the end a rerun does nothing: a finished
   sweep is a fixed point, whose `checkpoints/` holds each model's init and final only.

Faults have SIGKILL semantics without a second process: `Storage`'s mutations (write,
delete, quarantine) are counted and the drawn one dies (`Kill`): nothing of it happens,
half its bytes reach its temporary file, or it completes; then `SimulatedKill`, a
`BaseException` that no `except Exception` of the code under test catches, unwinds the
run, and every later mutation dies too, as a dead process writes nothing. The driver's
lock is released on the way out by its context manager, as the OS releases a killed
process's lock. Damage (`Damage`) is outside harm between runs: bytes flipped or cut in
a record, a checkpoint or a consolidated table, a `final.pt` or a trials record deleted.

Every seam it found is fixed and kept as a reproduction in test_simulation.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from analysis import load_sweep
from analysis.load import Sweep
from analysis.status import format_status, table_status
from sweeps.run.driver import RunOptions, run
from sweeps.run.spec import SweepSpec
from workers.base import checkpoints
from workers.base.checkpoints import weights_id
from workers.core.lineage import verify_checkpoints
from workers.core.records import CURVES, FAILURES, HISTORY, MEASURES, PAIRS, TRIALS
from workers.core.storage import Storage

# The `tiny` trial of tests/conftest.py at width 1: two epochs with a checkpoint after
# the first, so a kill can land before, inside and after a resumable epoch.
BASE: dict[str, Any] = {"dataset": "digits", "model": "resnet18k", "batch_size": 128, "epochs": 2,
                        "milestones": [1], "checkpoint_every": 1}
# The cheapest settings that still run every code path (Lanczos, Bezier fit, CKA).
CHEAP_HESSIAN = {"hessian.n_samples": 64, "hessian.max_iter": 10, "hessian.trace_probes": 0}
CHEAP_PAIRS = {"pairs.bezier_epochs": 1, "pairs.bezier_points": 3, "pairs.cka_samples": 64}
RECORD_TABLES = (TRIALS, HISTORY, MEASURES, CURVES, PAIRS, FAILURES)
NAME = "s"  # every folder's sweep name: the `sweep` column of every row

# Columns that say when, where, by which process or after which fault a row was
# written, not what was computed: two runs of one spec differ in them by design, and
# only they are left out of the bit-for-bit comparison (plus every wall-clock time,
# `is_time_column`). The other provenance columns (device, library versions, schema)
# are the same within this process and are compared.
RUN_DEPENDENT = frozenset({
    "host", "node_id", "pid",  # which process wrote the row (workers.core.records.provenance)
    "written_at",  # when, to the second
    "code_version",  # the git commit, "-dirty" whenever anyone edits the tree between runs
    "resumed_from_epoch",  # trials: the epoch a killed run resumed from; 0 uninterrupted (workers.jobs.trial)
    "curve_reused",  # pairs: a killed pair job's Bezier curve was taken back, not refitted (workers.jobs.pair_trial)
})


def is_time_column(name: str) -> bool:
    """Wall-clock seconds: time_train_s, time_eval_s, time_total_s (trials, pairs),
    epoch_time_s (history), <metric>_time_s (measures), time_<pair metric>_s (pairs)."""
    return name.startswith("time_") or name.endswith("_time_s")


# After damage, also: why a model trained alone. A model trained again by the job that
# found its weights lost (a seed pair's) says so (workers.jobs.pair_trial), where its own job
# said why it was not packed; its weights are the same if it trained alone both times.
REPAIR_DEPENDENT = ("unpacked_reason",)


def run_dependent(name: str) -> bool:
    return name in RUN_DEPENDENT or is_time_column(name)


class SimulatedKill(BaseException):
    """The process died here (SIGKILL): not an Exception, so no handler of the code under
    test sees it, as none sees a real kill."""


# ---------------------------------------------------------------- what a case is


@dataclass(frozen=True)
class Kill:
    """The `at`-th storage mutation of a run (1-based; progress files are not counted:
    the clock decides when they are written) dies; with `path` (and `verb`: "write",
    "delete" or "quarantine"), the `at`-th such mutation of a file whose path contains
    it (a reproduction that names its moment, e.g. "after the 2nd trials row written",
    survives changes to the order of other writes). `mode`:
    "before" (nothing of it happens), "partial" (half its bytes in its temporary file,
    as a write cut short leaves it) or "after" (it completed, nothing after it did)."""

    at: int
    mode: str = "before"
    path: str = ""
    verb: str = ""


DAMAGE_KINDS = ("garble_record", "truncate_record", "misname_column", "delete_trials", "delete_final",
                "garble_checkpoint", "truncate_checkpoint", "rot_checkpoint", "garble_table")


@dataclass(frozen=True)
class Damage:
    """Outside harm to one file between runs: `kind` (DAMAGE_KINDS) picks the candidate
    files (with `path`, those whose path contains it), `pick` one of them (modulo their
    number, in name order), `where` the place in it as a fraction of its length (flip 8
    bytes there, or cut it there; `misname_column` garbles a column name in the footer
    of a record instead; `rot_checkpoint` flips bytes of a checkpoint and keeps its
    mtime, as bit rot does, which only a read finds: the case ends with the scrub)."""

    kind: str
    pick: int = 0
    where: float = 0.5
    path: str = ""


@dataclass(frozen=True)
class Step:
    """One run of the driver, killed by `kill` (None: it runs to its end), then `damage`;
    with `reverse`, this run gives every axis's values and the keys in the reverse order
    (a rerun typed differently must resume the same work)."""

    kill: Kill | None = None
    damage: tuple[Damage, ...] = ()
    reverse: bool = False


@dataclass(frozen=True)
class Case:
    """A spec, the order its values are given in, and what happens to its runs. `values`
    holds (key, value) in the order given; an axis's value is a tuple in the order given
    (the planner must make the records independent of both orders)."""

    values: tuple[tuple[str, Any], ...]
    pack: str = "off"
    steps: tuple[Step, ...] = ()

    def spec(self, storage: Path | str, reverse: bool = False) -> SweepSpec:
        """The spec as given, or with every axis and the keys in the reverse order."""
        given = self.values[::-1] if reverse else self.values
        values = {k: (list(v[::-1]) if reverse else list(v)) if isinstance(v, tuple) else v for k, v in given}
        return SweepSpec("taxonomy", "demo", NAME, str(storage), {**BASE, **values})

    def canonical(self) -> Case:
        """The same spec with every axis sorted and the keys in name order, no faults:
        what the reference run uses."""
        values = tuple(sorted((k, tuple(sorted(v)) if isinstance(v, tuple) else v) for k, v in self.values))
        return Case(values, self.pack)

    @property
    def damaged(self) -> bool:
        return any(step.damage for step in self.steps)

    def expected(self) -> dict[str, int]:
        """Records the grid calls for: models, measures, seed pairs."""
        values = dict(self.values)
        models = math.prod(len(v) for v in values.values() if isinstance(v, tuple))
        seeds = len(values["seed"]) if isinstance(values["seed"], tuple) else 1
        pairs = models // seeds * math.comb(seeds, 2) if values.get("measure_pairs") else 0
        metrics = [m for m in values.get("metrics", "").split(",") if m]  # as `--set metrics=a,b` spells it
        return {TRIALS: models, MEASURES: models * len(metrics), PAIRS: pairs}


def trial_keys(case: Case) -> dict[Any, str]:
    """Seed -> trial key of each model of a one-cell case: reproductions name files by key."""
    return {cfg.train.seed: cfg.trial_key for cfg in case.spec("unused").trials()}


def make_values(seeds: tuple[int, ...], lrs: tuple[float, ...] = (0.05,), noise: tuple[float, ...] = (0.0,),
                width: int = 1, metrics: bool = False, pairs: bool = False,
                order: tuple[str, ...] = ("seed", "lr", "label_noise")) -> tuple[tuple[str, Any], ...]:
    """Case values from axes given in this order (a one-value axis becomes a scalar, as
    `--set lr=0.05` does), keys in `order` first."""
    def axis(values: tuple) -> Any:
        return values if len(values) > 1 else values[0]

    given = {"seed": axis(seeds), "lr": axis(lrs), "label_noise": axis(noise)}
    options = {"width": width, "metrics": "hessian" if metrics else "", "measure_pairs": pairs,
               **(CHEAP_HESSIAN if metrics else {}), **(CHEAP_PAIRS if pairs else {})}
    return tuple((k, given[k]) for k in order) + tuple(options.items())


# ---------------------------------------------------------------- faults


@dataclass
class Faults:
    """Counts the storage mutations of one run and kills it at `kill` (class docstring
    of `Kill`); installed over `Storage`'s methods while the run lasts."""

    kill: Kill | None
    count: int = 0  # mutations so far
    matching: int = 0  # of them, those of a path containing `kill.path`
    fired: str = ""  # what died, once it has

    def mutation(self, verb: str, relpath: str, perform: Callable[[], None], partial: Callable[[], None]) -> None:
        if self.fired:  # a dead process writes nothing more
            raise SimulatedKill(f"already dead ({self.fired})")
        if relpath.startswith("_progress/"):
            perform()
            return
        self.count += 1
        chosen = self.kill is not None and self.kill.path in relpath and self.kill.verb in ("", verb)
        self.matching += chosen
        if not chosen or self.matching != self.kill.at:
            perform()
            return
        self.fired = f"mutation {self.count} ({self.kill.mode}): {verb} {relpath}"
        if self.kill.mode == "after":
            perform()
        elif self.kill.mode == "partial":
            partial()
        raise SimulatedKill(self.fired)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Faults]:
        write, delete, quarantine = Storage.write_bytes, Storage.delete, Storage.quarantine

        def write_bytes(storage: Storage, relpath: str, data: bytes) -> None:
            self.mutation("write", relpath, lambda: write(storage, relpath, data),
                          lambda: _cut_short(storage, relpath, data))

        def delete_file(storage: Storage, relpath: str) -> None:
            if storage.exists(relpath):  # a delete of nothing changes nothing: not a mutation
                self.mutation("delete", relpath, lambda: delete(storage, relpath), lambda: None)

        def quarantine_file(storage: Storage, relpath: str) -> None:
            self.mutation("quarantine", relpath, lambda: quarantine(storage, relpath), lambda: None)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Storage, "write_bytes", write_bytes)
            patch.setattr(Storage, "delete", delete_file)
            patch.setattr(Storage, "quarantine", quarantine_file)
            yield self


def _cut_short(storage: Storage, relpath: str, data: bytes) -> None:
    """What a write killed midway leaves on a local disk: its temporary file, half full
    (`Storage.write_bytes` renames only a whole one into place)."""
    folder, name = storage.path(relpath).rsplit("/", 1)
    os.makedirs(folder, exist_ok=True)
    Path(f"{folder}/.{name}.{uuid.uuid4().hex}.tmp").write_bytes(data[: len(data) // 2])


def damage_candidates(folder: Path, kind: str) -> list[Path]:
    """The files `kind` may hit, in name order (hidden temporary files are not records)."""
    records = [p for t in (TRIALS, HISTORY, MEASURES, CURVES, PAIRS) for p in (folder / t).glob("*.parquet")]
    patterns = {
        "garble_record": records, "truncate_record": records, "misname_column": records,
        "delete_trials": list((folder / TRIALS).glob("*.parquet")),
        "delete_final": list(folder.glob("checkpoints/*/final.pt")),
        "garble_checkpoint": list(folder.glob("checkpoints/*/*")),  # a pack's members file too
        "truncate_checkpoint": list(folder.glob("checkpoints/*/*")),
        "rot_checkpoint": list(folder.glob("checkpoints/*/*.pt")),
        "garble_table": list(folder.glob("tables/*.parquet")),
    }
    return sorted(p for p in patterns[kind] if not p.name.startswith("."))


def apply_damage(folder: Path, damage: Damage) -> tuple[str, str] | None:
    """Harm one file; returns its path in the folder and what was done (None if there
    was no file to harm)."""
    files = [f for f in damage_candidates(folder, damage.kind) if damage.path in str(f.relative_to(folder))]
    if not files:
        return None
    target = files[damage.pick % len(files)]
    relpath = str(target.relative_to(folder))
    if damage.kind.startswith("delete"):
        target.unlink()
        return relpath, f"deleted {relpath}"
    data = bytearray(target.read_bytes())
    if damage.kind == "misname_column":  # the footer, which no page checksum covers
        footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
        at = data.index(b"sweep", footer)  # the first column's name in the footer's schema
        data[at + 1] = 0x90  # not a UTF-8 start byte
        target.write_bytes(bytes(data))
        return relpath, f"made the name of column 'sweep' in {relpath}'s footer invalid UTF-8"
    at = min(int(damage.where * len(data)), max(0, len(data) - 8))
    if damage.kind.startswith("truncate"):
        target.write_bytes(bytes(data[:at]))
        return relpath, f"cut {relpath} to {at} of {len(data)} bytes"
    for i in range(at, min(at + 8, len(data))):
        data[i] ^= 0xFF
    stamp = target.stat()
    target.write_bytes(bytes(data))
    if damage.kind == "rot_checkpoint":  # bit rot: the size and mtime stay
        os.utime(target, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        return relpath, f"flipped 8 bytes of {relpath} at {at} of {len(data)}, its mtime kept"
    return relpath, f"flipped 8 bytes of {relpath} at {at} of {len(data)}"


# ---------------------------------------------------------------- what a folder holds


@dataclass
class Snapshot:
    """The record files of a sweep folder as written (the source of truth, read without
    the project's readers) and the weights each checkpoint holds."""

    records: dict[str, dict[str, list[dict[str, Any]]]]  # table -> record name -> rows
    unreadable: list[str]  # record files that cannot be read (relpaths)
    checkpoints: dict[str, str]  # relpath -> weights_id of its "model", or "unreadable"

    def weights(self) -> dict[str, str]:
        """Trial key -> the weights_id its trials row names."""
        return {rows[0]["trial_key"]: rows[0].get("weights_id", "") for rows in self.records[TRIALS].values()}


def snapshot(folder: Path, with_checkpoints: bool = False) -> Snapshot:
    """What `folder` holds; the checkpoints' weights only if asked (loading them costs
    most of a snapshot, and only the final checks need them)."""
    records: dict[str, dict[str, list[dict[str, Any]]]] = {}
    unreadable = []
    for table in RECORD_TABLES:
        records[table] = {}
        for path in sorted((folder / table).glob("*.parquet")):
            if path.name.startswith("."):
                continue
            try:
                rows = pq.read_table(path, page_checksum_verification=True).to_pylist()
            except Exception:  # damage shows as many kinds (an undecodable column name too)
                unreadable.append(f"{table}/{path.name}")
                continue
            records[table][path.name[: -len(".parquet")]] = rows
    held = {str(p.relative_to(folder)): _checkpoint_weights(folder, p) if with_checkpoints else ""
            for p in sorted(folder.glob("checkpoints/*/*.pt"))}
    return Snapshot(records, unreadable, held)


def _checkpoint_weights(folder: Path, path: Path) -> str:
    """The weights id of a checkpoint's "model", or "unreadable" when it fails its
    checksum or cannot be loaded (`workers.base.checkpoints.load`)."""
    owner, name = path.parent.name, path.stem
    try:
        return weights_id(checkpoints.load(Storage.open(str(folder)), owner, name)["model"])
    except Exception:  # any damage: torch raises many kinds, and none of them is a weights id
        return "unreadable"


def canonical(value: Any) -> Any:
    """A value compared bit for bit: floats by their exact hex form (NaN equals NaN)."""
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, canonical(v)) for k, v in value.items()))
    return value


def row_differences(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """The columns (not run-dependent) where two rows differ, with both values."""
    columns = sorted({*expected, *got})
    return [f"{c}: {expected.get(c, '<absent>')!r} != {got.get(c, '<absent>')!r}" for c in columns
            if not run_dependent(c) and canonical(expected.get(c)) != canonical(got.get(c))]


# ---------------------------------------------------------------- invariants


def differences_from_reference(reference: Snapshot, got: Snapshot, same_weights_only: bool) -> list[str]:
    """Invariant 1 (and the part of 2 about values): the records that differ from the
    uninterrupted run's. With `same_weights_only` (after damage) a model trained again
    by another job (alone instead of in its pack, or in another pack) may have other
    weights, and then it and what was derived from it are not compared; but a model
    trained by the same job as in the reference must have its weights (a run is
    deterministic), and every record must exist."""
    problems = []
    comparable = _comparable(reference, got) if same_weights_only else None
    for table in RECORD_TABLES:
        want, have = reference.records[table], got.records[table]
        for name in sorted(set(want) ^ set(have)):
            problems.append(f"{table}/{name}: {'missing' if name in want else 'not in the uninterrupted run'}")
        for name in sorted(set(want) & set(have)):
            if comparable is None or comparable(table, want[name][0], have[name][0]):
                problems += _record_differences(f"{table}/{name}", want[name], have[name],
                                                ignore=REPAIR_DEPENDENT if same_weights_only else ())
    return problems


def _record_differences(label: str, want: list[dict[str, Any]], have: list[dict[str, Any]],
                        ignore: tuple[str, ...] = ()) -> list[str]:
    """The first row of a record that differs (a curve has hundreds), or its row count."""
    if len(want) != len(have):
        return [f"{label}: {len(have)} rows, uninterrupted {len(want)}"]
    for i, (a, b) in enumerate(zip(want, have)):
        diff = [d for d in row_differences(a, b) if d.split(":", 1)[0] not in ignore]
        if diff:
            more = f"; ... {len(diff) - 6} more" if len(diff) > 6 else ""
            return [f"{label} row {i}: " + "; ".join(diff[:6]) + more]
    return []


def _comparable(reference: Snapshot, got: Snapshot) -> Callable[[str, dict, dict], bool]:
    """Whether a record of a damaged case must equal the reference's: a model's trials
    row and history when the same job trained it (same pack id; "" for a solo trial),
    whose run is deterministic; a derived record when it names the weights the
    reference's names. (A model trained again by another job may end with the same
    weights, but its packing columns then rightly say otherwise.)"""
    def jobs(shot: Snapshot) -> dict[str, str]:
        return {rows[0]["trial_key"]: rows[0].get("pack_id", "") for rows in shot.records[TRIALS].values()}

    before, now = jobs(reference), jobs(got)

    def comparable(table: str, want: dict[str, Any], have: dict[str, Any]) -> bool:
        if table in (TRIALS, HISTORY):
            return before.get(have["trial_key"], "?") == now.get(have["trial_key"], "!")
        ids = [c for c in ("weights_id", "weights_id_a", "weights_id_b") if c in have]
        return all(want.get(c) == have.get(c) for c in ids)

    return comparable


def packing_violations(shot: Snapshot) -> list[str]:
    """Every trials row says how its model trained (README, packed training): a member
    of a pack names the pack and its size, a solo trial why it trained alone."""
    problems = []
    for rows in shot.records[TRIALS].values():
        row = rows[0]
        packed = row["pack_size"] > 1
        if packed != bool(row["pack_id"]) or packed == bool(row["unpacked_reason"]):
            problems.append(f"trials/{row['trial_key']}: pack_size {row['pack_size']}, pack_id {row['pack_id']!r}, "
                            f"unpacked_reason {row['unpacked_reason']!r}")
    return problems


def init_violations(reference: Snapshot, got: Snapshot) -> list[str]:
    """Every model's `init.pt` holds the reference's initial weights: they follow from
    the seed alone, however often the model was trained (and interpolation reads them)."""
    return [f"{path} holds {got.checkpoints.get(path, 'missing')}, the uninterrupted run's {held}"
            for path, held in reference.checkpoints.items()
            if path.endswith("/init.pt") and got.checkpoints.get(path) != held]


def lineage_violations(shot: Snapshot) -> list[str]:
    """Invariant 2 on the record files of a finished sweep: every derived row names its
    model's current weights, and an ok model's `final.pt` holds them."""
    problems = []
    for rows in shot.records[TRIALS].values():
        row = rows[0]
        final = f"checkpoints/{row['trial_key']}/final.pt"
        held = shot.checkpoints.get(final, "missing")
        if row["status"] == "ok" and held != row["weights_id"]:
            problems.append(f"trials/{row['trial_key']}: weights_id {row['weights_id']} but {final} is {held}")
    weights = shot.weights()
    for table in (MEASURES, CURVES, PAIRS):
        for name, rows in shot.records[table].items():
            stale = next(filter(None, (_stale_model(row, weights) for row in rows)), "")
            if stale:
                problems.append(f"{table}/{name}: {stale}")
    return problems


def _models_of(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(trial key, weights id) of each model a derived row was computed from: a pair's
    two (`_a`, `_b`; a pair's curve rows hold NaN in `trial_key` when read as one
    frame), any other row's one."""
    sides = ("_a", "_b") if isinstance(row.get("trial_key_a"), str) and row["trial_key_a"] else ("",)
    return [(row[f"trial_key{side}"], row.get(f"weights_id{side}", "")) for side in sides]


def _stale_model(row: dict[str, Any], weights: dict[str, str]) -> str:
    """How a derived row names other weights than its model's trials row ("" if not)."""
    for key, named in _models_of(row):
        if weights.get(key) != named:
            return f"computed from weights {named} of model {key}, whose trials row names " + \
                   weights.get(key, "<no trials row>")
    return ""


def current(shot: Snapshot, table: str) -> list[str]:
    """The names of `table`'s records that describe their models' current weights."""
    weights = shot.weights()
    return sorted(name for name, rows in shot.records[table].items() if not _stale_model(rows[0], weights))


def reader_violations(folder: Path, case: Case, shot: Snapshot) -> list[str]:
    """Invariant 3 (and readers' half of 2) at any point of a case: `load_sweep` shows
    each record once and no derived row of weights that are gone, and `status` counts
    what the record files (`shot`) hold."""
    if not (folder / "spec.json").exists():
        return []  # killed before the spec was written: nothing to read yet
    try:
        sweep = load_sweep(str(folder))
        format_status(sweep)  # `python -m analysis status` prints without an error
        _ = sweep.history, sweep.curves  # the long tables are read on first use
    except Exception as exc:  # a reader that fails on a damaged file is a violation
        return [f"a reader raised {type(exc).__name__}: {exc}"]
    return _shown_twice(sweep) + _shown_stale(sweep, shot.weights()) + _miscounted(sweep, case, shot)


def _shown_twice(sweep: Sweep) -> list[str]:
    problems = []
    for table, frame, key in ((TRIALS, sweep.trials, ["trial_key"]), (PAIRS, sweep.pairs, ["pair_key"]),
                              (MEASURES, sweep.measures, ["trial_key", "metric"])):
        twice = frame.duplicated(key, keep=False) if not frame.empty else []
        if any(twice):
            problems.append(f"load_sweep shows {table} twice: {frame.loc[twice, key].values.tolist()}")
    return problems


def _shown_stale(sweep: Sweep, weights: dict[str, str]) -> list[str]:
    problems = []
    for table, frame in ((MEASURES, sweep.measures), (PAIRS, sweep.pairs), (CURVES, sweep.curves)):
        stale = next(filter(None, (_stale_model(row, weights) for row in frame.to_dict("records"))), "")
        if stale:
            problems.append(f"load_sweep shows a {table} row {stale}")
    return problems


def _miscounted(sweep: Sweep, case: Case, shot: Snapshot) -> list[str]:
    """`analysis.status` against the grid and the record files: expected, done and
    diverged as the records say, nothing failed (a kill files no failure)."""
    def by_status(table: str, names: list[str]) -> tuple[int, int]:
        statuses = [shot.records[table][name][0].get("status") or "ok" for name in names]
        return statuses.count("ok"), statuses.count("diverged")

    held = {TRIALS: by_status(TRIALS, list(shot.records[TRIALS])),
            MEASURES: by_status(MEASURES, current(shot, MEASURES)), PAIRS: by_status(PAIRS, current(shot, PAIRS))}
    expected = case.expected()
    problems = []
    for status in table_status(sweep):
        want = (expected[status.table], *held[status.table], 0)
        got = (status.expected, status.done, status.diverged, status.failed)
        if got != want:
            problems.append(f"status {status.table}: expected/done/diverged/failed {got}, records hold {want}")
    return problems


def completion_violations(folder: Path, case: Case, shot: Snapshot) -> list[str]:
    """A finished case: every record of the grid there and readable, nothing left of
    the runs (progress files, resume checkpoints) and DuckDB reading the record files
    (as the README invites) sees the rows `load_sweep` shows."""
    problems = [f"unreadable record left: {p}" for p in shot.unreadable]
    for table, n in case.expected().items():
        if len(shot.records[table]) != n:
            problems.append(f"{table}: {len(shot.records[table])} records, the grid calls for {n}")
    if shot.records[FAILURES]:
        problems.append(f"failures filed: {sorted(shot.records[FAILURES])}")
    problems += [f"left in checkpoints/: {p}" for p in _leftovers(folder, shot)]
    if (folder / "_progress").exists() and any((folder / "_progress").rglob("*.json")):
        problems.append("progress files left in _progress/")
    problems += _duckdb_differences(folder, shot)
    return problems


def _leftovers(folder: Path, shot: Snapshot) -> list[str]:
    """Files under `checkpoints/` of a finished sweep other than each model's `init.pt`
    and (trained to the end) `final.pt`: resume checkpoints, a pack's members file
    (temporary files of writes cut short are hidden and not counted)."""
    kept = set()
    for rows in shot.records[TRIALS].values():
        key = rows[0]["trial_key"]
        kept |= {f"checkpoints/{key}/init.pt"} | ({f"checkpoints/{key}/final.pt"} if rows[0]["status"] == "ok" else set())
    files = (str(p.relative_to(folder)) for p in (folder / "checkpoints").rglob("*") if p.is_file())
    return sorted(f for f in files if f not in kept and not Path(f).name.startswith("."))


def _duckdb_differences(folder: Path, shot: Snapshot) -> list[str]:
    import duckdb

    problems = []
    for table, key in ((TRIALS, "trial_key"), (MEASURES, "trial_key"), (PAIRS, "pair_key")):
        if not shot.records[table]:
            continue
        query = f"SELECT {key} FROM read_parquet('{folder / table}/*.parquet', union_by_name=true)"
        seen = sorted(row[0] for row in duckdb.sql(query).fetchall())
        held = sorted(rows[0][key] for rows in shot.records[table].values())
        if seen != held:
            problems.append(f"DuckDB reads {table} {seen}, the records hold {held}")
    return problems


# ---------------------------------------------------------------- running a case


@dataclass
class Reference:
    """One uninterrupted run of a spec (values sorted, keys in name order)."""

    shot: Snapshot
    mutations: int  # storage mutations it made: the range kills are drawn from
    spec_id: str


@dataclass
class Ran:
    """One run of the driver: its faults (what died, how many mutations), its summary
    (None if it was killed or raised) and what it raised that is not a kill ("")."""

    faults: Faults
    summary: Any = None
    error: str = ""


def run_spec(case: Case, folder: Path, kill: Kill | None, reverse: bool = False) -> Ran:
    """One run of the driver on `folder` (its parent is the storage), killed at `kill`,
    the values given as in `case` or `reverse`d. Any other exception is a result too
    (a damaged file the driver cannot get past is a violation, not a harness crash)."""
    spec = case.spec(folder.parent, reverse)
    with Faults(kill).installed() as faults:
        try:
            return Ran(faults, run(spec, spec.trials(), RunOptions(in_process=True, pack=case.pack), log=lambda line: None))
        except SimulatedKill:
            return Ran(faults)
        except Exception as exc:  # every other way a run ends is reported
            return Ran(faults, error=f"{type(exc).__name__}: {exc}")


def reference(case: Case, root: Path, cache: dict[Case, Reference]) -> Reference:
    """The uninterrupted run of `case`'s spec, computed once per spec in `cache`."""
    key = case.canonical()
    if key not in cache:
        folder = root / f"reference-{len(cache)}" / NAME
        ran = run_spec(key, folder, None)
        assert ran.summary is not None and not ran.summary.failed, f"the uninterrupted run failed: {ran}"
        cache[key] = Reference(snapshot(folder, with_checkpoints=True), ran.faults.count, _spec_id(folder))
    return cache[key]


def _spec_id(folder: Path) -> str:
    return json.loads((folder / "spec.json").read_text())["spec_id"]


@dataclass
class Outcome:
    """What happened to a case and what it broke."""

    case: Case
    kills: list[str] = field(default_factory=list)  # each mutation that died
    damage: list[str] = field(default_factory=list)  # each harm done
    runs: int = 0
    violations: list[str] = field(default_factory=list)
    split: set[str] = field(default_factory=set)  # keys of packs a kill left partly recorded (`split_packs`)
    final: Snapshot | None = None  # what the folder held at the end

    def report(self) -> str:
        lines = [f"case: {self.case!r}", f"runs: {self.runs}", *(f"kill: {k}" for k in self.kills),
                 *(f"damage: {d}" for d in self.damage), *(f"VIOLATION: {v}" for v in self.violations)]
        return "\n".join(lines)


MAX_CLEAN_RUNS = 3  # reruns without faults allowed to finish a case


def simulate(case: Case, root: Path, cache: dict[Case, Reference]) -> Outcome:
    """Run `case` in a fresh folder under `root`: its steps, then clean reruns until one
    records everything, then one more that must find nothing to do; the invariants are
    checked after every run and at the end."""
    ref = reference(case, root, cache)
    folder = root / f"case-{uuid.uuid4().hex[:8]}" / NAME
    out = Outcome(case)
    for step in case.steps:
        _run_and_check(case, folder, step.kill, out, step.reverse)
        out.split |= split_packs(folder, ref)
        for harm in step.damage:
            done = apply_damage(folder, harm)
            if done:
                out.damage.append(done[1])
        out.violations += [f"after damage: {v}" for v in reader_violations(folder, case, snapshot(folder))]
    _rerun_until_done(case, folder, out)
    if any(harm.kind == "rot_checkpoint" for step in case.steps for harm in step.damage):
        verify_checkpoints(Storage.open(str(folder)))  # the scrub finds what no run read
        _rerun_until_done(case, folder, out)
    out.final = snapshot(folder, with_checkpoints=True)
    out.violations += _final_violations(case, folder, ref, out.final)
    return out


def _rerun_until_done(case: Case, folder: Path, out: Outcome) -> None:
    for _ in range(MAX_CLEAN_RUNS):
        if _run_and_check(case, folder, None, out).failed == 0:
            return
    out.violations.append(f"not done after {MAX_CLEAN_RUNS} clean reruns")


@dataclass
class Checked:
    """A run's summary (None if it was killed) and the violations seen after it."""

    summary: Any
    violations: list[str]

    @property
    def failed(self) -> int:
        return -1 if self.summary is None else self.summary.failed


def _run_and_check(case: Case, folder: Path, kill: Kill | None, out: Outcome, reverse: bool = False) -> Checked:
    ran = run_spec(case, folder, kill, reverse)
    out.runs += 1
    if ran.faults.fired:
        out.kills.append(ran.faults.fired)
    shot = snapshot(folder)
    found = [f"run {out.runs} raised {ran.error}"] if ran.error else []
    found += reader_violations(folder, case, shot)
    if ran.summary is not None and ran.summary.failed == 0:
        found += [f"run {out.runs} reported nothing failed, but {gap}" for gap in owed(case, shot)]
    out.violations += found
    return Checked(ran.summary, found)


def owed(case: Case, shot: Snapshot) -> list[str]:
    """What the grid still lacks: a table with fewer current records than it calls for
    (a run that reports nothing failed exits 0, and must have recorded everything)."""
    held = {TRIALS: len(shot.records[TRIALS]), MEASURES: len(current(shot, MEASURES)),
            PAIRS: len(current(shot, PAIRS))}
    return [f"{table}: {held[table]} of {n} recorded and current" for table, n in case.expected().items()
            if held[table] < n]


def split_packs(folder: Path, ref: Reference) -> set[str]:
    """The packs of the uninterrupted run that `folder` holds partly recorded (some
    members have a trials record, some not), by every key of theirs: pack id, members'
    trial keys, their cells. Such a pack must be resumed as that pack (issue 22)."""
    packs: dict[str, list[dict[str, Any]]] = {}
    for rows in ref.shot.records[TRIALS].values():
        if rows[0]["pack_id"]:
            packs.setdefault(rows[0]["pack_id"], []).append(rows[0])
    keys = set()
    for pack, members in packs.items():
        recorded = sum((folder / TRIALS / f"{m['trial_key']}.parquet").exists() for m in members)
        if 0 < recorded < len(members):
            keys |= {pack, *(m["trial_key"] for m in members), *(m["cell_key"] for m in members)}
    return keys


def _final_violations(case: Case, folder: Path, ref: Reference, shot: Snapshot) -> list[str]:
    """The finished folder (`shot`) against the grid, lineage and the reference; then a
    rerun must do nothing and change no record (a finished sweep is a fixed point)."""
    problems = completion_violations(folder, case, shot) + lineage_violations(shot) + packing_violations(shot)
    problems += init_violations(ref.shot, shot)
    problems += differences_from_reference(ref.shot, shot, same_weights_only=case.damaged)
    if _spec_id(folder) != ref.spec_id:
        problems.append(f"spec id {_spec_id(folder)} != {ref.spec_id} of the same spec given in name order")
    again = run_spec(case, folder, None)
    if again.summary is None or again.summary.ran or again.summary.failed:
        problems.append(f"a rerun of the finished sweep did work: {again.summary or again.error}")
    problems += [f"a rerun changed {p}" for p in differences_from_reference(shot, snapshot(folder), False)]
    return problems
