"""Consolidated tables: each table of a sweep as one sorted Parquet file beside its records.

A sweep writes one small file per model and table (`workers.core.storage`): keyed, atomic,
never rewritten, but a 10,000-model study leaves some 60,000 files, each mostly schema,
and readers that take the first file's schema drop the columns of other metrics.
`compact` writes `tables/<table>.parquet`: every row of the table, ordered by record
name (which starts with the trial or pair key), under the union of the records'
columns, with row-group statistics and dictionary-encoded strings (the config columns
repeat on every row and cost little).

The record files stay the source of truth. The consolidated file's key-value metadata
lists the records it holds, each with the size and mtime of the listing it was built
from, its number of rows and a content hash of its bytes (below). `read_table` lists
the table's records once and takes from the consolidated file only the rows of records
that are still there with the same size and mtime; every other record file (new,
rewritten, recomputed after quarantine) is read itself, and a record gone from the
listing (quarantined) contributes nothing. So every row is seen exactly once however far
the consolidated file lags. A consolidated file that cannot be read, or that says an
unknown layout or another schema version, is named in `TableRead.ignored` and not used;
the next `compact` replaces it (a whole new file, renamed into place or one PUT).

Size and mtime do not see damage that keeps them (bit rot, or bytes written back with
the old mtime), hence the hash, taken when compaction read the record (and verified its
page checksums). Whenever the consolidated file is rewritten, every record it holds that
this compaction did not read itself is read back and its hash compared (`verify` does
the same for a scrub, even when nothing changed): a record whose bytes differ at the
same size and mtime is moved to `_quarantine/`, with the done-record of a damaged
history or curve, named in the table's line, and left out of the new file, so the next
run recomputes it. A driver's start-up does not read them: it trusts the stamps
(`quarantine_damaged`). Measured at 10,000 models (55,000 records, 1.5 GB on a local
disk, 2 busy CPUs): a scrub takes 7-8 s, about half reading, half hashing; the
compaction that ends a run that did work 15-20 s instead of 9; a start-up 0.03 s more
(the longer manifest). Records of a layout-1 file have no hash: its first rewrite
verifies their page checksums, which decodes each (once: 137 s at 10,000 models), and
keeps their hashes. An object store's mtime has 1 s resolution, so a record rewritten
within a second at the very same size is taken for damage and recomputed (a recomputed
record takes a training run, so a sweep never does this).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers.core.config import SCHEMA_VERSION
from workers.core.errors import StorageError
from workers.core.records import DONE_TABLES, LONG_TABLES, TABLES, owning_record, record_path
from workers.core.storage import FileStamp, Storage, open_parquet, parquet_bytes, read_parquet

FOLDER = "tables"  # `<sweep>/tables/<table>.parquet`
LAYOUT_VERSION = 2  # of the consolidated file and its manifest; 2 added the content hash
READABLE_LAYOUTS = (1, LAYOUT_VERSION)  # 1: no hashes; used as is, hashes added at its next rewrite
MANIFEST_KEY = b"landscape_sweeps.records"
ROW_GROUP_ROWS = 128 * 1024  # bounds a reader's memory per row group; statistics per group

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")
Record = tuple[str, int, int, int, str]  # name, size, mtime_ns, rows, content hash ("": not known): one manifest entry


def consolidated_path(table: str) -> str:
    return f"{FOLDER}/{table}.parquet"


def content_hash(data: bytes) -> str:
    """16 hex digits of blake2b over a record file's bytes (collisions by chance: 2^-64)."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def read_threads(storage: Storage) -> int:
    """Record files read at once. A remote store answers each GET after a round trip, so
    many requests in flight hide it; on a local disk a few threads overlap Parquet
    decoding (which releases the GIL) and more only contend: on 2 cores, 4 threads read
    one-row files 1.4-1.8x faster than one at a time, 8 or 16 threads less so."""
    return 4 if storage.is_local else 16


@dataclass
class TableRead:
    """One table as read: its rows in record-name order and where they came from."""

    table: str
    data: pa.Table
    records: list[Record]  # in row order: what a consolidated file of `data` holds
    consolidated: int = 0  # records whose rows came from the consolidated file
    skipped: list[str] = field(default_factory=list)  # unreadable record files (relpaths)
    ignored: str = ""  # why the consolidated file was not used ("" when used or absent)
    verified: int = 0  # consolidated records read back by `compact` and found unchanged
    quarantined: list[str] = field(default_factory=list)  # damaged records `compact` moved away (relpaths)

    def row_names(self) -> np.ndarray:
        """The record name of each row of `data`, e.g. to keep the records of one spec."""
        return np.repeat(np.array([r[0] for r in self.records], dtype=object), [r[3] for r in self.records])


