"""Seed-group ASHA's Tune adapter driven by hand-made results and a fake controller (no Ray cluster).

The fake controller mirrors what ``TuneController`` 2.60 does around a scheduler: ``stop_trial`` calls
``on_trial_remove`` for PENDING/PAUSED trials and ``on_trial_complete`` for RUNNING ones before marking
them TERMINATED; ``choose_trial_to_run`` picks what starts next. Members wait at rungs inside their
trainable (the product's only mode): the simulated trainable reads its plan from the scheduler's state
files the way :mod:`gapinit_ray.seedgroup.trial_side` does, and returns by itself when its group is
stopped or it reached ``max_t``.
"""

from __future__ import annotations

import json
import pickle
import random
from typing import Any

import numpy as np
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from gapinit_ray.schedulers import SCHEDULER_KINDS, make_scheduler
from gapinit_ray.seedgroup.core import MemberPlan
from gapinit_ray.seedgroup.state import StateReader, state_path
from gapinit_ray.seedgroup.tune import SeedGroupASHA

from .test_core import BAD_SCHEDULES

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
M = "val_cider"


class FakeSearch:
    def __init__(self, finished: bool = False):
        self.finished = finished

    def is_finished(self) -> bool:
        return self.finished


class FakeController:
    """Just enough of TuneController for a scheduler: trials, stop_trial, search_alg."""

    def __init__(self, scheduler: TrialScheduler, *, finished: bool = False):
        self.scheduler = scheduler
        self.trials: list[Trial] = []
        self.stop_calls: list[str] = []
        self.last: dict[str, dict] = {}
        self.search_alg = FakeSearch(finished)

    def add(self, trial: Trial) -> Trial:
        self.trials.append(trial)
        self.scheduler.on_trial_add(self, trial)
        return trial

    def get_trials(self) -> list[Trial]:
        return list(self.trials)

    def stop_trial(self, trial: Trial) -> None:
        self.stop_calls.append(trial.trial_id)
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            return
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
        else:
            self.scheduler.on_trial_complete(self, trial, self.last.get(trial.trial_id, {}))
        trial.set_status(Trial.TERMINATED)

    def report(self, trial: Trial, epoch: float, value: float) -> str:
        """A result from a RUNNING trial, and Tune's reaction to the decision."""
        trial.set_status(Trial.RUNNING)
        result = {"epoch": epoch, M: value}
        decision = self.scheduler.on_trial_result(self, trial, result)
        self.last[trial.trial_id] = result
        if decision == STOP:
            self.stop_trial(trial)
        return decision

    def returned(self, trial: Trial) -> None:
        """The trainable returned by itself (its group stopped, or it reached max_t)."""
        self.scheduler.on_trial_complete(self, trial, self.last.get(trial.trial_id, {}))
        trial.set_status(Trial.TERMINATED)


def trial(tid: str, **config: Any) -> Trial:
    return Trial("__fake", config=config, trial_id=tid, stub=True)


def sgasha(**kw: Any) -> SeedGroupASHA:
    args = {"metric": M, "mode": "max", "max_t": 9, "grace_period": 1, "reduction_factor": 3}
    args.update(kw)
    return SeedGroupASHA(**args)


