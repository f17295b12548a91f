"""Checkpoints of a trial in the sweep storage: `checkpoints/<trial_key>/<name>.pt`.

`init` (theta_0, needed by interpolation) and `final` are kept; `last` is the epoch
checkpoint a crashed trial resumes from and is removed once the trial's record exists.
`final["model"]` is always a plain model of the configured architecture (SWA's average,
late-phase members collapsed); `final["late_phase_members"]` keeps every member, and
`last["hooks"]` holds each training variant's state (optimizers of all members, SWA's
running average), so a resumed trial continues exactly.
Loading uses `weights_only=True`, so a checkpoint cannot run code.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from workers.storage import Storage


def _path(trial_key: str, name: str) -> str:
    return f"checkpoints/{trial_key}/{name}.pt"


def save(storage: Storage, trial_key: str, name: str, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_bytes(_path(trial_key, name), buffer.getvalue())


def exists(storage: Storage, trial_key: str, name: str) -> bool:
    return storage.exists(_path(trial_key, name))


def load(storage: Storage, trial_key: str, name: str, device: str = "cpu") -> dict[str, Any] | None:
    """The saved state, or None if that checkpoint does not exist."""
    if not storage.exists(_path(trial_key, name)):
        return None
    data = storage.read_bytes(_path(trial_key, name))
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)


def remove(storage: Storage, trial_key: str, name: str) -> None:
    if storage.exists(_path(trial_key, name)):
        storage.fs.delete_file(storage.path(_path(trial_key, name)))
