"""Stale records: those derived from weights a model no longer has.

A measure, a seed pair and their curves name the weights they were computed from
(`workers.core.records`, lineage). When a model is trained again (its trials record was
damaged, its final checkpoint lost), its new weights differ, and so does its
`weights_id`: everything computed from the old weights no longer describes the model
its keys name. Before a run plans, `set_aside_stale` settles the folder:

1. a model recorded `ok` whose `final.pt` or `init.pt` is gone, or was written again
   after its trials record and no longer holds the bytes it was saved with (checked
   without loading: `workers.core.seal.intact`), has lost its weights: its checkpoint and
   its trials and history records go to `_quarantine/`, so it is trained again;
2. a resume checkpoint (`last.pt`) that outlived its model (a kill after the model was
   recorded) is deleted; a pack's once every member is recorded, and a pack's members
   file without its `last.pt` (a kill before the first one; the next start writes it
   again);
3. every measure and pair not computed from its models' current weights (or whose
   model has no trials record) goes to `_quarantine/` with its curves, so the run
   recomputes it exactly as if it had never been written.

Step 1 reads only the checkpoints whose mtime is later than their model's trials
record, which a sweep never writes (a model's checkpoints come before its record), and
remembers those found intact (a folder copied without its mtimes) in
`checkpoints/.intact.json`, so each is read once. Damage that keeps the mtime (bit
rot) is found by the scrub, `verify_checkpoints` (`python -m analysis verify`).

Readers leave stale records out the same way (`analysis.load`). `resumable_packs` tells
the planner which killed packs to resume as they were. Imports neither torch nor Ray.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from workers.core.records import (
    CHECKPOINTS,
    CURVES,
    HISTORY,
    MEASURES,
    PACK_MEMBERS,
    PAIR_WEIGHTS_IDS,
    PAIRS,
    TRIALS,
    WEIGHTS_ID,
    checkpoint_path,
    pack_members_path,
    record_path,
)
from workers.core.seal import intact
from workers.core.storage import FileStamp, Storage
from workers.core.tables import Listings, TableRead, read_table, read_threads

PACK_PREFIX = "pack-"  # checkpoint folders of packs (`workers.packing.policy.pack_id`)
# The columns lineage reads of the measures and pairs tables (rows hold a hundred).
LINEAGE_READ = ["trial_key", "trial_key_a", "trial_key_b", WEIGHTS_ID, *PAIR_WEIGHTS_IDS]


def _texts(table: pa.Table, name: str) -> pa.ChunkedArray:
    """A text column, "" where the record predates it (null or absent)."""
    if name not in table.column_names:
        return pa.chunked_array([pa.array([""] * table.num_rows, pa.string())])
    return table.column(name).cast(pa.string()).fill_null("")


def _column(table: pa.Table, name: str) -> list[str]:
    return _texts(table, name).to_pylist()


def model_weights(trials: pa.Table) -> dict[str, str]:
    """Trial key -> the `weights_id` of its trials row ("" for a row written before
    lineage), over every trials row of the folder: a model's current weights do not
    depend on which spec is read."""
    return dict(zip(_column(trials, "trial_key"), _column(trials, WEIGHTS_ID)))


def stale_names(read: TableRead, models: dict[str, str]) -> list[str]:
    """Names of the stale records of the measures or pairs table as read: a measure not
    computed from its model's current weights, a pair not from both models' (a model
    with no trials row has no current weights: `workers.core.records.is_current`, vectorised,
    as a start-up checks every record of a 10,000-model sweep)."""
    if not read.records:
        return []
    data = read.data
    sides = ([("trial_key", WEIGHTS_ID)] if read.table == MEASURES
             else [(f"trial_key_{side}", column) for side, column in zip("ab", PAIR_WEIGHTS_IDS)])
    keys, ids = pa.array(list(models), pa.string()), pa.array(list(models.values()), pa.string())
    stale = np.zeros(data.num_rows, dtype=bool)
    for key_column, weights_column in sides:
        current = pc.take(ids, pc.index_in(_texts(data, key_column), value_set=keys))  # null: no trials row
        same = pc.fill_null(pc.equal(current, _texts(data, weights_column)), False)
        stale |= ~same.to_numpy(zero_copy_only=False)
    return sorted(set(read.row_names()[stale]))


CheckpointFiles = dict[str, dict[str, FileStamp]]  # owner -> file name -> (size, mtime_ns)
KEPT = ("final.pt", "init.pt")  # the checkpoints a recorded model keeps
INTACT = f"{CHECKPOINTS}/.intact.json"  # relpath -> stamp of checkpoints read and found intact (step 1)


def checkpoint_files(storage: Storage) -> CheckpointFiles:
    """Owner (trial key or pack id) -> the files in its checkpoint folder with their
    stamps, from one recursive listing (temp files left out)."""
    root = storage.path(CHECKPOINTS).rstrip("/") + "/"
    files: CheckpointFiles = {}
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    for info in storage.fs.get_file_info(selector):
        owner, _, name = info.path[len(root):].partition("/")
        if name and not name.startswith(".") and info.is_file:
            files.setdefault(owner, {})[name] = (info.size, info.mtime_ns or 0)
    return files


def resumable_packs(storage: Storage, files: CheckpointFiles | None = None) -> tuple[tuple[str, ...], ...]:
    """The members (trial keys, in training order) of every pack a kill left with a
    `last.pt` and its members file: the planner resumes such a pack as it was."""
    files = checkpoint_files(storage) if files is None else files
    return tuple(tuple(_pack_members(storage, owner)) for owner, names in sorted(files.items())
                 if owner.startswith(PACK_PREFIX) and {"last.pt", PACK_MEMBERS} <= names.keys())


def _pack_members(storage: Storage, pack: str) -> list[str]:
    try:
        return [str(key) for key in json.loads(storage.read_bytes(pack_members_path(pack)))]
    except (OSError, ValueError, TypeError):
        return []  # unreadable: the pack cannot be resumed as it was; its members train anew


def forget_training(storage: Storage, key: str) -> None:
    """Move a model's `trials` and `history` records to `_quarantine/`: they describe
    weights that are lost, and the next run of the model writes them again (its
    measures go when it does, `forget_measures`)."""
    for table in (TRIALS, HISTORY):
        if storage.exists(record_path(table, key)):
            storage.quarantine(record_path(table, key))


def forget_measures(storage: Storage, key: str) -> None:
    """Move the measures (and their curves) of model `key` to `_quarantine/`, before its
    new trials row is written: with no trials row of their own they were computed from
    weights that are gone, and the new weights get measured afresh."""
    for table in (MEASURES, CURVES):
        for name in storage.list_names(table, ".parquet"):
            if name.startswith(key + ".") and name.count(".") == 1:  # `<trial_key>.<metric>-<hash>`
                storage.quarantine(record_path(table, name))


def set_aside_stale(storage: Storage, listings: Listings | None = None, files: CheckpointFiles | None = None) -> list[str]:
    """Settle the folder before a run plans (module docstring, steps 1-3); one line per
    record set aside, naming it and why. `listings` and `files`: the tables' and the
    checkpoints' listings, if the caller has them."""
    listings = listings or {}
    recorded = listings[TRIALS] if TRIALS in listings else storage.list_files(TRIALS, ".parquet")
    trials = read_table(storage, TRIALS, recorded, ["trial_key", "status", WEIGHTS_ID]).data
    files = checkpoint_files(storage) if files is None else files
    ok = [key for key, status in zip(_column(trials, "trial_key"), _column(trials, "status")) if status == "ok"]
    lost = _lost_weights(storage, ok, recorded, files)  # step 1
    for key in lost:
        forget_training(storage, key)
    models = model_weights(trials)
    for key in lost:
        del models[key]
    _drop_finished_resumes(storage, set(models), files)
    return [f"warning: model {key} is recorded as trained but {why}; its records moved to _quarantine/, "
            "training it again" for key, why in lost.items()] + _quarantine_stale(storage, models, listings)


