"""A machine-wide lease on heavy Java scorers: at most N JVMs of METEOR / SPICE at once on this machine.

Named "lease", not "slot": the sweep's Train-slot actor (:mod:`gapinit_ray.slots`) is another thing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

#: how often an evaluation waiting for a free Java lease tries again
JAVA_LEASE_POLL_S = 0.2


@contextlib.contextmanager
def java_lease(limit: int | None, *, name: str = "java", poll_s: float = JAVA_LEASE_POLL_S):
    """Hold one of ``limit`` machine-wide leases called ``name`` (None: no limit) for the block.

    A lease is an exclusive ``flock`` on one of ``limit`` files in a per-user directory under the temp
    dir, so the limit holds across every process on this machine (every Train worker of every sweep),
    and a lease is freed when its holder leaves the block or dies (the kernel drops the lock). A caller
    finding every lease taken retries every ``poll_s`` seconds.
    """
    if limit is None:
        yield
        return
    import fcntl
    import time

    root = Path(tempfile.gettempdir()) / f"gapinit-{os.getuid()}-{name}-slots"
    root.mkdir(exist_ok=True)
    while True:
        for i in range(limit):
            fd = os.open(root / f"{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        time.sleep(poll_s)
