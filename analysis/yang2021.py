"""Import the published metrics of Yang et al. 2021 into this project's record layout.

The authors' archive (`results.tar.gz`, MIT licence) holds, per grid cell
`different_knobs_subset_10/bs_{B}/lr_decay/ResNet18_w{W}/metrics/`, pickles of the
per-model metrics (5 seeds), of CKA and L2 over ordered seed pairs, and one Bezier
curve (seeds 0 and 1) as `.npz`. This module turns them into the tables a sweep of
ours writes, so `python -m analysis report` and any query treat the published data
like a sweep (and a user can overlay it on their own):

    trials/<cell_key>.parquet   5 rows: losses, accuracies (fractions), hessian_*
    pairs/<cell_key>.parquet    10 rows, one per unordered seed pair
    curves/<cell_key>.parquet   the curve of seeds (0, 1): kind "bezier", t, split, ...
    spec.json                   the grid (width x batch_size x seed)

One file per cell rather than per model keeps the import at 630 small files; readers
concatenate a folder anyway. Pickles are read with `workers.core.safe_pickle` (plain data
and numpy only) straight from the archive, and `.npz` files with `allow_pickle=False`:
nothing is extracted to disk and no code in the archive can run.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from workers.core import safe_pickle
from workers.core.mc import curve_summary
from workers.core.records import CURVES, PAIRS, TRIALS
from workers.core.storage import Storage

SWEEP = "yang2021"
NAN = float("nan")
MEMBER = re.compile(r"(?:^|/)bs_(\d+)/[^/]+/ResNet18_w(\d+)/metrics/([^/]+)$")
CKA_FILE = "CKA_mixup_alpha_16.0.pkl"
MC_SEEDS = (0, 1)  # the published curve joins these two models

# The setup of the published grid (taxonomy spec), as config columns of every row.
PAPER_CONFIG: dict[str, Any] = {
    "dataset": "cifar10", "label_noise": 0.0, "data_fraction": 1.0, "model": "resnet18k",
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step",
    "milestones": [75], "lr_factor": 0.1, "epochs": 100,
}
PAPER_PAIR_CONFIG: dict[str, Any] = {
    "pairs_bezier_epochs": 50, "pairs_bezier_lr": 0.01, "pairs_bezier_momentum": 0.9,
    "pairs_bezier_batch_size": 128, "pairs_bezier_points": 5, "pairs_cka_samples": 768,
    "pairs_cka_mixup_alpha": 16.0,
}


class ArchiveError(ValueError):
    """The file is not a readable archive of the published metrics."""


@dataclass
class Cell:
    """The raw files of one grid cell, by file name."""

    width: int
    batch_size: int
    files: dict[str, bytes] = field(default_factory=dict)

    def pickle(self, name: str) -> Any:
        """Unpickle one file with the plain-data unpickler; None if the file is absent."""
        if name not in self.files:
            return None
        try:
            return safe_pickle.loads(self.files[name])
        except safe_pickle.UnsafePickleError as exc:
            raise safe_pickle.UnsafePickleError(f"{self.where(name)}: {exc}") from None

    def where(self, name: str) -> str:
        return f"bs_{self.batch_size}/ResNet18_w{self.width}/metrics/{name}"


def read_cells(archive: str) -> list[Cell]:
    """Every cell of the archive with its metric files' bytes, sorted by (width, batch)."""
    cells: dict[tuple[int, int], Cell] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member, data in _regular_files(tar):
                match = MEMBER.search(member)
                if match is None:
                    continue
                batch, width, name = int(match[1]), int(match[2]), match[3]
                cells.setdefault((width, batch), Cell(width, batch)).files[name] = data
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"{archive}: not a readable tar archive of the published metrics: {exc}") from exc
    if not cells:
        raise ArchiveError(f"{archive}: no bs_*/*/ResNet18_w*/metrics/ files found; "
                         "is this the archive of Yang et al. 2021 (results.tar.gz)?")
    return [cells[k] for k in sorted(cells)]


def _regular_files(tar: tarfile.TarFile) -> Iterator[tuple[str, bytes]]:
    for member in tar:
        if member.isfile():
            stream = tar.extractfile(member)
            assert stream is not None
            yield member.name, stream.read()


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([SWEEP, *parts]).encode()).hexdigest()[:16]


def _float(value: Any) -> float:
    return NAN if value is None else float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


