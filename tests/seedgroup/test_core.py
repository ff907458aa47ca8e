"""The pure rung book on hand-made reports (no Ray cluster; Ray's ASHA only as the reference)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from gapinit_ray.seedgroup.core import (
    ACTIVE,
    CONTINUE,
    DONE,
    ERRORED,
    STOP,
    WAIT,
    MemberPlan,
    RungBook,
    Schedule,
    asha_milestones,
)

from ..conftest import modules_loaded_by

M = "val_cider"


def book(**kw) -> RungBook:
    args = {"metric": M, "mode": "max", "max_t": 9, "grace_period": 1, "reduction_factor": 3}
    args.update(kw)
    return RungBook(Schedule(**args))


def test_the_core_imports_no_ray():
    imports = "import gapinit_ray.seedgroup.core, gapinit_ray.seedgroup.state, gapinit_ray.seedgroup.ids"
    assert modules_loaded_by(imports, "ray") == [False]


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # Ray's cutoff on an all-NaN rung
@pytest.mark.parametrize(
    ("grace", "eta", "max_t", "mode"),
    [(1, 3, 27, "max"), (1, 2, 16, "min"), (2, 2.5, 30, "max"), (1, 4, 100, "max"), (3, 3.0, 10, "min")],
)
def test_one_seed_per_group_decides_like_rays_asha(grace, eta, max_t, mode):
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import AsyncHyperBandScheduler

    for stream_seed in range(3):
        rng = random.Random(stream_seed)
        ours = book(mode=mode, max_t=max_t, grace_period=grace, reduction_factor=eta, group_size=1)
        ray = AsyncHyperBandScheduler(
            time_attr="epoch",
            metric=M,
            mode=mode,
            max_t=max_t,
            grace_period=grace,
            reduction_factor=eta,
            brackets=1,
        )
        trials = [Trial("__fake", config={"lr": i}, trial_id=f"t{i:02d}", stub=True) for i in range(30)]
        for t in trials:
            ours.add(t.trial_id, f"g{t.trial_id}")
            ray.on_trial_add(None, t)
        epoch = dict.fromkeys((t.trial_id for t in trials), 0)
        alive = list(trials)
        ours_log, ray_log = [], []
        while alive:
            t = rng.choice(alive)
            epoch[t.trial_id] += 1
            v = float(rng.randint(0, 20))  # integer values: plenty of ties at the cutoff
            if rng.random() < 0.03:
                v = float("nan")  # NaN continues, like in Ray
            d_ours = ours.report(t.trial_id, epoch[t.trial_id], v)
            d_ray = ray.on_trial_result(None, t, {"epoch": epoch[t.trial_id], M: v})
            ours_log.append(STOP if d_ours == DONE else d_ours)
            ray_log.append(d_ray)
            if d_ray == STOP:
                alive.remove(t)
                ours.complete(t.trial_id)
        assert ours_log == ray_log
        assert WAIT not in ours_log and ours_log.count(STOP) == len(trials)


def _two_groups(b_values, mode="max"):
    """η=2, milestones 1 and 2. Group A: two seeds at 10 (1.0 in min mode); group B: `b_values`."""
    b = book(mode=mode, max_t=4, reduction_factor=2)
    for g in "ab":
        for i in range(2):
            b.add(f"{g}{i}", g)
    a_value = 10.0 if mode == "max" else 1.0
    assert b.report("a0", 1, a_value) == WAIT
    assert b.report("a1", 1, a_value) == CONTINUE  # first group at the rung: nothing to compare with
    return b, [b.report("b0", 1, b_values[0]), b.report("b1", 1, b_values[1])]


def test_a_group_is_judged_on_its_mean_and_stopped_or_promoted_whole():
    b, decisions = _two_groups((15.0, 1.0))  # per-trial ASHA would keep b0 (15 >= 10) and stop b1
    assert decisions == [WAIT, STOP]  # mean 8 < 10
    assert b.plan("b0") == MemberPlan("stop", 0) and b.plan("b1") == MemberPlan("stop", 0)
    assert b.members["b0"].status == b.members["b1"].status == "stopped"
    assert b.rung_state()["rungs"][1]["group_means"]["b"] == pytest.approx(8.0)
    b, decisions = _two_groups((30.0, 2.0))
    assert decisions == [WAIT, CONTINUE]  # one bad seed, mean 16 >= 10: both go on
    assert b.plan("b0") == MemberPlan("train", 1, 2.0)


def test_min_mode_uses_the_flipped_cutoff():
    b, decisions = _two_groups((0.2, 2.6), mode="min")
    assert decisions == [WAIT, STOP]  # mean loss 1.4 > 1.0
    assert b.cutoff(0) == pytest.approx(1.2)  # median of 1.0 and 1.4


def test_plans_follow_the_first_undecided_rung():
    b = book(group_size=2)
    for g in "ab":
        for i in range(2):
            b.add(f"{g}{i}", g)
    assert b.plan("a0") == MemberPlan("train", 0, 1.0) and b.plan("zz") == MemberPlan("unknown")
    assert b.report("a0", 1, 5.0) == WAIT
    assert b.plan("a0") == MemberPlan("wait", 0, 1.0) and b.waiting("a0") == 0
    assert b.report("a0", 1, 5.0) == WAIT  # a restarted member reporting the rung again: not twice
    assert b.members["a0"].values == {0: 5.0}
    assert b.report("a1", 1, 7.0) == CONTINUE
    assert b.plan("a0") == MemberPlan("train", 1, 3.0)
    b.report("a0", 3, 6.0)
    b.report("a1", 3, 6.0)
    assert b.plan("a0") == MemberPlan("train", None, None)  # past the last rung: to the end
    assert b.report("a0", 9, 6.0) == DONE and b.members["a0"].status == "completed"


def test_errored_member_is_left_out_and_the_group_proceeds_on_the_rest():
    b = book()
    for i in range(3):
        b.add(f"a{i}", "a")
    b.report("a0", 1, 4.0)
    b.report("a1", 1, 6.0)
    b.settle()
    assert b.groups["a"].decisions == {}
    b.set_status("a2", ERRORED)
    b.settle()
    assert b.groups["a"].decisions == {0: CONTINUE} and b.rungs[0]["a"] == pytest.approx(5.0)
    b.set_status("a2", ACTIVE)  # a retried member is waited for again at the next rung


def test_group_size_waits_for_seeds_not_created_yet_unless_partial():
    b = book(group_size=3)
    b.add("a0", "a")
    b.add("a1", "a")
    assert b.report("a0", 1, 1.0) == WAIT and b.report("a1", 1, 1.0) == WAIT
    assert not b.on_its_way("a0", ["a1"])  # the group is not whole
    b.settle(allow_partial=True)
    assert b.groups["a"].decisions == {0: CONTINUE}
    with pytest.raises(ValueError, match="group_size=3"):
        for i in range(2, 4):
            b.add(f"a{i}", "a")


def test_a_member_may_hold_only_while_every_other_member_still_to_report_runs():
    b = book(group_size=3)
    for t in "xyz":
        b.add(t, "g")
    b.report("x", 1, 0.5)
    assert b.on_its_way("x", ["x", "y", "z"])
    assert not b.on_its_way("x", ["x", "y"])  # z waits for a slot: x must free its own
    b.report("y", 1, 0.7)
    assert b.on_its_way("x", ["z"])  # y already reported
    b.set_status("z", ERRORED)
    assert b.on_its_way("x", [])


def test_member_added_to_a_stopped_group_is_stopped():
    b, _ = _two_groups((1.0, 1.0))
    b.add("b9", "b")
    assert b.members["b9"].status == "stopped" and b.plan("b9").action == "stop"


def test_settle_looks_only_at_groups_in_flight():
    b = book()
    for g in range(50):
        b.add(f"t{g}", f"g{g}")
        b.report(f"t{g}", 1, float(g))
    b.settle()
    assert not b._open  # every group decided at its rung: nothing left to look at


def test_events_rebuild_the_same_book():
    b = book(group_size=2)
    rng = np.random.default_rng(0)
    for g in range(6):
        for s in range(2):
            b.add(f"g{g}s{s}", f"g{g}", label=f"init=g{g}")
    for e in (1, 2, 3):
        for g in range(6):
            for s in range(2):
                if b.plan(f"g{g}s{s}").action == "train":
                    b.report(f"g{g}s{s}", e, float(rng.normal(g, 1)))
    again = RungBook(b.schedule)
    for event in b.events():
        again.apply(event)
    assert again.rung_state() == b.rung_state() and again.labels == b.labels
    assert again.num_stopped == b.num_stopped > 0


#: schedules the core refuses (the Tune adapter refuses them too: seedgroup/test_tune.py)
BAD_SCHEDULES = [
    {"max_t": 0},
    {"grace_period": 10},
    {"reduction_factor": 1.0},
    {"mode": "best"},
    {"group_size": 0},
    {"group_size": True},
]


@pytest.mark.parametrize("kw", BAD_SCHEDULES)
def test_bad_schedules_raise_value_error(kw):
    with pytest.raises(ValueError):
        book(**kw)


def test_milestones_are_rays_below_max_t():
    assert asha_milestones(1, 9, 3) == [1, 3]
    assert asha_milestones(1, 10, 3) == [1, 3, 9]
