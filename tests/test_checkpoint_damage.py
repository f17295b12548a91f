"""Damage to the checkpoints of recorded models, which no job may ever read again.

A rerun once only listed them: a `final.pt` garbled after its model was recorded was
never found, and the model's records named weights no file held. Now the folder's
settling (`workers.core.lineage.set_aside_stale`) reads a checkpoint written after its
model's trials record, which a sweep never does, and remembers those found intact;
damage that keeps the mtime (bit rot) is the scrub's (`python -m analysis verify`).

Real checkpoints (`workers.base.checkpoints.save`) and real records; no Ray, no training."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import workers.core.lineage as lineage
from workers.base import checkpoints
from workers.catalog import TrialConfig
from workers.core.lineage import INTACT, set_aside_stale
from workers.core.records import config_columns, to_table
from workers.core.storage import Storage


@pytest.fixture
def sweep(tmp_path) -> tuple[Storage, list[str]]:
    """Two models recorded `ok`, each with its checkpoints written before its records."""
    store = Storage.open(str(tmp_path / "s"))
    keys = []
    for width in (2, 3):
        cfg = TrialConfig.from_flat({"width": width, "seed": 0})
        for name in ("init", "final"):
            checkpoints.save(store, cfg.trial_key, name, {"model": {"w": torch.full((64,), float(width))}})
        store.write_table("trials", cfg.trial_key, to_table([{**config_columns(cfg, "s"), "status": "ok"}]))
        keys.append(cfg.trial_key)
    later = os.stat(store.path(f"trials/{keys[-1]}.parquet")).st_mtime_ns + 10**9
    for key in keys:  # records clearly after checkpoints, whatever the clock's tick
        os.utime(store.path(f"trials/{key}.parquet"), ns=(later, later))
    return store, keys


def _touch(path: str, seconds: int) -> None:
    """Set `path`'s mtime `seconds` after its model's record (a copy, or a rewrite)."""
    stamp = os.stat(path).st_mtime_ns + seconds * 10**9
    os.utime(path, ns=(stamp, stamp))


def _garble(path: str) -> None:
    """Flip 8 bytes in the middle; the mtime is put back (what a listing shows is kept)."""
    before = os.stat(path)
    data = bytearray(Path(path).read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _reads(monkeypatch) -> list[bytes]:
    """Every checkpoint settling checks, in order."""
    seen: list[bytes] = []
    real = lineage.intact
    monkeypatch.setattr(lineage, "intact", lambda data: seen.append(data) or real(data))
    return seen


def test_a_final_checkpoint_rewritten_after_its_record_is_read_and_its_model_trained_again(sweep, monkeypatch,
                                                                                             figures):
    store, (kept, victim) = sweep
    held = len(list(Path(store.root).glob("checkpoints/*/*.pt")))
    reads = _reads(monkeypatch)
    assert set_aside_stale(store) == [] and reads == []  # as a sweep wrote it: nothing read
    final = store.path(f"checkpoints/{victim}/final.pt")
    _garble(final)
    _touch(final, 20)  # written again after the record
    lines = set_aside_stale(store)
    assert len(reads) == 1
    assert lines == [f"warning: model {victim} is recorded as trained but checkpoints/{victim}/final.pt was "
                     "written again since and is damaged (moved to _quarantine/); its records moved to "
                     "_quarantine/, training it again"]
    assert store.exists(f"_quarantine/checkpoints/{victim}/final.pt")
    assert not store.exists(f"trials/{victim}.parquet") and store.exists(f"trials/{kept}.parquet")
    figures("checkpoint-rots", "garbled `final.pt` written after its record: found at start-up ({read} of {held} checkpoints read), moved to "
            "`_quarantine/` with its model's records, {retrain} model to train again", read=len(reads),
            held=held, retrain=sum("training it again" in line for line in lines))


def test_checkpoints_of_a_copied_folder_are_read_once_and_a_later_change_is_still_seen(sweep, monkeypatch):
    store, keys = sweep
    paths = [store.path(f"checkpoints/{key}/{name}.pt") for key in keys for name in ("init", "final")]
    for path in paths:  # a copy that did not keep mtimes: every checkpoint newer than its record
        _touch(path, 30)
    reads = _reads(monkeypatch)
    assert set_aside_stale(store) == [] and len(reads) == 4
    remembered = json.loads(Path(store.path(INTACT)).read_bytes())
    assert sorted(remembered) == sorted(f"checkpoints/{k}/{n}.pt" for k in keys for n in ("init", "final"))
    assert set_aside_stale(store) == [] and len(reads) == 4  # remembered: none read again
    _garble(paths[0])
    _touch(paths[0], 5)  # changed since it was found intact
    lines = set_aside_stale(store)
    assert len(reads) == 5 and lines[0].startswith(f"warning: model {keys[0]} is recorded as trained but "
                                                   f"checkpoints/{keys[0]}/init.pt was written again since")
    assert f"checkpoints/{keys[0]}/init.pt" not in json.loads(Path(store.path(INTACT)).read_bytes())


def test_a_rotted_checkpoint_is_found_by_the_scrub_not_at_start_up(sweep, monkeypatch, figures):
    store, (kept, victim) = sweep
    _garble(store.path(f"checkpoints/{victim}/init.pt"))  # bit rot: size and mtime kept
    reads = _reads(monkeypatch)
    assert set_aside_stale(store) == [] and reads == []  # start-up reads no checkpoint as written
    scrub = subprocess.run([sys.executable, "-m", "analysis", "verify", store.root],
                           capture_output=True, text=True, timeout=120)
    assert scrub.returncode == 1, scrub.stdout + scrub.stderr
    assert f"checkpoints/{victim}/init.pt is damaged" in scrub.stdout
    verified = re.search(r"verified (\d+) checkpoints: (\d+) moved to _quarantine/", scrub.stdout)
    assert verified and verified.groups() == ("4", "1"), scrub.stdout
    assert set_aside_stale(store) == [f"warning: model {victim} is recorded as trained but "
                                      f"checkpoints/{victim}/init.pt is gone; its records moved to _quarantine/, "
                                      "training it again"]
    figures("checkpoint-rots", "rotted `init.pt` (mtime kept): {read} checkpoints read at start-up, found by "
            "`analysis verify` ({moved} of {verified} set aside, exit {exit})", read=len(reads),
            moved=int(verified.group(2)), verified=int(verified.group(1)), exit=scrub.returncode)


def test_a_members_file_without_its_pack_checkpoint_is_removed_and_one_with_it_kept(sweep):
    store, keys = sweep
    store.write_bytes("checkpoints/pack-left/members.json", json.dumps(["a", "b"]).encode())
    store.write_bytes("checkpoints/pack-resumable/members.json", json.dumps(["c", "d"]).encode())
    checkpoints.save(store, "pack-resumable", "last", {"epoch": 1})
    set_aside_stale(store)
    assert not store.exists("checkpoints/pack-left/members.json")
    assert store.exists("checkpoints/pack-resumable/members.json") and store.exists("checkpoints/pack-resumable/last.pt")
    assert lineage.resumable_packs(store) == (("c", "d"),)
