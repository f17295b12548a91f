"""A checksum trailer for checkpoint files, readable without torch.

`torch.load` reads a file whose tensor bytes were garbled without an error, and
resuming from (or measuring) such weights would be recorded as valid. So a checkpoint's
bytes end with a tag and a hash of what precedes it (`seal`), checked on every load
(`unseal`, `workers.base.checkpoints`) and, without loading, by the folder's settling and
the scrub (`intact`, `workers.core.lineage`). Files without the tag (written before it) are
taken as they are; `torch.load` itself ignores the trailer (`init_from`).
"""

from __future__ import annotations

import hashlib
import io
import zipfile

from workers.core.errors import CheckpointError

TAG = b"LSCK1"
CHECKSUM_BYTES = 16


def seal(data: bytes) -> bytes:
    """`data` with its trailer."""
    return data + TAG + _checksum(data)


def unseal(data: bytes, where: str) -> bytes:
    """The bytes `seal` was given, after checking them; `where` names the file in the
    CheckpointError of a mismatch. A file without a trailer is returned whole."""
    cut = len(data) - len(TAG) - CHECKSUM_BYTES
    body, trailer = data[:cut], data[cut:]
    if not trailer.startswith(TAG):
        return data  # written before checksums
    if _checksum(body) != trailer[len(TAG):]:
        raise CheckpointError(f"{where} cannot be read: its checksum does not match its bytes")
    return body


def intact(data: bytes) -> bool:
    """Whether a checkpoint's bytes are as written: the checksum of a sealed file, else
    the CRC of every member of torch's zip format (a file cut short has no trailer)."""
    try:
        body = unseal(data, "")
    except CheckpointError:
        return False
    if body is not data:
        return True
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def _checksum(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=CHECKSUM_BYTES).digest()
