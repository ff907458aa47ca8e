"""Resource requests checked against what a cluster (a real local Ray) or this machine has: a sweep
that waits for nodes says what it waits for, every interval; `validate` notes what this machine
cannot hold."""

from __future__ import annotations

import time

from gapinit_ray.cluster import check_resources, local_resources, resource_problem, resource_watch
from gapinit_ray.spec import spec_from_dict

from .test_bad_input import gapinit, raw_spec, write_spec


def test_a_sweep_waiting_for_resources_says_what_it_waits_for_every_interval(
    ray_local, tmp_path, capsys
) -> None:
    raw = raw_spec(tmp_path)
    raw.setdefault("resources", {})["cpus_per_worker"] = 100
    spec = spec_from_dict(raw)
    # the test's Ray is not the embedded one (a node may join it): a warning, and the problem returned
    problem = check_resources(spec)
    assert problem and problem.startswith("resources.cpus_per_worker=100: no node can hold one worker")
    assert "warning: resources.cpus_per_worker=100" in capsys.readouterr().err
    with resource_watch(spec, problem, every_s=0.3):
        time.sleep(1.2)
        spec.resources.cpus_per_worker = 1  # as if a big enough node joined
        time.sleep(1.0)
    err = capsys.readouterr().err.splitlines()
    waits = [
        x for x in err if x.startswith("gapinit: waiting 0 min for resources: resources.cpus_per_worker=100")
    ]
    assert len(waits) >= 2, err
    assert err[-1].startswith("gapinit: the cluster can hold a trial's workers now")  # then quiet
    with resource_watch(spec, None, every_s=0.1):  # nothing to wait for: no thread, no line
        time.sleep(0.3)
    assert capsys.readouterr().err == ""


def test_resource_problems_against_given_nodes() -> None:
    raw = raw_spec_like()
    spec = spec_from_dict(raw)
    assert resource_problem(spec, [{"CPU": 2.0, "GPU": 0.0}]) is None
    spec.resources.gpus_per_worker = 1
    assert resource_problem(spec, [{"CPU": 2.0, "GPU": 0.0}]).startswith("resources.gpus_per_worker=1")
    spec.resources.gpus_per_worker = 0
    spec.resources.workers_per_trial, spec.resources.cpus_per_worker = 5, 1
    assert "holds 4 such worker(s)" in resource_problem(spec, [{"CPU": 2.0}, {"CPU": 2.0}])
    assert local_resources(3)["CPU"] == 3.0


def raw_spec_like() -> dict:
    import tempfile
    from pathlib import Path

    return raw_spec(Path(tempfile.mkdtemp()))


def test_validate_notes_what_this_machine_cannot_hold(tmp_path) -> None:
    raw = raw_spec(tmp_path)
    raw.setdefault("resources", {})["gpus_per_worker"] = 1
    spec = write_spec(tmp_path, raw)
    r = gapinit(tmp_path, "validate", spec)
    if local_resources()["GPU"] >= 1:
        assert "note:" not in r.stderr
    else:  # a spec for a GPU cluster is still valid: a note, exit 0
        assert r.returncode == 0, r.stderr
        assert "note: `gapinit run` on this machine would refuse it: resources.gpus_per_worker=1" in r.stderr