def cell_tables(cell: Cell) -> dict[str, list[dict[str, Any]]]:
    """The trials, pairs and curves rows of one cell."""
    train = cell.pickle("loss_acc.pkl")
    if train is None:
        raise ArchiveError(f"{cell.where('loss_acc.pkl')} is missing: every cell needs its training metrics")
    test = cell.pickle("loss_acc_test.pkl") or {}  # absent for batch sizes 19 and 27
    hessian = cell.pickle("hessian.pkl") or {}
    cell_key = _digest(cell.width, cell.batch_size)
    base = {"sweep": SWEEP, "cell_key": cell_key, **PAPER_CONFIG, "width": cell.width,
            "batch_size": cell.batch_size}
    seeds = sorted(int(s) for s in train)
    trials = []
    for seed in seeds:
        loss = _float(train[seed]["loss"])
        trials.append({
            **base, "trial_key": _digest(cell.width, cell.batch_size, seed), "seed": seed,
            "status": "ok" if np.isfinite(loss) else "diverged", "error": "",
            "train_loss": loss, "train_acc": _float(train[seed]["accuracy"]) / 100.0,
            "test_loss": _float(test.get(seed, {}).get("loss")),
            "test_acc": _float(test.get(seed, {}).get("accuracy")) / 100.0,
            "hessian_top_eigenvalue": _float(hessian.get(seed, {}).get("top_eigenvalue")),
            "hessian_trace": _float(hessian.get(seed, {}).get("trace")),
            "code_version": "yang2021-archive",
        })
    curve = _curve(cell)
    cka = (cell.pickle(CKA_FILE) or {}).get("representation_similarity")
    distance = (cell.pickle("model_dist.pkl") or {}).get("model_distance")
    pairs = [_pair(cell, base, (a, b), cka, distance, curve) for i, a in enumerate(seeds) for b in seeds[i + 1 :]]
    curve_rows = []
    for pair in (p for p in pairs if p["with_mc"]):
        identity = {k: v for k, v in pair.items() if k in base or k in ("pair_key", "seed_a", "seed_b")}
        curve_rows = [{**identity, "kind": "bezier", "group": "", **point} for point in curve]
    return {TRIALS: trials, PAIRS: pairs, CURVES: curve_rows}


def _curve(cell: Cell) -> list[dict[str, Any]] | None:
    """Points of the published Bezier curve: loss is the cross-entropy (`*_nll`; their
    `*_loss` adds the weight-decay term), acc a fraction, err in percentage points."""
    if "curve_test.npz" not in cell.files:
        return None
    with np.load(io.BytesIO(cell.files["curve_test.npz"]), allow_pickle=False) as z:
        return [
            {"t": float(t), "split": split, "loss": float(z[f"{p}_nll"][i]),
             "acc": float(z[f"{p}_acc"][i]) / 100.0, "err": float(z[f"{p}_err"][i])}
            for i, t in enumerate(z["ts"]) for split, p in (("train", "tr"), ("test", "te"))
        ]


def _symmetric(table: dict | None, a: int, b: int, pick) -> float:
    """Mean of the (a, b) and (b, a) entries, ignoring a missing or NaN one."""
    values = [pick(table[i][j]) for i, j in ((a, b), (b, a)) if table and i in table and j in table[i]]
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else NAN


def _pair(
    cell: Cell, base: dict[str, Any], seeds: tuple[int, int], cka: dict | None, distance: dict | None,
    curve: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """One unordered seed pair: CKA and L2 averaged over both orders; mc if it has the curve."""
    a, b = seeds
    with_mc = (a, b) == MC_SEEDS and curve is not None
    row = {
        **base, "pair_key": f"{base['cell_key']}.s{a}-s{b}.{'mc' if with_mc else 'sim'}-{SWEEP}",
        "seed_a": a, "seed_b": b, "trial_key_a": _digest(cell.width, cell.batch_size, a),
        "trial_key_b": _digest(cell.width, cell.batch_size, b), "with_mc": with_mc,
        **PAPER_PAIR_CONFIG, "status": "ok", "error": "",
        "cka_logits": _symmetric(cka, a, b, lambda v: _float(v[0])),
        "cka_softmax": _symmetric(cka, a, b, lambda v: _float(v[1])),
        "l2_distance": _symmetric(distance, a, b, lambda v: _float(v["dist"])),
        "mc": NAN, "mc_loss": NAN, "mc_test": NAN, "code_version": "yang2021-archive",
    }
    if with_mc:
        row.update(curve_summary(curve))
    return row


def import_archive(archive: str, out: str) -> dict[str, int]:
    """Write the archive's records under `out` (a local path or URI); returns counts."""
    cells = read_cells(archive)
    storage = Storage.open(out)
    counts = {"cells": 0, "models": 0, "pairs": 0, "curve_points": 0}
    seeds: set[int] = set()
    for cell in cells:
        tables = cell_tables(cell)
        key = tables[TRIALS][0]["cell_key"]
        for table, rows in tables.items():
            if rows:
                storage.write_table(table, key, pa.Table.from_pylist(rows))
        seeds.update(r["seed"] for r in tables[TRIALS])
        counts["cells"] += 1
        counts["models"] += len(tables[TRIALS])
        counts["pairs"] += len(tables[PAIRS])
        counts["curve_points"] += len(tables[CURVES])
    values = {"width": sorted({c.width for c in cells}), "batch_size": sorted({c.batch_size for c in cells}),
              "seed": sorted(seeds)}
    spec = {"study": "taxonomy", "preset": SWEEP, "name": SWEEP, "values": values,
            "source": "Yang et al. 2021, results.tar.gz (MIT licence)", "code_version": "yang2021-archive"}
    storage.write_bytes("spec.json", json.dumps(spec, indent=2).encode())
    return counts
