"""The record protocol: the tables, their record names (keys), the columns every row
leads with, and what "done" means.

Tables (one file per record, see `workers.core.storage`; `workers.core.tables` consolidates them):
    trials/<trial_key>.parquet                  one row per trained model (marks it done)
    history/<trial_key>.parquet                 one row per epoch
    measures/<measure_key>.parquet              one row per model and metric (marks it done)
    curves/<measure_key>.parquet                the metric's curve points, if it has any
    pairs/<pair_key>.parquet                    one row per seed pair (marks it done)
    curves/<pair_key>.<pair metric>.parquet     a pair metric's curve (the Bezier curve)
    failures/<record key>.<time_ns>.parquet     one row per failed attempt of a job
Keys: `trial_key` (a trained model) and `cell_key` (a grid cell: every training option
but the seed) are hashes of the config (`workers.core.config`); `measure_key` and `pair_key`
are built from them here. A cell's key equals the trial key of its seed-0 model (kept so
that stored sweeps keep their pair keys); the two never name records of the same table.

Every row holds the flat trial config, so a query needs no join to see the axes.
Rows never hold None: a missing number is NaN and a missing text is "", so every file
of a table has the same column types and pyarrow/DuckDB can read them as one dataset.
This module imports neither torch nor Ray: `analysis` reads its names.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import socket
import sys
from typing import Any

import pyarrow as pa

from workers.core.config import SCHEMA_VERSION, TrialConfig, list_item_types, settings_hash
from workers.core.errors import ConfigError

TRIALS, HISTORY, MEASURES, CURVES, PAIRS, FAILURES = "trials", "history", "measures", "curves", "pairs", "failures"
TABLES = (TRIALS, HISTORY, MEASURES, CURVES, PAIRS, FAILURES)
DONE_TABLES = (TRIALS, MEASURES, PAIRS)  # a record in one of these marks its work done
LONG_TABLES = (HISTORY, CURVES)  # many rows per record: readers load them on first use

# Columns that identify a row or say how it was produced, rather than configure it.
IDENTITY_COLUMNS = ("sweep", "trial_key", "cell_key", "status", "error", "metric", "settings")
PROVENANCE_COLUMNS = ("host", "node_id", "pid", "device", "python_version", "torch_version", "numpy_version",
                      "pyarrow_version", "code_version", "schema_version", "written_at")
PACKING_COLUMNS = ("pack_size", "pack_id", "unpacked_reason")  # how a model trained (workers.packing)

# The status of a record or result that failed for good: a measure that cannot be
# computed on its model, a job whose failure would repeat (`workers.jobs.tune_entry`).
FAILED = "failed"

# Lineage: which weights a record describes. A trials row holds `weights_id`, a content
# hash of the model's final weights (`workers.base.checkpoints.weights_id`); every record
# derived from those weights carries the hash it was computed from: a measures row and
# its curve `weights_id`, a pairs row and its curve one per model. A derived record
# whose hash is not its model's current one describes weights that no longer exist (the
# model was trained again): it is stale, the driver recomputes it and readers leave it
# out. Records written before lineage hold "" on both sides and stay current.
WEIGHTS_ID = "weights_id"
PAIR_WEIGHTS_IDS = ("weights_id_a", "weights_id_b")
LINEAGE_COLUMNS = (WEIGHTS_ID, *PAIR_WEIGHTS_IDS)


def is_current(model_ids: dict[str, str], trial_key: str, weights_id: str) -> bool:
    """Whether a record derived from model `trial_key` with weights `weights_id` describes
    that model as recorded now (`model_ids`: trial key -> its trials row's `weights_id`;
    a model with no trials row has no current weights)."""
    return model_ids.get(trial_key) == weights_id


# Checkpoints: `checkpoints/<trial key or pack id>/<name>.pt` (`workers.base.checkpoints`);
# a pack's folder also holds `members.json`, its members' trial keys in training order,
# while its `last.pt` exists, so a planner can resume that very pack (`sweeps.run.plan`).
CHECKPOINTS = "checkpoints"
PACK_MEMBERS = "members.json"


def checkpoint_path(owner: str, name: str) -> str:
    """Where checkpoint `name` (init, final, last) of a model or a pack lives."""
    return f"{CHECKPOINTS}/{owner}/{name}.pt"


def pack_members_path(pack: str) -> str:
    """Where a pack's members file lives, beside its `last` checkpoint."""
    return f"{CHECKPOINTS}/{pack}/{PACK_MEMBERS}"


def record_path(table: str, name: str) -> str:
    """Where record `name` of `table` lives inside a sweep folder."""
    return f"{table}/{name}.parquet"


def owning_record(table: str, name: str) -> tuple[str, str] | None:
    """For a record of a long table, the done-record of the work that wrote it: a
    model's history belongs to its trials row, a metric's curve (named by its measure
    key, one dot) to its measures row, a pair metric's curve (`<pair_key>.<metric>`) to
    its pairs row. Removing that record makes the next run write both again."""
    if table == HISTORY:
        return TRIALS, name
    if table == CURVES:
        return (MEASURES, name) if name.count(".") == 1 else (PAIRS, name.rpartition(".")[0])
    return None


def measure_key(cfg: TrialConfig, metric: str) -> str:
    """Record name of one metric on one model: trial key, metric, hash of its options."""
    return f"{cfg.trial_key}.{metric}-{settings_hash(cfg.sections[metric])}"


def pending_metrics(cfg: TrialConfig, done_measures: set[str]) -> list[str]:
    """The metrics of `cfg` with no `measures` record among `done_measures`."""
    return [m for m in cfg.measure.metrics if measure_key(cfg, m) not in done_measures]


def pending(configs: list[TrialConfig], trained: set[str], measured: set[str]) -> list[TrialConfig]:
    """The configs whose model is not trained or has a metric not measured: what a run
    of the sweep still has to do for each model (given the two tables' record names)."""
    return [c for c in configs if c.trial_key not in trained or pending_metrics(c, measured)]


def ordered_pair(cfg_a: TrialConfig, cfg_b: TrialConfig) -> tuple[TrialConfig, TrialConfig]:
    """The two models of a seed pair, lower seed first; refuses models of two cells."""
    if cfg_a.cell_key != cfg_b.cell_key:
        raise ConfigError("pairs", f"models {cfg_a.trial_key} and {cfg_b.trial_key} are from different cells")
    if cfg_a.train.seed == cfg_b.train.seed:
        raise ConfigError("seed", f"a pair needs two different seeds, got {cfg_a.train.seed} twice")
    return (cfg_a, cfg_b) if cfg_a.train.seed < cfg_b.train.seed else (cfg_b, cfg_a)


def pair_key(cfg_a: TrialConfig, cfg_b: TrialConfig, with_mc: bool) -> str:
    """Record name of a pair: cell, both seeds (in order), kind and a hash of its options;
    the same for (a, b) and (b, a)."""
    a, b = ordered_pair(cfg_a, cfg_b)
    digest = hashlib.sha256(json.dumps(a.pairs.settings(with_mc), sort_keys=True).encode()).hexdigest()[:8]
    return f"{a.cell_key}.s{a.train.seed}-s{b.train.seed}.{'mc' if with_mc else 'sim'}-{digest}"


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