def make_values(n_configs: int, n_seeds: int, max_t: int, seed: int) -> dict[tuple[int, int], list[float]]:
    """Metric curves: config quality + a per-seed offset (some seeds much luckier) + per-epoch noise."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(0, 3, n_configs)
    out = {}
    for c in range(n_configs):
        for s in range(n_seeds):
            offset = rng.normal(0, 4)
            out[c, s] = [float(quality[c] + offset + 0.5 * e + rng.normal(0, 1)) for e in range(max_t + 1)]
    return out


def simulate(
    tmp_path,
    *,
    n_configs: int = 8,
    n_seeds: int = 3,
    max_t: int = 9,
    seed: int = 0,
    restore_at: int | None = None,
) -> tuple[list[tuple[str, int, str]], FakeController]:
    """A sweep against a fake controller: 2 groups' worth of trials alive at once (as the sweep's
    ``max_concurrent_trials`` = slots × seeds), each trainable asks the state file what to do (train:
    report its next epoch; wait: nothing; stop: return). With ``restore_at``, the driver "dies" after
    that many results: a scheduler unpickled as Tune had it at the start re-adds every trial and
    continues from the state files."""
    path = state_path(tmp_path / f"run{seed}")
    values = make_values(n_configs, n_seeds, max_t, seed)
    rng = random.Random(seed)
    sched = sgasha(state_path=path, group_size=n_seeds)
    at_start = pickle.dumps(sched)  # what tuner.pkl holds
    ctrl = FakeController(sched)
    cs = {}
    for c in range(n_configs):  # a configuration's seeds one after another (the sweep's grid order)
        for s in range(n_seeds):
            t = ctrl.add(trial(f"t{c:02d}{s}", init=f"cfg{c}", **{"lora.rank": 1}, seed=s))
            cs[t.trial_id] = (c, s)
    reader = StateReader(path)
    epoch = dict.fromkeys(cs, 0)
    log: list[tuple[str, int, str]] = []
    while True:
        running = [t for t in ctrl.trials if t.status == Trial.RUNNING]
        while len(running) < 2 * n_seeds and (chosen := ctrl.scheduler.choose_trial_to_run(ctrl)) is not None:
            assert chosen.status == Trial.PENDING
            chosen.set_status(Trial.RUNNING)
            running.append(chosen)
        if not running:
            break
        book = reader.book()
        plans = {t.trial_id: book.plan(t.trial_id) for t in running}
        for t in running:
            if plans[t.trial_id].action == "stop" or epoch[t.trial_id] >= max_t:
                ctrl.returned(t)
        movable = [t for t in running if plans[t.trial_id].action == "train" and epoch[t.trial_id] < max_t]
        if not movable:
            ctrl.scheduler.choose_trial_to_run(ctrl)  # a controller step: decides what errors unblocked
            continue
        t = rng.choice(sorted(movable, key=lambda x: x.trial_id))
        epoch[t.trial_id] += 1
        decision = ctrl.report(t, epoch[t.trial_id], values[cs[t.trial_id]][epoch[t.trial_id]])
        log.append((t.trial_id, epoch[t.trial_id], decision))
        assert_not_split(ctrl, epoch, max_t)
        if restore_at is not None and len(log) == restore_at:
            fresh = pickle.loads(at_start)
            ctrl.scheduler = fresh
            for tr in ctrl.trials:  # Tune re-adds every trial (each restarted trial at once, here)
                fresh.on_trial_add(ctrl, tr)
    assert all(t.status == Trial.TERMINATED for t in ctrl.trials)
    return log, ctrl


def assert_not_split(ctrl: FakeController, epoch: dict[str, int], max_t: int) -> None:
    """All members of a group share one fate: all stopped at the same rung, or all still in."""
    by_id = {t.trial_id: t for t in ctrl.trials}
    for key, g in ctrl.scheduler.rung_state()["groups"].items():
        if g["decision"] == "stopped":
            # no member trained past the stop rung's milestone
            assert all(epoch[t] <= g["stopped_at"] for t in g["members"]), (key, g)
        else:
            early = [t for t in g["members"] if by_id[t].status == Trial.TERMINATED and epoch[t] < max_t]
            assert not early, key


# ----------------------------------------------------------------------------- whole sweeps


@pytest.mark.parametrize("seed", range(4))
def test_a_group_is_never_split_and_is_judged_on_its_mean(seed, tmp_path):
    log, ctrl = simulate(tmp_path, seed=seed)
    state = ctrl.scheduler.rung_state()
    fates = [g["decision"] for g in state["groups"].values()]
    assert "stopped" in fates and "finished" in fates  # the stream exercised both outcomes
    assert {d for _, _, d in log} == {CONTINUE}  # Tune is never told to stop or pause a trial
    assert ctrl.stop_calls == []  # every member of a stopped group ended by itself
    for key, g in state["groups"].items():
        for milestone, means in ((m, r["group_means"]) for m, r in state["rungs"].items()):
            if key in means:
                vals = [g["values"][tid][milestone] for tid in g["members"]]
                assert means[key] == pytest.approx(np.mean(vals))


def test_per_trial_asha_splits_the_groups_seed_group_asha_keeps_together():
    """The same values through Ray's per-trial ASHA stop some seeds of a config and keep others."""
    split = 0
    for seed in range(6):
        values = make_values(8, 3, 9, seed)
        ray = AsyncHyperBandScheduler(
            time_attr="epoch", metric=M, mode="max", max_t=9, grace_period=1, reduction_factor=3
        )
        stopped_at: dict[tuple[int, int], int] = {}
        for e in range(1, 10):
            for (c, s), curve in values.items():
                if (c, s) in stopped_at:
                    continue
                t = trial(f"c{c}s{s}", init=c, seed=s)
                if e == 1:
                    ray.on_trial_add(None, t)
                if ray.on_trial_result(None, t, {"epoch": e, M: curve[e]}) == STOP:
                    stopped_at[c, s] = e
        split += sum(len({stopped_at.get((c, s)) for s in range(3)}) > 1 for c in range(8))
    assert split > 0