class Unusable(Exception):
    """The consolidated file cannot be trusted; the message says why."""


def _manifest(metadata: pq.FileMetaData, table: str) -> list[Record]:
    """The records a consolidated file holds, after checking it is one this code wrote."""
    raw = (metadata.metadata or {}).get(MANIFEST_KEY)
    if raw is None:
        raise Unusable("no record manifest in its metadata")
    records = list(_parsed_manifest(raw, table))
    if sum(r[3] for r in records) != metadata.num_rows:
        raise Unusable(f"holds {metadata.num_rows} rows, its manifest {sum(r[3] for r in records)}")
    return records


@functools.lru_cache(maxsize=len(TABLES))
def _parsed_manifest(raw: bytes, table: str) -> tuple[Record, ...]:
    """A manifest's records, parsed once per content: a driver's start-up opens each
    consolidated file two or three times (damage check, lineage, planning), and a
    10,000-model manifest takes ~20 ms to decode."""
    try:
        manifest = json.loads(raw)
        versions = (manifest["layout_version"], manifest["schema_version"], manifest["table"])
        if versions[0] not in READABLE_LAYOUTS or versions[1:] != (SCHEMA_VERSION, table):
            raise Unusable(f"layout/schema version/table {versions} != {(LAYOUT_VERSION, SCHEMA_VERSION, table)}")
        if versions[0] == 1:
            records = [(str(n), int(s), int(m), int(r), "") for n, s, m, r in manifest["records"]]
        else:
            records = [(str(n), int(s), int(m), int(r), str(h)) for n, s, m, r, h in manifest["records"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise Unusable(f"malformed record manifest ({exc!r})") from None
    return tuple(records)


def _open_consolidated(storage: Storage, table: str, with_data: bool,
                       columns: list[str] | None = None) -> tuple[list[Record], pa.Table | None]:
    """Manifest (and, if asked, rows: every column or those of `columns` it has) of
    `tables/<table>.parquet`; ([], None) if absent. Raises Unusable for a file that is
    truncated, foreign or of another version."""
    relpath = consolidated_path(table)
    try:
        with storage.fs.open_input_file(storage.path(relpath)) as f:
            parquet = open_parquet(f)
            records = _manifest(parquet.metadata, table)
            if not with_data:
                return records, None
            return records, parquet.read(columns=_present(columns, parquet.schema_arrow.names))
    except FileNotFoundError:
        return [], None
    except (pa.ArrowException, OSError) as exc:
        raise Unusable(f"unreadable ({exc})") from None


def held_records(storage: Storage, table: str) -> dict[str, FileStamp]:
    """Records the consolidated file holds, with the size and mtime it read them at
    (known readable then); empty if there is no usable consolidated file."""
    try:
        records, _ = _open_consolidated(storage, table, with_data=False)
    except Unusable:
        return {}
    return {name: (size, mtime) for name, size, mtime, *_ in records}


def _parallel(storage: Storage, work: Callable[[_Item], _Result], items: list[_Item]) -> list[_Result]:
    with ThreadPoolExecutor(read_threads(storage)) as pool:
        return list(pool.map(work, items))


def _read_records(storage: Storage, table: str, names: list[str]) -> list[tuple[pa.Table, str] | Exception]:
    """Each record's rows (checksums verified) and the content hash of its bytes."""
    def read(name: str) -> tuple[pa.Table, str] | Exception:
        try:
            data = storage.read_bytes(record_path(table, name))
            return read_parquet(data), content_hash(data)
        except (pa.ArrowException, OSError) as exc:
            return exc

    return _parallel(storage, read, names)


def _rows_of(records: list[Record], keep: list[bool]) -> np.ndarray:
    """Row indices of the kept records in a table laid out as `records`."""
    ends = np.cumsum([r[3] for r in records])
    return np.concatenate([np.arange(end - r[3], end) for r, k, end in zip(records, keep, ends) if k])


def _present(columns: list[str] | None, names: list[str]) -> list[str] | None:
    """The wanted columns a file has (None: all of them)."""
    return None if columns is None else [c for c in columns if c in names]


def read_table(storage: Storage, table: str, listing: dict[str, FileStamp] | None = None,
               columns: list[str] | None = None) -> TableRead:
    """Every row of `table` once: the consolidated file's rows of unchanged records plus
    the record files it does not hold (one listing, unless given; no read of a
    consolidated record). `columns`: only those (that exist), e.g. lineage's few of a
    table whose rows hold a hundred."""
    listing = storage.list_files(table, ".parquet") if listing is None else listing
    result = TableRead(table, pa.table({}), [])
    try:
        held, consolidated = _open_consolidated(storage, table, with_data=True, columns=columns)
    except Unusable as exc:
        held, consolidated = [], None
        result.ignored = f"{storage.path(consolidated_path(table))}: {exc}"
    keep = [listing.get(name) == (size, mtime) for name, size, mtime, *_ in held]
    parts: list[pa.Table] = []
    if consolidated is not None and any(keep):
        parts.append(consolidated if all(keep) else consolidated.take(_rows_of(held, keep)))
        result.records = [r for r, k in zip(held, keep) if k]
        result.consolidated = len(result.records)
    taken = {r[0] for r in result.records}
    extra = sorted(name for name in listing if name not in taken)
    for name, read in zip(extra, _read_records(storage, table, extra)):
        if isinstance(read, Exception):
            result.skipped.append(record_path(table, name))
        else:
            parts.append(read[0] if columns is None else read[0].select(_present(columns, read[0].column_names)))
            result.records.append((name, *listing[name], read[0].num_rows, read[1]))
    if not parts:
        return result
    data = pa.concat_tables(parts, promote_options="permissive")
    if extra:  # put the new records' rows in record-name order among the consolidated ones
        names = np.repeat(np.array([r[0] for r in result.records]), [r[3] for r in result.records])
        order = pc.sort_indices(pa.array(names))  # stable: rows of a record keep their order
        data = data.take(order)
        result.records.sort(key=lambda r: r[0])
    result.data = data.replace_schema_metadata(None)
    return result


GONE = "gone"  # `_unchanged` of a record removed since the listing (e.g. quarantined meanwhile)


def _unchanged(storage: Storage, table: str, records: list[Record]) -> list[str | None]:
    """Per record held at its listed size and mtime: its content hash if its bytes are
    those compaction read (page checksums verified then, so not again), or, for a record
    held without a hash (layout 1), the hash of bytes whose checksums verify now; None for
    damage, GONE for a file no longer there. A storage failure is not damage: it raises
    StorageError."""
    def check(record: Record) -> str | None:
        relpath = record_path(table, record[0])
        try:
            data = storage.read_bytes(relpath)
        except FileNotFoundError:
            return GONE
        except OSError as exc:
            raise StorageError(f"storage: cannot read {storage.path(relpath)} to verify it: {exc}") from exc
        digest = content_hash(data)
        if record[4]:
            return digest if digest == record[4] else None
        try:
            read_parquet(data)
        except (pa.ArrowException, OSError):  # bytes in memory: a failed page checksum is an OSError
            return None
        return digest

    return _parallel(storage, check, records)


def _quarantine_with_owner(storage: Storage, table: str, name: str) -> list[str]:
    """Move record `name` of `table` to `_quarantine/` with the done-record of a history or
    curve (`owning_record`), so the next run writes both again; the relpaths moved."""
    moved = []
    owner = owning_record(table, name)  # first: a kill between the two moves then loses nothing
    if owner is not None and storage.exists(record_path(*owner)):
        storage.quarantine(record_path(*owner))
        moved.append(record_path(*owner))
    storage.quarantine(record_path(table, name))
    return [record_path(table, name), *moved]


def _compact(storage: Storage, table: str, scrub: bool) -> tuple[TableRead | None, int]:
    """`compact`, and with `scrub` every held record verified even when nothing changed;
    also returns how many held records were read back."""
    listing = storage.list_files(table, ".parquet")
    try:
        held, _ = _open_consolidated(storage, table, with_data=False)
        current = {name: (size, mtime) for name, size, mtime, *_ in held} == listing
    except Unusable:
        held, current = [], False  # rebuilt from the record files below
    if current and not scrub:
        return None, 0
    trusted = [r for r in held if listing.get(r[0]) == (r[1], r[2])]  # what read_table takes unread
    hashes = dict(zip((r[0] for r in trusted), _unchanged(storage, table, trusted)))
    damaged = sorted(name for name, digest in hashes.items() if digest is None)
    quarantined = [relpath for name in damaged for relpath in _quarantine_with_owner(storage, table, name)]
    gone = [name for name, digest in hashes.items() if digest == GONE]
    if current and not quarantined and not gone and all(r[4] for r in trusted):
        return None, len(trusted)  # a scrub found every record as compaction read it
    for name in damaged + gone:
        listing.pop(name)
    read = read_table(storage, table, listing)
    read.records = [(*r[:4], r[4] or hashes.get(r[0]) or "") for r in read.records]
    read.verified, read.quarantined = len(trusted) - len(damaged) - len(gone), quarantined
    if not read.records:
        return read, len(trusted)
    manifest = {"layout_version": LAYOUT_VERSION, "schema_version": SCHEMA_VERSION, "table": table,
                "records": read.records}
    data = read.data.replace_schema_metadata({MANIFEST_KEY: json.dumps(manifest)})
    storage.write_bytes(consolidated_path(table), parquet_bytes(
        data, row_group_size=ROW_GROUP_ROWS, use_dictionary=True, write_statistics=True))
    return read, len(trusted)


def compact(storage: Storage, table: str) -> TableRead | None:
    """Write `tables/<table>.parquet` from the consolidated file and the record files it
    lacks; None when it already holds exactly the listed records (nothing read or
    written). Before a rewrite, every record it holds is verified against its hash (see
    the module docstring); a damaged one is quarantined (`TableRead.quarantined`) and left out."""
    return _compact(storage, table, scrub=False)[0]


def _sweep_order() -> tuple[str, ...]:
    """Long tables first: a damaged history or curve moves its done-record away, which the
    done-record's table then leaves out in the same pass."""
    return (*LONG_TABLES, *(t for t in TABLES if t not in LONG_TABLES))


def compact_sweep(storage: Storage) -> dict[str, TableRead | None]:
    """`compact` every table of a sweep (see `compact`), in `TABLES` order."""
    results = {table: compact(storage, table) for table in _sweep_order()}
    return {table: results[table] for table in TABLES}


def verify(storage: Storage) -> list[str]:
    """Scrub a sweep: read back every record the consolidated tables hold and compare its
    hash, even where nothing changed (and compact what did). Damaged records are moved
    to `_quarantine/` with their done-records and left out, so the next run recomputes
    them. Returns a line per table rewritten (naming what was moved) and a last line
    with the count. 7-8 s for 10,000 models on a local disk (module docstring)."""
    results = {table: _compact(storage, table, scrub=True) for table in _sweep_order()}
    lines = [describe(table, results[table][0]) for table in TABLES if results[table][0] is not None]
    checked = sum(n for _, n in results.values())
    moved = sum(len(read.quarantined) for read, _ in results.values() if read is not None)
    return [*lines, f"verified {checked} consolidated records: "
                    + (f"{moved} moved to _quarantine/" if moved else "all as compaction read them")]


def describe(table: str, read: TableRead | None) -> str:
    """One line on what `compact` did to a table (for the driver and `analysis compact`)."""
    if read is None:
        return f"{table}: up to date"
    damage = (f"; warning: damaged (bytes changed, size and mtime kept), moved to _quarantine/ to be recomputed: "
              f"{', '.join(read.quarantined)}" if read.quarantined else "")
    if not read.records:
        return f"{table}: no records{damage}"
    fresh = len(read.records) - read.consolidated
    line = (f"{table}: {len(read.records)} records, {read.data.num_rows} rows -> {consolidated_path(table)} "
            f"({read.consolidated} already consolidated, {fresh} added)")
    if read.skipped:
        line += f"; {len(read.skipped)} unreadable left out: {', '.join(read.skipped)}"
    return line + (f"; replaced {read.ignored}" if read.ignored else "") + damage


def compact_after_run(storage: Storage) -> list[str]:
    """`compact_sweep` at the end of a sweep run: lines for the tables it rewrote, or one
    warning if storage failed (the records are complete; reads stay slower until a later
    run or `python -m analysis compact` consolidates them)."""
    try:
        return [describe(table, read) for table, read in compact_sweep(storage).items() if read is not None]
    except StorageError as exc:
        return [f"warning: tables not consolidated: {exc}"]


Listings = dict[str, dict[str, FileStamp]]  # table -> its `list_files` (one listing, shared)


def list_tables(storage: Storage, tables: tuple[str, ...] = TABLES) -> Listings:
    """Each table's record files with their stamps, listed once for every step that needs
    them (a driver's start-up lists them once, not once per step)."""
    return {table: storage.list_files(table, ".parquet") for table in tables}


def quarantine_damaged(storage: Storage, listings: Listings | None = None) -> list[str]:
    """Move every record file that cannot be read whole (checksums verified) to
    `_quarantine/`, together with the done-record of a damaged history or curve, so the
    next run recomputes them; returns one line per file moved, naming it. Records the
    consolidated file holds at their listed size and mtime are trusted and not read
    (damage that keeps both is found when compaction verifies them, or by `verify`)."""
    lines = []
    for table in (*DONE_TABLES, *LONG_TABLES):  # done-records first: a long record's owner may go with it
        listing = None if listings is None else listings[table]
        for name in storage.unreadable(table, trusted=held_records(storage, table), listing=listing):
            relpath, *owners = _quarantine_with_owner(storage, table, name)
            lines.append(f"warning: {relpath} was unreadable; moved to _quarantine/, will be recomputed")
            lines += [f"warning: {owner} moved to _quarantine/ with it, to be recomputed" for owner in owners]
    return lines
