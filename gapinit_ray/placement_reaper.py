"""Placement groups that a stopped job left reserved, given back while a sweep runs on a cluster.

Ray 2.60 can keep a placement group reserved after the job that made it has ended: when a sweep is
stopped (``gapinit stop``) while one of its Ray Train runs is reserving its workers (the Train
controller creates the group, then the cleaner actor that would remove it; the job's teardown cancels
the cleaner), the group is owned by nothing any more and its CPUs/GPUs stay taken, so the next sweep on
the cluster -- the stopped one resubmitted, too -- waits for resources forever. Seen on a two-node test
cluster: both nodes' only CPU held by two such groups ten minutes after the stop.

A sweep on a cluster (not the embedded local Ray, which starts fresh every run) therefore looks every
:data:`REAP_EVERY_S` for groups that are not detached, still hold their resources and were created by a
job that has ended, and removes them, one line each on stderr. A group of a job that has ended is of no
use to anyone: Ray itself removes such groups when it sees their job end, and detached groups (meant to
outlive their job) are never touched. Public APIs only: the state API (needs the dashboard, as Ray Jobs
do) and ``remove_placement_group``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator

#: seconds between two looks for leaked placement groups
REAP_EVERY_S = 10.0

#: job states after which nothing of the job runs (Ray Jobs' terminal states; a plain driver's job that
#: has ended is listed as SUCCEEDED)
ENDED = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


def _value(x) -> str:
    return str(getattr(x, "value", x))


def leaked(groups: Iterable, ended_jobs: set[str]) -> list[str]:
    """Ids of the placement groups in ``groups`` (state API records) that still hold resources, are not
    detached, and were created by one of ``ended_jobs``."""
    return [
        g.placement_group_id
        for g in groups
        if _value(g.state) == "CREATED" and not g.is_detached and g.creator_job_id in ended_jobs
    ]


def _address() -> str:
    """The GCS address of the cluster this process is connected to: the state API given no address
    would look up the newest cluster started on this machine, which need not be this one."""
    import ray

    return ray.get_runtime_context().gcs_address


def ended_jobs() -> set[str]:
    """Ray job ids (hex) of the connected cluster's jobs that have ended."""
    from ray.util.state import list_jobs

    jobs = list_jobs(address=_address(), raise_on_missing_output=False)
    return {j.job_id for j in jobs if j.job_id and _value(j.status) in ENDED}


def remove(group_id: str) -> None:
    """Remove the placement group with hex id ``group_id`` (its resources go back to the cluster)."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))


def reap_once() -> list[str]:
    """Remove every leaked placement group of the connected cluster now; returns their ids."""
    from ray.util.state import list_placement_groups

    groups = list_placement_groups(
        address=_address(),
        filters=[("state", "=", "CREATED")],
        detail=True,
        limit=10_000,
        raise_on_missing_output=False,
    )
    from ray.util.placement_group import placement_group_table

    # only groups this process's own cluster holds: without a dashboard of its own, the state API falls
    # back to http://127.0.0.1:8265, which may be another cluster on the machine
    ours = placement_group_table()
    gone = [g for g in leaked(groups, ended_jobs()) if ours.get(g, {}).get("state") == "CREATED"]
    for group_id in gone:
        remove(group_id)
        print(
            f"gapinit: gave back placement group {group_id}, left reserved by a job that has ended",
            file=sys.stderr,
        )
    return gone


@contextlib.contextmanager
def placement_reaper(every_s: float = REAP_EVERY_S) -> Iterator[None]:
    """While the block runs on a cluster: :func:`reap_once` every ``every_s`` in a daemon thread. On the
    embedded local Ray nothing (it starts fresh every run). A look that fails (the dashboard busy or
    gone) is skipped quietly; the sweep itself reports an unreachable cluster."""
    from gapinit_ray.cluster import embedded, periodic

    if embedded():
        yield
        return

    def tick() -> bool:
        with contextlib.suppress(Exception):
            reap_once()
        return False

    with periodic(every_s, tick, "gapinit-placement-reaper"):
        yield
