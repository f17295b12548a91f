"""Consolidated tables: each table of a sweep as one sorted Parquet file beside its records.

A sweep writes one small file per model and table (`workers.storage`): keyed, atomic,
never rewritten, but a 10,000-model study leaves some 60,000 files, each mostly schema,
and readers that take the first file's schema drop the columns of other metrics.
`compact` writes `tables/<table>.parquet`: every row of the table, ordered by record
name (which starts with the trial or pair key), under the union of the records'
columns, with row-group statistics and dictionary-encoded strings (the config columns
repeat on every row and cost little).

The record files stay the source of truth. The consolidated file's key-value metadata
lists the records it holds, each with the size and mtime of the listing it was built
from and its number of rows. `read_table` lists the table's records once and takes from
the consolidated file only the rows of records that are still there with the same size
and mtime; every other record file (new, rewritten, recomputed after quarantine) is read
itself, and a record gone from the listing (quarantined) contributes nothing. So every
row is seen exactly once however far the consolidated file lags. A consolidated file
that cannot be read, or that says another layout or schema version, is named in
`TableRead.ignored` and not used; the next `compact` replaces it (a whole new file,
renamed into place or one PUT). Caveat: an object store's mtime has 1 s resolution, so a
record rewritten within a second of its previous version, at the very same size, is not
noticed; a recomputed record takes a training run, so this does not happen in a sweep.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers.config import SCHEMA_VERSION
from workers.errors import StorageError
from workers.records import DONE_TABLES, LONG_TABLES, TABLES, owning_record, record_path
from workers.storage import FileStamp, Storage, parquet_bytes, read_parquet

FOLDER = "tables"  # `<sweep>/tables/<table>.parquet`
LAYOUT_VERSION = 1  # of the consolidated file and its manifest
MANIFEST_KEY = b"landscape_sweeps.records"
ROW_GROUP_ROWS = 128 * 1024  # bounds a reader's memory per row group; statistics per group

Record = tuple[str, int, int, int]  # name, size, mtime_ns, rows: one manifest entry


def consolidated_path(table: str) -> str:
    return f"{FOLDER}/{table}.parquet"


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
    try:
        manifest = json.loads(raw)
        versions = (manifest["layout_version"], manifest["schema_version"], manifest["table"])
        records = [(str(n), int(s), int(m), int(r)) for n, s, m, r in manifest["records"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise Unusable(f"malformed record manifest ({exc!r})") from None
    if versions != (LAYOUT_VERSION, SCHEMA_VERSION, table):
        raise Unusable(f"layout/schema version/table {versions} != {(LAYOUT_VERSION, SCHEMA_VERSION, table)}")
    if sum(r[3] for r in records) != metadata.num_rows:
        raise Unusable(f"holds {metadata.num_rows} rows, its manifest {sum(r[3] for r in records)}")
    return records


def _open_consolidated(storage: Storage, table: str, with_data: bool) -> tuple[list[Record], pa.Table | None]:
    """Manifest (and, if asked, rows) of `tables/<table>.parquet`; ([], None) if absent.
    Raises Unusable for a file that is truncated, foreign or of another version."""
    relpath = consolidated_path(table)
    try:
        with storage.fs.open_input_file(storage.path(relpath)) as f:
            parquet = pq.ParquetFile(f, page_checksum_verification=True)
            records = _manifest(parquet.metadata, table)
            return records, parquet.read() if with_data else None
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
    return {name: (size, mtime) for name, size, mtime, _ in records}


def _read_records(storage: Storage, table: str, names: list[str]) -> list[pa.Table | Exception]:
    def read(name: str) -> pa.Table | Exception:
        try:
            return read_parquet(storage.read_bytes(f"{table}/{name}.parquet"))
        except (pa.ArrowException, OSError) as exc:
            return exc

    with ThreadPoolExecutor(read_threads(storage)) as pool:
        return list(pool.map(read, names))


def _rows_of(records: list[Record], keep: list[bool]) -> np.ndarray:
    """Row indices of the kept records in a table laid out as `records`."""
    ends = np.cumsum([r[3] for r in records])
    return np.concatenate([np.arange(end - r[3], end) for r, k, end in zip(records, keep, ends) if k])


def read_table(storage: Storage, table: str, listing: dict[str, FileStamp] | None = None) -> TableRead:
    """Every row of `table` once: the consolidated file's rows of unchanged records plus
    the record files it does not hold (one listing, unless given; no read of a
    consolidated record)."""
    listing = storage.list_files(table, ".parquet") if listing is None else listing
    result = TableRead(table, pa.table({}), [])
    try:
        held, consolidated = _open_consolidated(storage, table, with_data=True)
    except Unusable as exc:
        held, consolidated = [], None
        result.ignored = f"{storage.path(consolidated_path(table))}: {exc}"
    keep = [listing.get(name) == (size, mtime) for name, size, mtime, _ in held]
    parts: list[pa.Table] = []
    if consolidated is not None and any(keep):
        parts.append(consolidated if all(keep) else consolidated.take(_rows_of(held, keep)))
        result.records = [r for r, k in zip(held, keep) if k]
        result.consolidated = len(result.records)
    taken = {r[0] for r in result.records}
    extra = sorted(name for name in listing if name not in taken)
    for name, read in zip(extra, _read_records(storage, table, extra)):
        if isinstance(read, Exception):
            result.skipped.append(f"{table}/{name}.parquet")
        else:
            parts.append(read)
            result.records.append((name, *listing[name], read.num_rows))
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


def compact(storage: Storage, table: str) -> TableRead | None:
    """Write `tables/<table>.parquet` from the consolidated file and the record files it
    lacks; None when it already holds exactly the listed records (nothing written)."""
    listing = storage.list_files(table, ".parquet")
    try:
        held, _ = _open_consolidated(storage, table, with_data=False)
        if {name: (size, mtime) for name, size, mtime, _ in held} == listing:
            return None
    except Unusable:
        pass  # rebuilt from the record files below
    read = read_table(storage, table, listing)
    if not read.records:
        return read
    manifest = {"layout_version": LAYOUT_VERSION, "schema_version": SCHEMA_VERSION, "table": table,
                "records": read.records}
    data = read.data.replace_schema_metadata({MANIFEST_KEY: json.dumps(manifest)})
    storage.write_bytes(consolidated_path(table), parquet_bytes(
        data, row_group_size=ROW_GROUP_ROWS, use_dictionary=True, write_statistics=True))
    return read


def compact_sweep(storage: Storage) -> dict[str, TableRead | None]:
    """`compact` every table of a sweep (see `compact`)."""
    return {table: compact(storage, table) for table in TABLES}


def describe(table: str, read: TableRead | None) -> str:
    """One line on what `compact` did to a table (for the driver and `analysis compact`)."""
    if read is None:
        return f"{table}: up to date"
    if not read.records:
        return f"{table}: no records"
    fresh = len(read.records) - read.consolidated
    line = (f"{table}: {len(read.records)} records, {read.data.num_rows} rows -> {consolidated_path(table)} "
            f"({read.consolidated} already consolidated, {fresh} added)")
    if read.skipped:
        line += f"; {len(read.skipped)} unreadable left out: {', '.join(read.skipped)}"
    return line + (f"; replaced {read.ignored}" if read.ignored else "")


def compact_after_run(storage: Storage) -> list[str]:
    """`compact_sweep` at the end of a sweep run: lines for the tables it rewrote, or one
    warning if storage failed (the records are complete; reads stay slower until a later
    run or `python -m analysis compact` consolidates them)."""
    try:
        return [describe(table, read) for table, read in compact_sweep(storage).items() if read is not None]
    except StorageError as exc:
        return [f"warning: tables not consolidated: {exc}"]


def quarantine_damaged(storage: Storage) -> list[str]:
    """Move every record file that cannot be read whole (checksums verified) to
    `_quarantine/`, together with the done-record of a damaged history or curve, so the
    next run recomputes them; returns one line per file moved, naming it. Records the
    consolidated file holds at their listed size and mtime are known good and not read."""
    lines = []
    for table in (*DONE_TABLES, *LONG_TABLES):  # done-records first: a long record's owner may go with it
        for relpath in storage.quarantine_unreadable(table, trusted=held_records(storage, table)):
            lines.append(f"warning: {relpath} was unreadable; moved to _quarantine/, will be recomputed")
            owner = owning_record(table, relpath[len(table) + 1:-len(".parquet")])
            if owner is not None and storage.exists(record_path(*owner)):
                storage.quarantine(record_path(*owner))
                lines.append(f"warning: {record_path(*owner)} moved to _quarantine/ with it, to be recomputed")
    return lines
