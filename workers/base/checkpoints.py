"""Checkpoints of a trial in the sweep storage: `checkpoints/<trial_key>/<name>.pt`.

`init` (theta_0, needed by interpolation) and `final` are kept; `last` is the epoch
checkpoint a crashed trial resumes from and is removed once the trial's record exists.
`final["model"]` is always a plain model of the configured architecture (SWA's average,
late-phase members collapsed); `final["late_phase_members"]` keeps every member, and
`last["hooks"]` holds each training variant's state (optimizers of all members, SWA's
running average), so a resumed trial continues exactly.
Loading uses `weights_only=True`, so a checkpoint cannot run code (such a file is
refused with an `UnpicklingError` naming it); a checkpoint that cannot be read is a
`CheckpointError` naming it, and `load_or_quarantine` turns it into "not there", so the
work that wrote it is done again.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import sys
from collections.abc import Callable
from typing import Any

import torch

from workers.core.errors import CheckpointError
from workers.core.records import checkpoint_path, pack_members_path
from workers.core.seal import intact, seal, unseal
from workers.core.storage import Storage


def weights_id(state: dict[str, torch.Tensor]) -> str:
    """Content hash of a model's weights (a state dict): names, dtypes, shapes and bytes,
    in the dict's order, so the same tensors give the same id on any device or host.
    Records derived from a model carry it (`workers.core.records.WEIGHTS_ID`): lineage."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in state.items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


path = checkpoint_path  # `checkpoints/<trial_key or pack id>/<name>.pt`


def save(storage: Storage, trial_key: str, name: str, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_bytes(path(trial_key, name), seal(buffer.getvalue()))


def restore_init(storage: Storage, trial_key: str, state: Callable[[], dict[str, Any]]) -> None:
    """Write a resumed model's `init` again (from `state()`, the weights its seed gives)
    unless an intact one is there: training resumes without it, but its metrics need it,
    and theta_0 follows from the seed alone, so a lost or damaged copy is no loss."""
    relpath = path(trial_key, "init")
    if storage.exists(relpath) and intact(storage.read_bytes(relpath)):
        return
    print(f"warning: {storage.path(relpath)} is missing or damaged; written again from the seed", file=sys.stderr)
    save(storage, trial_key, "init", state())


def exists(storage: Storage, trial_key: str, name: str) -> bool:
    return storage.exists(path(trial_key, name))


def load(storage: Storage, trial_key: str, name: str, device: str = "cpu") -> dict[str, Any] | None:
    """The saved state, or None if that checkpoint does not exist."""
    relpath = path(trial_key, name)
    if not storage.exists(relpath):
        return None
    data = unseal(storage.read_bytes(relpath), storage.path(relpath))
    try:
        return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):  # it would run code: refuse, never repair
            raise pickle.UnpicklingError(f"{storage.path(relpath)}: {exc}") from None
        raise CheckpointError(f"{storage.path(relpath)} cannot be read: {exc}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{storage.path(relpath)} cannot be read: {exc}") from None


def load_or_quarantine(storage: Storage, trial_key: str, name: str, device: str = "cpu") -> dict[str, Any] | None:
    """`load`, but a damaged checkpoint is moved to `_quarantine/` and named on stderr
    (once: it is gone afterwards), and None is returned as for a missing one."""
    try:
        return load(storage, trial_key, name, device)
    except CheckpointError as exc:
        storage.quarantine(path(trial_key, name))
        print(f"warning: {exc}; moved to _quarantine/, recomputing it", file=sys.stderr)
        return None


def remove(storage: Storage, trial_key: str, name: str) -> None:
    storage.delete(path(trial_key, name))


def save_pack_members(storage: Storage, pack_key: str, members: list[str]) -> None:
    """Name a pack's members (trial keys, in its order) beside its `last` checkpoint."""
    storage.write_bytes(pack_members_path(pack_key), json.dumps(members).encode())


def remove_pack_resume(storage: Storage, pack_key: str) -> None:
    """A pack's `last` checkpoint and its members file: the pack is recorded."""
    remove(storage, pack_key, "last")
    storage.delete(pack_members_path(pack_key))