@pytest.mark.parametrize("restore_at", [1, 7, 20, 41])
def test_a_driver_restart_mid_stream_gives_identical_decisions(restore_at, tmp_path):
    baseline, base = simulate(tmp_path / "a", seed=3)
    assert restore_at < len(baseline)
    log, ctrl = simulate(tmp_path / "b", seed=3, restore_at=restore_at)
    assert log == baseline
    assert ctrl.scheduler.rung_state() == base.scheduler.rung_state()


# ----------------------------------------------------------------------------- hooks one by one


def _members(ctrl: FakeController, prefix: str, init: str, n: int = 2) -> list[Trial]:
    return [ctrl.add(trial(f"{prefix}{i}", init=init, seed=i)) for i in range(n)]


def test_the_state_file_tells_members_what_to_do_and_tune_always_hears_continue(tmp_path):
    path = state_path(tmp_path)
    sched = sgasha(state_path=path, group_size=2)
    ctrl = FakeController(sched)
    a, b = _members(ctrl, "a", "gap"), _members(ctrl, "b", "random")
    reader = StateReader(path)
    assert reader.book().plan("a0") == MemberPlan("train", 0, 1.0)  # milestones 1, 3
    assert ctrl.report(a[0], 1, 5.0) == CONTINUE
    assert reader.book().plan("a0") == MemberPlan("wait", 0, 1.0)
    assert ctrl.report(a[1], 1, 7.0) == CONTINUE
    assert reader.book().plan("a0") == MemberPlan("train", 1, 3.0)
    assert ctrl.report(b[0], 1, 0.0) == CONTINUE
    # b's mean (1.0) is below a's (6.0): stopped. A member holding its Train run at the rung (b0) is
    # not stopped through Tune (it would be killed mid-shutdown): it reads "stop" and ends itself
    assert ctrl.report(b[1], 1, 2.0) == CONTINUE
    assert reader.book().plan("b0") == reader.book().plan("b1") == MemberPlan("stop", 0)
    assert ctrl.stop_calls == [] and b[0].status == Trial.RUNNING
    assert sched.stopped_at(b[0]) == 1.0 and sched.stopped_at(a[0]) is None
    assert sched.rungs_reached(b[0]) == 1
    ctrl.report(a[0], 3, 6.0)
    ctrl.report(a[1], 3, 6.0)
    assert reader.book().plan("a0") == MemberPlan("train", None, None)  # past the last rung
    assert ctrl.report(a[0], 9, 6.0) == CONTINUE and a[0].status == Trial.RUNNING  # max_t: ends itself
    assert sched.rung_state()["groups"][sched.group_of(a[0])]["member_status"]["a0"] == "completed"


def test_members_of_a_stopped_group_that_never_started_are_stopped_by_tune(tmp_path):
    sched = sgasha(max_t=4, reduction_factor=2)
    ctrl = FakeController(sched)
    a, b = _members(ctrl, "a", "gap"), _members(ctrl, "b", "random")
    for t, v in ((a[0], 10.0), (a[1], 10.0), (b[0], 1.0), (b[1], 1.0)):
        ctrl.report(t, 1, v)
    late = ctrl.add(trial("b9", init="random", seed=9))  # PENDING, joins a stopped group
    assert sched.choose_trial_to_run(ctrl) is None
    assert late.status == Trial.TERMINATED and ctrl.stop_calls == ["b9"]


