"""Train slots of a seed-group sweep on a real local Ray: order of service, release of a dead holder."""

from __future__ import annotations

import time

import pytest

from gapinit_ray.seedgroup.slots import start_slots, train_slot


def _granted(ref, timeout: float = 0.5) -> bool:
    import ray

    ready, _ = ray.wait([ref], timeout=timeout)
    return bool(ready)


def test_slots_serve_continuing_members_then_the_earliest_group_then_in_order(ray_local) -> None:
    ray = ray_local
    gate = start_slots("test-slots-order", 1)
    ray.get(gate.acquire.remote("a1", "A", False))  # the only slot, to group A's first member
    # requests while it is held: a new group first, then group A's next member, then a member (of A)
    # continuing after its group was promoted
    b1 = gate.acquire.remote("b1", "B", False)
    time.sleep(0.3)
    a2 = gate.acquire.remote("a2", "A", False)
    time.sleep(0.3)
    a3 = gate.acquire.remote("a3", "A", True)
    assert not _granted(b1) and not _granted(a2) and not _granted(a3)
    assert ray.get(gate.state.remote())["waiting"] == ["a3", "a2", "b1"]

    ray.get(gate.release.remote("a1"))
    assert _granted(a3, 5) and not _granted(a2) and not _granted(b1)
    ray.get(gate.release.remote("a3"))
    assert _granted(a2, 5) and not _granted(b1)  # group A (seen first) before group B
    ray.get(gate.release.remote("a2"))
    assert _granted(b1, 5)
    ray.get(gate.release.remote("b1"))
    assert ray.get(gate.state.remote()) == {"free": 1, "holders": {}, "waiting": []}
    ray.kill(gate)


def test_the_trials_starting_together_are_served_by_group_rank_not_by_arrival(ray_local) -> None:
    ray = ray_local
    gate = start_slots("test-slots-start", 2, expect=4)  # 4 trials start at once, 2 slots
    # the groups' members arrive interleaved; the grid puts group G0 first
    order = [("b1", "G1", 1), ("a1", "G0", 0), ("b2", "G1", 1)]
    refs = {}
    for tid, group, rank in order:
        refs[tid] = gate.acquire.remote(tid, group, False, None, rank)
        time.sleep(0.2)
    assert not any(_granted(r) for r in refs.values())  # 3 of the 4 expected: nobody yet
    refs["a2"] = gate.acquire.remote("a2", "G0", False, None, 0)
    assert _granted(refs["a1"], 5) and _granted(refs["a2"], 5)  # the whole of G0, though it came later
    assert not _granted(refs["b1"]) and not _granted(refs["b2"])
    ray.kill(gate)

    # fewer trials than expected (e.g. one failed before asking): the window ends after window_s
    from gapinit_ray.seedgroup.slots import TrainSlots

    late = TrainSlots.options(name="test-slots-window").remote(1, 5, 1.0)
    ref = late.acquire.remote("x", "G", False)
    assert not _granted(ref, 0.3) and _granted(ref, 5)
    ray.kill(late)


def test_released_by_the_driver_when_its_holder_died_and_the_block_form_gives_it_back(ray_local) -> None:
    ray = ray_local
    gate = start_slots("test-slots-dead", 1)

    @ray.remote(num_cpus=0)
    def hold_and_die() -> None:
        import os

        ray.get(gate.acquire.remote("dead", "G", False))
        os._exit(1)  # dies holding the slot (no release)

    with pytest.raises(ray.exceptions.RayError):
        ray.get(hold_and_die.options(max_retries=0).remote())
    waiting = gate.acquire.remote("next", "G", False)
    assert not _granted(waiting)
    # the sweep driver releases a trial's permits when Tune reports it errored or complete
    ray.get(gate.release.remote("dead"))
    assert _granted(waiting, 5)
    ray.get(gate.release.remote("next"))

    with train_slot("test-slots-dead", "t", "G", False):
        assert ray.get(gate.state.remote())["holders"] == {"t": 1}
        assert ray.get(gate.holders.remote()) == ([], [])  # no Tune id given
    with train_slot("test-slots-dead", "t", "G", False, tune_id="T7"):
        # holds a permit; its run has no workers yet: (training, starting)
        assert ray.get(gate.holders.remote()) == ([], ["T7"])
        ray.get(gate.started.remote("T7"))
        assert ray.get(gate.holders.remote()) == (["T7"], [])  # who trains now, by Tune id
    assert ray.get(gate.state.remote())["holders"] == {}
    assert ray.get(gate.holders.remote()) == ([], [])
    with train_slot(None, "t", "G", False):  # no gate: nothing to acquire
        pass
    ray.kill(gate)


def test_a_killed_slot_actor_is_restarted_and_a_waiting_trial_is_served_by_the_new_one(ray_local) -> None:
    """The slot actor is no single point of failure: killed (as by a node or process fault), Ray
    restarts it, the request that waited on the dead one is retried on the new one and served."""
    ray = ray_local
    gate = start_slots("test-slots-restart", 1, expect=2)
    refs = {t: gate.acquire.remote(t, "A", False, group_rank=0) for t in ("a", "b")}  # the 2 expected
    ray.wait(list(refs.values()), num_returns=1, timeout=30)
    (held,) = ray.get(gate.state.remote())["holders"]
    other = "b" if held == "a" else "a"
    assert not _granted(refs[other])
    ray.kill(gate, no_restart=False)
    # the restarted actor knows no holder and serves at once (no start-up window): the waiting request,
    # retried on it, gets a permit
    assert _granted(refs[other], 60)
    assert ray.get(gate.state.remote()) == {"free": 0, "holders": {other: 1}, "waiting": []}
    ray.get(gate.release.remote(held))  # a permit of the dead actor's: gives back nothing
    assert ray.get(gate.state.remote())["free"] == 0
    ray.get(gate.release.remote(other))
    assert ray.get(gate.state.remote()) == {"free": 1, "holders": {}, "waiting": []}
    ray.kill(gate)
