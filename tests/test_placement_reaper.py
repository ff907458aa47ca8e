"""Placement groups a stopped job left reserved: which ones are given back, and the giving back on a real
Ray with its dashboard (the state API the reaper reads)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

from gapinit_ray.placement_reaper import leaked

from .conftest import ROOT


def _group(pid: str, job: str, state: str = "CREATED", detached: bool = False):
    return SimpleNamespace(placement_group_id=pid, creator_job_id=job, state=state, is_detached=detached)


def test_only_live_undetached_groups_of_ended_jobs_are_leaked() -> None:
    groups = [
        _group("a", "04000000"),  # the stopped job's Train group, still holding its CPU: leaked
        _group("b", "04000000", state="REMOVED"),  # already given back
        _group("c", "04000000", detached=True),  # meant to outlive its job
        _group("d", "05000000"),  # a job still running
        _group("e", "04000000", state="PENDING"),  # holds nothing yet
    ]
    assert leaked(groups, {"04000000"}) == ["a"]
    assert leaked(groups, set()) == []


REAL = """
import ray
from ray.util.placement_group import placement_group, placement_group_table
from gapinit_ray.placement_reaper import ended_jobs, reap_once, remove

ray.init(address="local", num_cpus=1, include_dashboard=True, logging_level="ERROR", log_to_driver=False)
pg = placement_group([{"CPU": 1}])
ray.get(pg.ready(), timeout=60)
pid = pg.id.hex()
me = ray.get_runtime_context().get_job_id()
assert me not in ended_jobs()
assert reap_once() == []  # this job is running: its group stays
assert placement_group_table()[pid]["state"] == "CREATED"
remove(pid)
assert placement_group_table()[pid]["state"] == "REMOVED"
print("ok")
"""


def test_a_running_jobs_group_stays_and_remove_gives_one_back() -> None:
    out = subprocess.run([sys.executable, "-c", REAL], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr[-3000:]
