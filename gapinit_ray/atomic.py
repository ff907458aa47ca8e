"""Atomic local file writes: readers see the old file or the new one, never half of one.

The data goes to a temporary name in the same directory (so the rename cannot cross filesystems), is
fsynced, then renamed over the final name with ``os.replace``; on any failure the temporary file is
removed. Names of temporaries start with ``.`` so directory readers can skip them.

A write refused by the filesystem (read-only directory, full disk or quota, file size limit) raises
:class:`~gapinit_ray.errors.StorageError`: one line naming the path, the cause and what to do; the
final name keeps its previous content (or stays absent) and no temporary is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

from gapinit_ray.errors import StorageError

_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def temp_name(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically, creating parent dirs."""
    path = Path(path)
    tmp = temp_name(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):  # (a name too long to create is too long to remove)
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            refused = storage_error(path, e)
            if refused is not None:
                raise refused from None
        raise
    return path


def storage_error(path: str | os.PathLike, e: OSError) -> StorageError | None:
    """The user-facing error of a write of ``path`` the filesystem refused (None: another I/O error)."""
    where = Path(path).parent
    if e.errno in _READ_ONLY:
        what, todo = "the directory is read-only", f"make {where} writable (or use another storage)"
    elif e.errno in _FULL:
        what, todo = "the disk or quota is full", f"free space under {where} (or use another storage)"
    else:
        return None
    err = StorageError(
        f"{path}: cannot write ({what}: {e.strerror or e}); {todo}, then run the command again "
        "(`gapinit resume <sweep dir>` continues a sweep where it stopped)"
    )
    err.errno = e.errno  # (a filename or strerror would make str() the plain OSError form)
    return err