def _lost_weights(storage: Storage, ok: list[str], recorded: dict[str, FileStamp],
                  files: CheckpointFiles) -> dict[str, str]:
    """Step 1: trial key -> why, for each model recorded `ok` whose kept checkpoints are
    not all there as saved; a damaged one is moved to `_quarantine/`."""
    known = _intact_stamps(storage)
    found: dict[str, list[int]] = {}  # what `known` keeps: the stamps still current
    lost: dict[str, str] = {}
    for key in ok:
        held, record_mtime = files.get(key, {}), recorded.get(key, (0, 0))[1]
        for name in KEPT:
            relpath = f"{CHECKPOINTS}/{key}/{name}"
            stamp = held.get(name)
            if stamp is None:
                lost[key] = f"{relpath} is gone"
            elif stamp[1] <= record_mtime:
                continue  # written before its model's record, as a sweep writes it
            elif known.get(relpath) == list(stamp) or intact(storage.read_bytes(relpath)):
                found[relpath] = list(stamp)
            else:
                storage.quarantine(relpath)
                lost[key] = f"{relpath} was written again since and is damaged (moved to _quarantine/)"
    if found != known:
        storage.write_bytes(INTACT, json.dumps(found).encode())
    return lost


def _intact_stamps(storage: Storage) -> dict[str, list[int]]:
    try:
        return {str(k): list(v) for k, v in json.loads(storage.read_bytes(INTACT)).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}  # none yet, or unreadable: each is read once more


