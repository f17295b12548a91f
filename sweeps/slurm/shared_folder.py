"""Can every node of a Slurm job see the sweep folder?

Every node writes records and checkpoints into the sweep folder, and a resubmitted job
may run on other nodes than the last one, so the folder must be on a file system that
all nodes mount (NFS, Lustre, GPFS, BeeGFS, CephFS, ...) or on an object store (`s3://`,
`gs://`). Records stay atomic there: each is written under a temporary name in its own
folder and renamed within that folder (`workers.core.storage`), a rename that NFS and the
parallel file systems make atomic; nothing is appended.

Whether a path is shared cannot be proven from the login node, so only what is
certainly node-local is refused: the usual scratch folders (`/tmp`, `/var/tmp`,
`/dev/shm`, `$TMPDIR`) and memory file systems. Everything else is accepted, and its
file-system type is reported so the user can judge.
"""

from __future__ import annotations

import os

from workers.core.errors import ConfigError
from workers.core.storage import is_uri

LOCAL_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm")
MEMORY_FS = {"tmpfs", "ramfs"}
NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "ceph", "cifs", "smb3", "panfs", "wekafs", "glusterfs",
              "fuse.glusterfs", "fuse.ceph", "fuse.sshfs", "9p", "virtiofs"}


def mount_type(path: str, mounts_file: str = "/proc/mounts") -> str:
    """File-system type of the mount holding `path` (the longest mount point above it),
    or "" where the mount table cannot be read (not Linux)."""
    best, kind = "", ""
    try:
        with open(mounts_file) as mounts:
            for line in mounts:
                fields = line.split()
                point = fields[1].replace("\\040", " ")
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        return ""
    return kind


def _local_folder(path: str) -> str | None:
    """The node-local scratch folder `path` lies in, if any."""
    scratch = [*LOCAL_FOLDERS, os.environ.get("TMPDIR", "")]
    real = os.path.realpath(path)
    for folder in filter(None, scratch):
        folder = os.path.realpath(folder)
        if folder != "/" and (real == folder or real.startswith(folder + "/")):
            return folder
    return None


def check_shared(location: str, allow_local: bool) -> str:
    """Refuse a storage location the job's nodes certainly cannot share; return a short
    description of it for the submit summary (`ConfigError` naming `--storage`)."""
    if is_uri(location):
        return "object store: every node writes to it"
    path = os.path.abspath(os.path.expanduser(location))
    kind = mount_type(path)
    local = _local_folder(path)
    if local is None and kind in MEMORY_FS:
        local = f"a {kind} mount"
    if local and not allow_local:
        raise ConfigError("--storage", f"{path} is local to this machine ({local}); a Slurm job's nodes need a "
                          f"shared file system or s3://, so give the sweep command a --storage there "
                          f"(or --allow-local-storage when this machine is the cluster's only node)")
    if local:
        return f"local to this machine ({local}), allowed by --allow-local-storage"
    if kind in NETWORK_FS:
        return f"{kind}, a network file system"
    return f"{kind or 'unknown file system'}: make sure every node mounts it"
