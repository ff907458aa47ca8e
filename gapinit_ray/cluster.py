"""Where the work runs: an embedded local Ray (started and stopped by us) or an existing cluster."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from gapinit_ray.errors import GapinitError

TRAIN_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "86400"}


class ClusterError(GapinitError):
    """The Ray cluster cannot be reached or refused us."""


@contextlib.contextmanager
def ray_session(
    address: str | None = None, num_cpus: int | None = None, quiet: bool = True
) -> Iterator[None]:
    """Use the Ray already initialized in this process, connect to ``address`` (or ``RAY_ADDRESS``),
    or start an embedded local Ray for the duration of the block (and shut down only what we started)."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"log_to_driver": not quiet, "logging_level": "ERROR"} if quiet else {}
    # Trials wait for CPUs/GPUs on purpose (a paused seed-group member's slot goes to another trial);
    # Ray Train's default gives a worker group 60 s to be scheduled and started, then tears it down and
    # retries, which on a busy cluster turns waiting into a restart loop. Let them wait.
    env = {k: os.environ.get(k, v) for k, v in TRAIN_ENV.items()}
    os.environ.update(env)  # the embedded Ray's processes inherit the driver's environment
    kwargs["runtime_env"] = {"env_vars": env}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    except (ConnectionError, TimeoutError) as e:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}; check the address "
            "(ray://HEAD:10001 or HEAD:6379), that the head node is up, and RAY_AUTH_TOKEN if auth is on"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()