def verify_checkpoints(storage: Storage) -> list[str]:
    """The scrub of checkpoints: read every kept checkpoint of every model and move those
    not as saved to `_quarantine/` (the next run trains their models again, step 1).
    Returns a line per damaged file and a last line with the count."""
    files = checkpoint_files(storage)
    kept = sorted(f"{CHECKPOINTS}/{owner}/{name}" for owner, names in files.items() for name in names
                  if name in KEPT)
    with ThreadPoolExecutor(read_threads(storage)) as pool:  # hashing releases the GIL; a GET waits
        ok = list(pool.map(lambda relpath: intact(storage.read_bytes(relpath)), kept))
    damaged = [relpath for relpath, fine in zip(kept, ok) if not fine]
    for relpath in damaged:
        storage.quarantine(relpath)
    return [*(f"warning: {relpath} is damaged (its bytes are not those saved); moved to _quarantine/, its model "
              "will be trained again" for relpath in damaged),
            f"verified {len(kept)} checkpoints: " + (f"{len(damaged)} moved to _quarantine/" if damaged else "all intact")]


def _drop_finished_resumes(storage: Storage, trained: set[str], files: CheckpointFiles) -> None:
    """Step 2: resume checkpoints of recorded models, and of packs whose members all
    are; members files without their pack's `last.pt`."""
    for owner, names in files.items():
        if owner.startswith(PACK_PREFIX) and PACK_MEMBERS in names:
            if "last.pt" not in names:
                storage.delete(pack_members_path(owner))
            elif set(_pack_members(storage, owner) or [""]) <= trained:
                storage.delete(checkpoint_path(owner, "last"))
                storage.delete(pack_members_path(owner))
        elif owner in trained and "last.pt" in names:
            storage.delete(checkpoint_path(owner, "last"))


def _quarantine_stale(storage: Storage, models: dict[str, str], listings: Listings) -> list[str]:
    """Step 3: every stale measure and pair, with its curves."""
    reads = [read_table(storage, table, listings.get(table), LINEAGE_READ) for table in (MEASURES, PAIRS)]
    stale = [(read.table, name) for read in reads for name in stale_names(read, models)]
    if not stale:
        return []
    curves = sorted(listings[CURVES]) if CURVES in listings else storage.list_names(CURVES, ".parquet")
    lines = []
    for table, name in stale:
        storage.quarantine(record_path(table, name))
        for curve in (c for c in curves if c == name or c.startswith(name + ".")):
            storage.quarantine(record_path(CURVES, curve))
        lines.append(f"warning: {record_path(table, name)} was computed from weights its model no longer has "
                     "(trained again since); moved to _quarantine/, will be recomputed")
    return lines
