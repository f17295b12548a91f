"""Rows of the Parquet tables and the provenance every row carries.

Tables (one file per trial and table, see `workers.storage`):
    trials/<trial_key>.parquet    one row per trained model
    history/<trial_key>.parquet   one row per epoch
    curves/<trial_key>.<metric>-<settings>.parquet, measures/... (per-model metrics)
Every row holds the flat trial config, so a query needs no join to see the axes.
Rows never hold None: a missing number is NaN and a missing text is "", so every file
of a table has the same column types and pyarrow/DuckDB can read them as one dataset.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import sys
from typing import Any

import pyarrow as pa

from workers.config import SCHEMA_VERSION, TrialConfig, list_item_types


def provenance(device: str, code_version: str) -> dict[str, Any]:
    """Where and with what a row was produced."""
    import numpy
    import torch

    return {
        "host": socket.gethostname(),
        "node_id": ray_node_id(),
        "pid": os.getpid(),  # with actor reuse, several trials share a worker process
        "device": device,
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "numpy_version": numpy.__version__,
        "pyarrow_version": pa.__version__,
        "code_version": code_version,
        "schema_version": SCHEMA_VERSION,
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def ray_node_id() -> str:
    """The Ray node this process runs on, or "" outside Ray (without importing Ray):
    hosts can share a name (containers, one-host test clusters); node ids cannot."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_node_id()


def config_columns(cfg: TrialConfig, sweep: str) -> dict[str, Any]:
    """The identity and config columns that lead every row."""
    return {"sweep": sweep, "trial_key": cfg.trial_key, "cell_key": cfg.cell_key, **cfg.record_columns()}


_ARROW_ITEMS = {int: pa.int64(), float: pa.float64(), str: pa.string()}  # item types of empty lists


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """A table from rows with stable column types (see module docstring)."""
    assert rows, "a record file holds at least one row"
    for row in rows:
        nulls = [k for k, v in row.items() if v is None]
        assert not nulls, f"record columns must not be None (use NaN or ''): {nulls}"
    table = pa.Table.from_pylist(rows)
    items = list_item_types()
    for i, column in enumerate(table.schema):
        if pa.types.is_list(column.type) and pa.types.is_null(column.type.value_type):
            item = _ARROW_ITEMS[items.get(column.name, str)]  # an empty list: type it
            table = table.set_column(i, column.name, table.column(i).cast(pa.list_(item)))
    return table

