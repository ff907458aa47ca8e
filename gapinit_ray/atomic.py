"""Atomic local file writes: readers see the old file or the new one, never half of one.

The data goes to a temporary name in the same directory (so the rename cannot cross filesystems), is
fsynced, then renamed over the final name with ``os.replace``; on any failure the temporary file is
removed. Names of temporaries start with ``.`` so directory readers can skip them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def temp_name(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically, creating parent dirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