def test_errored_member_group_proceeds_with_the_remaining_mean():
    sched = sgasha()
    ctrl = FakeController(sched)
    a = _members(ctrl, "a", "gap", 3)
    ctrl.report(a[0], 1, 4.0)
    ctrl.report(a[1], 1, 6.0)
    a[2].set_status(Trial.RUNNING)
    # a recoverable failure: Tune calls on_trial_error, then re-adds the same trial -> still waited for
    sched.on_trial_error(ctrl, a[2])
    a[2].set_status(Trial.PENDING)
    sched.on_trial_add(ctrl, a[2])
    assert sched.choose_trial_to_run(ctrl) is a[2]
    assert sched.rung_state()["groups"][sched.group_of(a[0])]["decision"] == "waiting"
    # a final failure: on_trial_error, then ERROR; the next controller step decides without it
    a[2].set_status(Trial.RUNNING)
    sched.on_trial_error(ctrl, a[2])
    a[2].set_status(Trial.ERROR)
    sched.choose_trial_to_run(ctrl)
    g = sched.rung_state()["groups"][sched.group_of(a[0])]
    assert g["decisions"] == {1: CONTINUE} and g["member_status"]["a2"] == "errored"
    assert sched.rung_state()["rungs"][1]["group_means"][sched.group_of(a[0])] == pytest.approx(5.0)


def test_member_that_completes_early_is_not_waited_for():
    sched = sgasha()
    ctrl = FakeController(sched)
    a, b = _members(ctrl, "a", "gap"), _members(ctrl, "b", "rnd")
    ctrl.report(a[0], 1, 10.0)
    ctrl.report(a[1], 1, 10.0)
    ctrl.report(b[0], 1, 0.0)
    b[1].set_status(Trial.RUNNING)
    sched.on_trial_complete(ctrl, b[1], {"epoch": 0.5, M: 50.0})  # ended before the first rung
    b[1].set_status(Trial.TERMINATED)
    sched.choose_trial_to_run(ctrl)  # decides b on b0 alone: 0 < 10 -> stopped
    g = sched.rung_state()["groups"][sched.group_of(b[0])]
    assert g["stopped_at"] == 1 and g["member_status"] == {"b0": "stopped", "b1": "completed"}


def test_group_size_waits_for_seeds_not_created_yet_and_a_stall_is_broken():
    sched = sgasha(group_size=3)
    ctrl = FakeController(sched)
    a = _members(ctrl, "a", "gap")
    other = ctrl.add(trial("b0", init="rnd", seed=0))
    other.set_status(Trial.RUNNING)
    ctrl.report(a[0], 1, 1.0)
    ctrl.report(a[1], 1, 1.0)  # all known members reported, the third seed is missing
    assert sched.choose_trial_to_run(ctrl) is None
    assert sched.rung_state()["groups"][sched.group_of(a[0])]["decision"] == "waiting"
    other.set_status(Trial.TERMINATED)  # nothing else runs: every RUNNING member only waits
    sched.choose_trial_to_run(ctrl)
    assert sched.rung_state()["groups"][sched.group_of(a[0])]["decisions"] == {1: CONTINUE}
    with pytest.raises(ValueError, match="group_size=3"):
        for i in range(2, 4):
            ctrl.add(trial(f"a{i}", init="gap", seed=i))


def test_a_finished_searcher_decides_with_the_members_present():
    sched = sgasha(group_size=3)
    ctrl = FakeController(sched, finished=True)
    a = _members(ctrl, "a", "gap")
    ctrl.report(a[0], 1, 1.0)
    ctrl.report(a[1], 1, 1.0)
    assert sched.rung_state()["groups"][sched.group_of(a[0])]["decisions"] == {1: CONTINUE}


# ----------------------------------------------------------------------------- state files


def test_save_and_restore_round_trip(tmp_path):
    sched = sgasha()
    ctrl = FakeController(sched)
    a = _members(ctrl, "a", "gap")
    ctrl.report(a[0], 1, 2.0)
    ctrl.report(a[1], 1, 4.0)
    sched.save(tmp_path / "s.json")
    again = sgasha()
    again.restore(tmp_path / "s.json")
    assert again.rung_state() == sched.rung_state()
    with pytest.raises(ValueError, match="reduction_factor"):
        sgasha(reduction_factor=2).restore(tmp_path / "s.json")
    adopt = SeedGroupASHA(max_t=9, grace_period=1, reduction_factor=3)  # metric/mode not set yet
    adopt.restore(tmp_path / "s.json")
    assert adopt.metric == M


def test_state_files_of_another_run_are_ignored(tmp_path):
    path = state_path(tmp_path)
    old = sgasha(state_path=path)
    ctrl = FakeController(old)
    a = _members(ctrl, "old", "gap")
    ctrl.report(a[0], 1, 1.0)
    ctrl.report(a[1], 1, 1.0)
    new = sgasha(state_path=path)  # a new sweep reusing the experiment name: new trial ids
    ctrl2 = FakeController(new)
    b = ctrl2.add(trial("new0", init="gap", seed=0))
    assert [g["members"] for g in new.rung_state()["groups"].values()] == [["new0"]]
    assert ctrl2.report(b, 1, 0.0) == CONTINUE
    assert set(StateReader(path).book().members) == {"new0"}


def test_a_state_of_the_former_format_is_refused_with_a_clear_error(tmp_path):
    path = state_path(tmp_path)
    path.write_text(json.dumps({"version": 1, "trials": {}}))
    with pytest.raises(ValueError, match="version 1"):
        sgasha(state_path=path).on_trial_add(None, trial("a", seed=1))


def test_restore_marks_members_missing_from_the_experiment_lost(tmp_path):
    path = state_path(tmp_path)
    sched = sgasha(state_path=path)
    at_start = pickle.dumps(sched)
    ctrl = FakeController(sched)
    a = _members(ctrl, "a", "gap", 3)
    ctrl.report(a[0], 1, 2.0)
    ctrl.report(a[1], 1, 4.0)
    fresh = pickle.loads(at_start)
    ctrl2 = FakeController(fresh)
    for t in a[:2]:  # a2 was restarted under a new id, so the old one is not re-added
        t.set_status(Trial.PENDING)
        ctrl2.add(t)
    assert fresh.choose_trial_to_run(ctrl2) is a[0]
    g = fresh.rung_state()["groups"][fresh.group_of(a[0])]
    assert g["member_status"]["a2"] == "lost" and g["decisions"] == {1: CONTINUE}


# ----------------------------------------------------------------------------- API details


def test_group_of_ignores_the_seed_and_key_order_and_can_be_given():
    s = sgasha()
    k1 = s.group_of(trial("x", init="gap", seed=1, **{"lora.rank": 1}))
    k2 = s.group_of(trial("y", **{"lora.rank": 1}, seed=np.int64(7), init="gap"))
    k3 = s.group_of(trial("z", init="gap", seed=1, **{"lora.rank": 2}))
    assert k1 == k2 != k3
    nested = sgasha(seed_key="train.seed")
    assert nested.group_of(trial("n", train={"seed": 1, "lr": 0.1})) == nested.group_of(
        trial("m", train={"lr": 0.1, "seed": 2})
    )
    assert sgasha(group_of=lambda c: f"G{c['init']}").group_of(trial("q", init="gap", seed=1)) == "Ggap"


def test_make_scheduler_kinds():
    common = {"metric": M, "mode": "max", "time_attr": "epoch", "grace_period": 1, "reduction_factor": 3}
    assert type(make_scheduler("fifo", max_t=9, **common)) is FIFOScheduler
    asha = make_scheduler("asha", max_t=9, **common)
    assert isinstance(asha, AsyncHyperBandScheduler) and asha.metric == M
    sg = make_scheduler("seed-group-asha", max_t=9, group_size=3, **common)
    assert isinstance(sg, SeedGroupASHA) and sg.milestones == [1, 3]
    assert set(SCHEDULER_KINDS) == {"fifo", "asha", "seed-group-asha"}
    with pytest.raises(ValueError, match=r"unknown scheduler kind 'hyperband'.*fifo, asha, seed-group-asha"):
        make_scheduler("hyperband", max_t=9, **common)
    with pytest.raises(ValueError, match="reduction_factor"):
        make_scheduler("asha", max_t=9, **{**common, "reduction_factor": 1})


@pytest.mark.parametrize("kw", [*BAD_SCHEDULES, {"seed_key": ""}])
def test_bad_arguments_raise_value_error(kw):
    (field,) = kw  # the error names the argument that is wrong
    with pytest.raises(ValueError, match=rf"^{field} "):
        sgasha(**kw)


def test_missing_metric_is_reported_on_add():
    s = SeedGroupASHA(max_t=9)
    with pytest.raises(ValueError, match="metric"):
        s.on_trial_add(None, trial("a", seed=1))
    assert s.set_search_properties(M, "max")
    s.on_trial_add(None, trial("a", seed=1))
    assert "SeedGroupASHA" in s.debug_string()
