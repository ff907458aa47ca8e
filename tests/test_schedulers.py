"""Seed-group ASHA driven by hand-made results and a fake controller (no Ray cluster).

The fake controller mirrors what ``TuneController`` 2.60 does around a scheduler: ``stop_trial`` calls
``on_trial_remove`` for PENDING/PAUSED trials and ``on_trial_complete`` for RUNNING ones before marking
them TERMINATED; a PAUSE decision makes the trial PAUSED; ``choose_trial_to_run`` picks what starts next.
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

from gapinit_ray.schedulers import SCHEDULER_KINDS, SeedGroupASHA, make_scheduler

CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP
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
        if decision == PAUSE:
            trial.set_status(Trial.PAUSED)
        elif decision == STOP:
            self.stop_trial(trial)
        return decision


def trial(tid: str, **config: Any) -> Trial:
    return Trial("__fake", config=config, trial_id=tid, stub=True)


def sgasha(**kw: Any) -> SeedGroupASHA:
    args = {"metric": M, "mode": "max", "max_t": 9, "grace_period": 1, "reduction_factor": 3}
    args.update(kw)
    return SeedGroupASHA(**args)


# ----------------------------------------------------------------------------- randomized streams


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
    scheduler: SeedGroupASHA,
    *,
    n_configs: int = 8,
    n_seeds: int = 3,
    max_t: int = 9,
    seed: int = 0,
    slots: int = 4,
    restore_at: int | None = None,
    restore_path: Any = None,
    check_split: bool = True,
) -> tuple[list[tuple[str, int, str]], FakeController]:
    """Run a sweep against a fake controller: `slots` trials run at once, a random running trial
    reports its next epoch, PAUSEd trials hold no slot. Checks after every event that no group is split.
    With `restore_at`, the scheduler is replaced by one restored from a saved state after that many
    results, the way a Tune restore re-adds every trial."""
    values = make_values(n_configs, n_seeds, max_t, seed)
    rng = random.Random(seed)
    ctrl = FakeController(scheduler)
    specs = [(c, s) for c in range(n_configs) for s in range(n_seeds)]
    rng.shuffle(specs)  # trials arrive in random order, seeds of a config far apart
    cs = {}
    for i, (c, s) in enumerate(specs):
        t = ctrl.add(trial(f"t{i:03d}", init=f"cfg{c}", **{"lora.rank": 1}, seed=s))
        cs[t.trial_id] = (c, s)
    epoch = dict.fromkeys(cs, 0)
    log: list[tuple[str, int, str]] = []
    while True:
        running = [t for t in ctrl.trials if t.status == Trial.RUNNING]
        while len(running) < slots:
            chosen = ctrl.scheduler.choose_trial_to_run(ctrl)
            if chosen is None:
                break
            assert chosen.status in (Trial.PENDING, Trial.PAUSED)
            chosen.set_status(Trial.RUNNING)
            running.append(chosen)
        if not running:
            break
        t = rng.choice(sorted(running, key=lambda x: x.trial_id))
        epoch[t.trial_id] += 1
        e = epoch[t.trial_id]
        decision = ctrl.report(t, e, values[cs[t.trial_id]][e])
        log.append((t.trial_id, e, decision))
        if check_split:
            assert_not_split(ctrl, epoch, max_t)
        if restore_at is not None and len(log) == restore_at:
            ctrl.scheduler.save(restore_path)
            fresh = SeedGroupASHA(**scheduler_args(ctrl.scheduler))
            fresh.restore(restore_path)
            ctrl.scheduler = fresh
            for tr in ctrl.trials:
                fresh.on_trial_add(ctrl, tr)
    assert all(t.status == Trial.TERMINATED for t in ctrl.trials)
    return log, ctrl


def scheduler_args(s: SeedGroupASHA) -> dict[str, Any]:
    keys = (
        "time_attr",
        "metric",
        "mode",
        "max_t",
        "grace_period",
        "reduction_factor",
        "group_size",
        "seed_key",
    )
    return {k: getattr(s, f"_{k}") for k in keys}


def assert_not_split(ctrl: FakeController, epoch: dict[str, int], max_t: int) -> None:
    """All members of a group share one fate: all stopped at the same rung, or all still in."""
    sched = ctrl.scheduler
    by_id = {t.trial_id: t for t in ctrl.trials}
    for key, g in sched.rung_state()["groups"].items():
        members = [by_id[tid] for tid in g["members"]]
        early = [t for t in members if t.status == Trial.TERMINATED and epoch[t.trial_id] < max_t]
        if g["decision"] == "stopped":
            assert all(t.status == Trial.TERMINATED for t in members), key
            # every member reported exactly up to the stop rung's milestone, and no further
            assert {epoch[t.trial_id] for t in members} == {g["stopped_at"]}, (key, g)
        else:
            assert not early, (key, [(t.trial_id, epoch[t.trial_id]) for t in early])


@pytest.mark.parametrize("seed", range(6))
def test_a_group_is_never_split(seed):
    sched = sgasha(max_t=9, reduction_factor=3)
    log, _ = simulate(sched, seed=seed)
    state = sched.rung_state()
    fates = [g["decision"] for g in state["groups"].values()]
    assert "stopped" in fates and "finished" in fates  # the stream exercised both outcomes
    assert any(d == PAUSE for _, _, d in log)
    # a group is judged on its mean over all its seeds
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
        for c in range(8):
            fates = {stopped_at.get((c, s)) for s in range(3)}
            split += len(fates) > 1
    assert split > 0


# ----------------------------------------------------------------------------- decisions on the mean


def _two_group_setup(b_values):
    """η=2, milestones 1 and 2. Group A: seeds at 10, 10. Group B: two seeds with `b_values`."""
    sched = sgasha(max_t=4, reduction_factor=2)
    ctrl = FakeController(sched)
    a = [ctrl.add(trial(f"a{i}", init="gap", seed=i)) for i in range(2)]
    b = [ctrl.add(trial(f"b{i}", init="random", seed=i)) for i in range(2)]
    assert ctrl.report(a[0], 1, 10.0) == PAUSE
    assert ctrl.report(a[1], 1, 10.0) == CONTINUE  # first group at the rung: nothing to compare with
    decisions = [ctrl.report(b[0], 1, b_values[0]), ctrl.report(b[1], 1, b_values[1])]
    return sched, ctrl, a, b, decisions


def _ray_asha_decisions(stream):
    ray = AsyncHyperBandScheduler(
        time_attr="epoch", metric=M, mode="max", max_t=4, grace_period=1, reduction_factor=2
    )
    out = {}
    for tid, e, v in stream:
        t = trial(tid, seed=0)
        ray.on_trial_add(None, t)
        out[tid] = ray.on_trial_result(None, t, {"epoch": e, M: v})
    return out


def test_group_mean_stops_a_group_whose_lucky_seed_per_trial_asha_would_keep():
    sched, ctrl, a, b, decisions = _two_group_setup((15.0, 1.0))
    # per-trial ASHA keeps b0 (15 >= cutoff 10) and stops b1
    ray = _ray_asha_decisions([("a0", 1, 10.0), ("a1", 1, 10.0), ("b0", 1, 15.0), ("b1", 1, 1.0)])
    assert ray["b0"] == CONTINUE and ray["b1"] == STOP
    # the group mean 8 < 10 stops both: b0 waited (PAUSE) and is stopped through the controller
    assert decisions == [PAUSE, STOP]
    assert ctrl.stop_calls == ["b0", "b1"]
    assert [t.status for t in b] == [Trial.TERMINATED] * 2
    state = sched.rung_state()
    group_b = state["groups"][sched.group_of(b[0])]
    assert group_b["decision"] == "stopped" and group_b["stopped_at"] == 1
    assert state["rungs"][1]["group_means"][sched.group_of(b[0])] == pytest.approx(8.0)
    assert sched.choose_trial_to_run(ctrl) is a[0]  # a0 was paused and its group promoted


def test_group_with_one_bad_seed_but_good_mean_is_promoted():
    sched, ctrl, _, b, decisions = _two_group_setup((30.0, 2.0))
    ray = _ray_asha_decisions([("a0", 1, 10.0), ("a1", 1, 10.0), ("b0", 1, 30.0), ("b1", 1, 2.0)])
    assert ray["b1"] == STOP  # per-trial ASHA would drop the bad seed
    assert decisions == [PAUSE, CONTINUE]  # mean 16 >= 10: both go on
    assert ctrl.stop_calls == []
    assert sched.rung_state()["groups"][sched.group_of(b[0])]["decisions"] == {1: CONTINUE}
    resumed = []
    while (t := sched.choose_trial_to_run(ctrl)) is not None:
        resumed.append(t.trial_id)
        t.set_status(Trial.RUNNING)
    assert resumed == ["a0", "b0"]


def test_min_mode_uses_the_flipped_cutoff():
    sched = sgasha(mode="min", max_t=4, reduction_factor=2)
    ctrl = FakeController(sched)
    a = [ctrl.add(trial(f"a{i}", init="gap", seed=i)) for i in range(2)]
    b = [ctrl.add(trial(f"b{i}", init="random", seed=i)) for i in range(2)]
    ctrl.report(a[0], 1, 1.0)
    ctrl.report(a[1], 1, 1.0)
    ctrl.report(b[0], 1, 0.2)
    assert ctrl.report(b[1], 1, 2.6) == STOP  # mean loss 1.4 > 1.0
    assert sched.rung_state()["rungs"][1]["cutoff"] == pytest.approx(1.2)  # median of 1.0 and 1.4


# ----------------------------------------------------------------------------- equal to Ray's ASHA


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # Ray's cutoff on an all-NaN rung
@pytest.mark.parametrize(
    ("grace", "eta", "max_t", "mode", "group_size"),
    [
        (1, 3, 27, "max", 1),
        (1, 2, 16, "min", 1),
        (2, 2.5, 30, "max", None),
        (1, 4, 100, "max", 1),
        (3, 3.0, 10, "min", None),
    ],
)
def test_one_seed_per_group_decides_like_rays_asha(grace, eta, max_t, mode, group_size):
    for stream_seed in range(3):
        rng = random.Random(stream_seed)
        ours = SeedGroupASHA(
            time_attr="epoch",
            metric=M,
            mode=mode,
            max_t=max_t,
            grace_period=grace,
            reduction_factor=eta,
            group_size=group_size,
        )
        ray = AsyncHyperBandScheduler(
            time_attr="epoch",
            metric=M,
            mode=mode,
            max_t=max_t,
            grace_period=grace,
            reduction_factor=eta,
            brackets=1,
        )
        ctrl = FakeController(ours)
        trials = [ctrl.add(trial(f"t{i:02d}", lr=i, seed=0)) for i in range(30)]
        for t in trials:
            ray.on_trial_add(None, t)
        epoch = {t.trial_id: 0 for t in trials}
        alive = list(trials)
        ours_log, ray_log = [], []
        while alive:
            t = rng.choice(alive)
            epoch[t.trial_id] += 1
            v = float(rng.randint(0, 20))  # integer values: plenty of ties at the cutoff
            if rng.random() < 0.03:
                v = float("nan")  # NaN continues, like in Ray
            result = {"epoch": epoch[t.trial_id], M: v}
            d_ours = ours.on_trial_result(ctrl, t, result)
            d_ray = ray.on_trial_result(None, t, result)
            ours_log.append(d_ours)
            ray_log.append(d_ray)
            if d_ray == STOP:
                alive.remove(t)
                ours.on_trial_complete(ctrl, t, result)
                ray.on_trial_complete(None, t, result)
        assert ours_log == ray_log
        assert PAUSE not in ours_log
        assert ours_log.count(STOP) == len(trials)


# ----------------------------------------------------------------------------- waiting and resuming


def test_early_members_pause_until_the_last_reports_then_are_resumed_first():
    sched = sgasha()
    ctrl = FakeController(sched)
    a = [ctrl.add(trial(f"a{i}", init="gap", seed=i, **{"lora.rank": 1})) for i in range(3)]
    b = [ctrl.add(trial(f"b{i}", init="random", seed=i, **{"lora.rank": 1})) for i in range(3)]
    assert ctrl.report(a[0], 1, 5.0) == PAUSE
    # a waiting member is not resumed; the next PENDING trial in FIFO order is
    assert sched.choose_trial_to_run(ctrl) is a[1]
    assert ctrl.report(a[1], 1, 6.0) == PAUSE
    assert sched.rung_state()["groups"][sched.group_of(a[0])]["decision"] == "waiting"
    assert sched.choose_trial_to_run(ctrl) is a[2]
    assert ctrl.report(a[2], 1, 7.0) == CONTINUE
    # promoted paused members come before the PENDING b trials
    assert sched.choose_trial_to_run(ctrl) is a[0]
    assert sched.choose_trial_to_run(ctrl) is a[0]  # idempotent
    a[0].set_status(Trial.RUNNING)
    assert sched.choose_trial_to_run(ctrl) is a[1]
    a[1].set_status(Trial.RUNNING)
    assert sched.choose_trial_to_run(ctrl) is b[0]
    # a member past the rung keeps going; at the next rung it waits again
    assert ctrl.report(a[0], 2, 6.0) == CONTINUE
    assert ctrl.report(a[0], 3, 6.0) == PAUSE
    state = sched.rung_state()
    assert state["rungs"][1]["group_means"] == {sched.group_of(a[0]): pytest.approx(6.0)}
    assert state["groups"][sched.group_of(a[0])]["values"]["a0"] == {1: 5.0, 3: 6.0}
    # reaching max_t is a normal finish (STOP, as Ray's ASHA with stop_last_trials)
    for e in range(1, 10):
        d = ctrl.report(b[0], e, 100.0)
        if e == 1:
            assert d == PAUSE
            ctrl.report(b[1], 1, 100.0)
            assert ctrl.report(b[2], 1, 100.0) == CONTINUE
            b[0].set_status(Trial.RUNNING)
        elif e == 3:
            assert d == PAUSE
            ctrl.report(b[1], 3, 100.0)
            ctrl.report(b[2], 3, 100.0)
            b[0].set_status(Trial.RUNNING)
        elif e == 9:
            assert d == STOP
    assert b[0].status == Trial.TERMINATED
    assert sched.rung_state()["groups"][sched.group_of(b[0])]["member_status"]["b0"] == "completed"


def test_errored_member_group_proceeds_with_the_remaining_mean():
    sched = sgasha()
    ctrl = FakeController(sched)
    a = [ctrl.add(trial(f"a{i}", init="gap", seed=i)) for i in range(3)]
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
    assert sched.choose_trial_to_run(ctrl) is a[0]
    g = sched.rung_state()["groups"][sched.group_of(a[0])]
    assert g["decisions"] == {1: CONTINUE} and g["member_status"]["a2"] == "errored"
    assert sched.rung_state()["rungs"][1]["group_means"][sched.group_of(a[0])] == pytest.approx(5.0)


def test_a_waiting_member_that_fails_and_is_retried_still_waits():
    sched = sgasha()
    ctrl = FakeController(sched)
    a = [ctrl.add(trial(f"a{i}", init="gap", seed=i)) for i in range(2)]
    assert ctrl.report(a[0], 1, 4.0) == PAUSE
    a[0].set_status(Trial.RUNNING)  # e.g. the pause's save failed: error, then requeue
    sched.on_trial_error(ctrl, a[0])
    a[0].set_status(Trial.PENDING)
    sched.on_trial_add(ctrl, a[0])
    assert sched.choose_trial_to_run(ctrl) is a[0]  # PENDING: Tune restarts it from its checkpoint
    assert ctrl.report(a[0], 2, 4.5) == PAUSE  # its rung is still undecided
    assert ctrl.report(a[1], 1, 6.0) == CONTINUE
    assert sched.rung_state()["rungs"][1]["group_means"] == {sched.group_of(a[0]): 5.0}
    assert sched.choose_trial_to_run(ctrl) is a[0]


def test_member_that_completes_early_is_not_waited_for():
    sched = sgasha()
    ctrl = FakeController(sched)
    a = [ctrl.add(trial(f"a{i}", init="gap", seed=i)) for i in range(2)]
    b = [ctrl.add(trial(f"b{i}", init="rnd", seed=i)) for i in range(2)]
    ctrl.report(a[0], 1, 10.0)
    ctrl.report(a[1], 1, 10.0)
    assert ctrl.report(b[0], 1, 0.0) == PAUSE
    b[1].set_status(Trial.RUNNING)
    sched.on_trial_complete(ctrl, b[1], {"epoch": 0.5, M: 50.0})  # ended before the first rung
    b[1].set_status(Trial.TERMINATED)
    sched.choose_trial_to_run(ctrl)  # decides b on b0 alone: 0 < 10 -> stopped through the controller
    assert ctrl.stop_calls == ["b0"]
    g = sched.rung_state()["groups"][sched.group_of(b[0])]
    assert g["stopped_at"] == 1 and g["member_status"] == {"b0": "stopped", "b1": "completed"}


def test_group_size_waits_for_seeds_not_created_yet():
    sched = sgasha(group_size=3)
    ctrl = FakeController(sched)
    a = [ctrl.add(trial(f"a{i}", init="gap", seed=i)) for i in range(2)]
    other = ctrl.add(trial("b0", init="rnd", seed=0))
    other.set_status(Trial.RUNNING)
    assert ctrl.report(a[0], 1, 1.0) == PAUSE
    assert ctrl.report(a[1], 1, 1.0) == PAUSE  # all known members reported, but the third seed is missing
    assert sched.choose_trial_to_run(ctrl) is None
    ctrl.search_alg.finished = True  # the third seed will never come: decide with the two
    assert sched.choose_trial_to_run(ctrl) is a[0]
    with pytest.raises(ValueError, match="group_size=3"):
        for i in range(2, 4):
            ctrl.add(trial(f"a{i}", init="gap", seed=i))


def test_group_size_stall_is_broken_when_nothing_can_run():
    """max_concurrent_trials: Tune creates no trial while paused ones are live -> decide with those present."""
    sched = sgasha(group_size=3)
    ctrl = FakeController(sched)
    a = [ctrl.add(trial(f"a{i}", init="gap", seed=i)) for i in range(2)]
    ctrl.report(a[0], 1, 1.0)
    ctrl.report(a[1], 1, 1.0)
    assert sched.choose_trial_to_run(ctrl) is a[0]
    assert sched.rung_state()["groups"][sched.group_of(a[0])]["decisions"] == {1: CONTINUE}


def test_member_added_to_a_stopped_group_is_stopped():
    sched, ctrl, *_ = _two_group_setup((1.0, 1.0))
    late = ctrl.add(trial("b9", init="random", seed=9))
    sched.choose_trial_to_run(ctrl)
    assert late.status == Trial.TERMINATED and ctrl.stop_calls[-1] == "b9"


# ----------------------------------------------------------------------------- save / restore


@pytest.mark.parametrize("restore_at", [1, 7, 20, 41, 60, 95])
def test_restore_mid_stream_gives_identical_decisions(restore_at, tmp_path):
    baseline, base_ctrl = simulate(sgasha(), seed=3)
    assert restore_at < len(baseline)
    log, ctrl = simulate(sgasha(), seed=3, restore_at=restore_at, restore_path=tmp_path / "s.json")
    assert log == baseline
    assert ctrl.scheduler.rung_state() == base_ctrl.scheduler.rung_state()
    assert ctrl.stop_calls == base_ctrl.stop_calls


def test_state_dict_is_json_and_round_trips():
    sched = sgasha()
    simulate(sched, seed=1)
    state = sched.state_dict()
    text = json.dumps(state)
    again = sgasha()
    again.load_state_dict(json.loads(text))
    assert again.state_dict() == state
    assert again.rung_state() == sched.rung_state()
    with pytest.raises(ValueError, match="reduction_factor"):
        sgasha(reduction_factor=2).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        sgasha().load_state_dict({"version": 99})
    adopt = SeedGroupASHA(max_t=9, grace_period=1, reduction_factor=3)  # metric/mode not set yet
    adopt.load_state_dict(state)
    assert adopt.metric == M


def test_tune_restore_requeues_waiting_members_and_they_wait_again(tmp_path):
    """After Tuner.restore the unpickled scheduler reads its state file; Tune re-adds every trial and
    sets PAUSED ones to PENDING, so a waiting member runs one more step and is paused again."""
    path = tmp_path / "exp" / "seed_group_asha.json"
    sched = sgasha(state_path=path)
    pickled_at_start = pickle.dumps(sched)  # what tuner.pkl holds
    ctrl = FakeController(sched)
    a = [ctrl.add(trial(f"a{i}", init="gap", seed=i)) for i in range(2)]
    assert ctrl.report(a[0], 1, 3.0) == PAUSE
    assert path.exists()

    restored = pickle.loads(pickled_at_start)
    ctrl2 = FakeController(restored)
    a2 = [trial(f"a{i}", init="gap", seed=i) for i in range(2)]  # new objects, same ids, all PENDING
    for t in a2:
        ctrl2.add(t)
    assert restored.rung_state() == sched.rung_state()
    assert ctrl2.report(a2[0], 2, 3.5) == PAUSE  # still waiting for a1
    assert ctrl2.report(a2[1], 1, 5.0) == CONTINUE
    assert restored.choose_trial_to_run(ctrl2) is a2[0]
    assert restored.rung_state()["rungs"][1]["group_means"] == {restored.group_of(a2[0]): 4.0}


def test_state_file_of_another_run_is_ignored(tmp_path):
    path = tmp_path / "seed_group_asha.json"
    old = sgasha(state_path=path)
    ctrl = FakeController(old)
    a = [ctrl.add(trial(f"old{i}", init="gap", seed=i)) for i in range(2)]
    ctrl.report(a[0], 1, 1.0)
    ctrl.report(a[1], 1, 1.0)
    new = sgasha(state_path=path)  # a new sweep reusing the experiment name: new trial ids
    ctrl2 = FakeController(new)
    b = ctrl2.add(trial("new0", init="gap", seed=0))
    assert [g["members"] for g in new.rung_state()["groups"].values()] == [["new0"]]
    assert new.rung_state()["rungs"][1]["group_means"] == {}
    assert ctrl2.report(b, 1, 0.0) == CONTINUE  # alone in its group, first at the rung
    assert set(json.loads(path.read_text())["trials"]) == {"new0"}


def test_restore_marks_members_missing_from_the_experiment_lost(tmp_path):
    sched = sgasha()
    ctrl = FakeController(sched)
    a = [ctrl.add(trial(f"a{i}", init="gap", seed=i)) for i in range(3)]
    ctrl.report(a[0], 1, 2.0)
    ctrl.report(a[1], 1, 4.0)
    sched.save(tmp_path / "s.json")
    fresh = sgasha()
    fresh.restore(tmp_path / "s.json")
    ctrl2 = FakeController(fresh)
    for t in a[:2]:  # a2 was restarted under a new id, so the old one is not re-added
        t.set_status(Trial.PENDING)
        ctrl2.add(t)
    assert fresh.choose_trial_to_run(ctrl2) is a[0]
    assert fresh.rung_state()["groups"][fresh.group_of(a[0])]["member_status"]["a2"] == "lost"


# ----------------------------------------------------------------------------- API details


def test_group_of_ignores_the_seed_and_key_order():
    s = sgasha()
    k1 = s.group_of(trial("x", init="gap", seed=1, **{"lora.rank": 1}))
    k2 = s.group_of(trial("y", **{"lora.rank": 1}, seed=np.int64(7), init="gap"))
    k3 = s.group_of(trial("z", init="gap", seed=1, **{"lora.rank": 2}))
    assert k1 == k2 != k3
    nested = sgasha(seed_key="train.seed")
    assert nested.group_of(trial("n", train={"seed": 1, "lr": 0.1})) == nested.group_of(
        trial("m", train={"lr": 0.1, "seed": 2})
    )


def test_make_scheduler_kinds():
    common = {"metric": M, "mode": "max", "time_attr": "epoch", "grace_period": 1, "reduction_factor": 3}
    assert type(make_scheduler("fifo", max_t=9, **common)) is FIFOScheduler
    asha = make_scheduler("asha", max_t=9, **common)
    assert isinstance(asha, AsyncHyperBandScheduler)
    assert [m for m, _ in reversed(asha._brackets[0]._rungs)][:2] == [1, 3]
    assert (asha._time_attr, asha._max_t, asha.metric, asha._mode) == ("epoch", 9, M, "max")
    sg = make_scheduler("seed-group-asha", max_t=9, group_size=3, **common)
    assert isinstance(sg, SeedGroupASHA) and sg.milestones == [1, 3]
    assert set(SCHEDULER_KINDS) == {"fifo", "asha", "seed-group-asha"}
    with pytest.raises(ValueError, match=r"unknown scheduler kind 'hyperband'.*fifo, asha, seed-group-asha"):
        make_scheduler("hyperband", max_t=9, **common)
    with pytest.raises(ValueError, match="reduction_factor"):
        make_scheduler("asha", max_t=9, **{**common, "reduction_factor": 1})


@pytest.mark.parametrize(
    "kw",
    [
        {"max_t": 0},
        {"grace_period": 10},
        {"reduction_factor": 1.0},
        {"mode": "best"},
        {"group_size": 0},
        {"group_size": True},
        {"seed_key": ""},
    ],
)
def test_bad_arguments_raise_value_error(kw):
    with pytest.raises(ValueError):
        sgasha(**kw)


def test_missing_metric_is_reported_on_add():
    s = SeedGroupASHA(max_t=9)
    with pytest.raises(ValueError, match="metric"):
        s.on_trial_add(None, trial("a", seed=1))
    assert s.set_search_properties(M, "max")
    s.on_trial_add(None, trial("a", seed=1))
    assert "SeedGroupASHA" in s.debug_string()


# ----------------------------------------------------------------------------- waiting in the trial


def test_in_trial_waiting_never_pauses_and_the_state_file_tells_members_what_to_do(tmp_path):
    from gapinit_ray.schedulers import MemberPlan, member_plan

    path = tmp_path / "state.json"
    sched = sgasha(wait="in_trial", state_path=path, group_size=2)
    ctrl = FakeController(sched)
    a = [ctrl.add(trial(f"a{i}", init="gap", seed=i)) for i in range(2)]
    b = [ctrl.add(trial(f"b{i}", init="random", seed=i)) for i in range(2)]
    # milestones 1, 3 (max_t 9, eta 3): before any report every member trains to epoch 1
    assert member_plan(path, "a0") == MemberPlan("train", 0, 1.0)
    assert member_plan(path, "nope") == MemberPlan("unknown")
    assert ctrl.report(a[0], 1, 5.0) == CONTINUE  # not PAUSE: the trainable waits itself
    assert a[0].status == Trial.RUNNING
    assert member_plan(path, "a0") == MemberPlan("wait", 0, 1.0)
    assert member_plan(path, "a1") == MemberPlan("train", 0, 1.0)
    assert ctrl.report(a[1], 1, 7.0) == CONTINUE
    assert member_plan(path, "a0") == MemberPlan("train", 1, 3.0)
    # b's mean (1.0) is below a's (6.0): with eta 3 the cutoff of one earlier mean is that mean
    assert ctrl.report(b[0], 1, 0.0) == CONTINUE
    # the reporter's trainable stops by itself (its Train run is ending); so does the waiting one,
    # which may hold its Train run at the rung: Tune does not stop (kill) it, it reads "stop" and ends
    assert ctrl.report(b[1], 1, 2.0) == CONTINUE
    assert member_plan(path, "b1") == MemberPlan("stop", 0)
    assert member_plan(path, "b0") == MemberPlan("stop", 0)
    assert "b0" not in ctrl.stop_calls and b[0].status == Trial.RUNNING
    b[0].set_status(Trial.TERMINATED)  # its trainable returned
    sched.on_trial_complete(ctrl, b[0], {})
    assert sched.rung_state()["groups"][sched.group_of(b[0])]["member_status"]["b0"] == "stopped"
    # past the last rung: train to the end
    ctrl.report(a[0], 3, 6.0)
    assert member_plan(path, "a0") == MemberPlan("wait", 1, 3.0)
    ctrl.report(a[1], 3, 6.0)
    assert member_plan(path, "a0") == MemberPlan("train", None, None)
    assert ctrl.report(a[0], 9, 6.0) == CONTINUE  # max_t: the trainable ends by itself
    assert a[0].status == Trial.RUNNING


def test_in_trial_stall_check_counts_waiting_running_members_as_idle(tmp_path):
    sched = sgasha(wait="in_trial", state_path=tmp_path / "s.json", group_size=3)
    ctrl = FakeController(sched)
    a = [ctrl.add(trial(f"a{i}", init="gap", seed=i)) for i in range(2)]  # the third seed never comes
    ctrl.report(a[0], 1, 5.0)
    ctrl.report(a[1], 1, 6.0)
    assert sched.rung_state()["groups"][sched.group_of(a[0])]["decision"] == "waiting"
    sched.choose_trial_to_run(ctrl)  # nothing pending; both RUNNING members only wait
    assert sched.rung_state()["groups"][sched.group_of(a[0])]["decisions"] == {1: CONTINUE}


def test_member_plan_reads_a_corrupt_or_missing_file_as_unknown(tmp_path):
    from gapinit_ray.schedulers import MemberPlan, member_plan

    assert member_plan(tmp_path / "missing.json", "a0") == MemberPlan("unknown")
    (tmp_path / "bad.json").write_text("{not json")
    assert member_plan(tmp_path / "bad.json", "a0") == MemberPlan("unknown")


def test_in_trial_needs_a_state_path():
    with pytest.raises(ValueError, match="state_path"):
        sgasha(wait="in_trial")
    with pytest.raises(ValueError, match="wait must be"):
        sgasha(wait="sometimes")


def test_a_member_holds_at_its_rung_only_while_every_other_member_still_to_report_is_running(tmp_path):
    import json

    from gapinit_ray.schedulers import HOLD, MemberPlan, group_on_its_way, may_hold, promoted_plan

    path = tmp_path / "state.json"

    def write(values: dict, decisions: dict | None = None, members=("a", "b", "c"), status=None) -> None:
        status = status or {}
        trials = {
            t: {"group": "g", "status": status.get(t, "active"), "values": values.get(t, {})} for t in members
        }
        group = {"members": list(members), "decisions": decisions or {}, "stopped_at": None}
        path.write_text(
            json.dumps(
                {
                    "settings": {"milestones": [1.0, 2.0], "group_size": 3},
                    "trials": trials,
                    "groups": {"g": group},
                }
            )
        )

    write({"a": {"0": 0.5}})
    assert group_on_its_way(path, "a", ["a", "b", "c"])
    assert not group_on_its_way(path, "a", ["a", "b"])  # c is waiting for a slot: a must free its own
    assert promoted_plan(path, "a", 1.0, hold=lambda: True) == HOLD
    assert promoted_plan(path, "a", 1.0, hold=lambda: False) is None
    assert promoted_plan(path, "a", 1.0) is None  # no way to tell: end the run, as before
    # c holds a slot but its run is still starting: a holds for the grace period only, then ends
    assert may_hold(path, "a", ["b"], ["c"], held_s=5.0, starting_grace_s=120.0)
    assert not may_hold(path, "a", ["b"], ["c"], held_s=121.0, starting_grace_s=120.0)
    assert may_hold(path, "a", ["b", "c"], [], held_s=1e6, starting_grace_s=120.0)  # running: no limit
    assert not may_hold(path, "a", ["b"], [], held_s=0.0, starting_grace_s=120.0)  # c queued: never
    # b already reported at the rung (its run ended or holds): only c must be running
    write({"a": {"0": 0.5}, "b": {"0": 0.7}})
    assert group_on_its_way(path, "a", ["c"])
    # a member that errored is not waited for
    write({"a": {"0": 0.5}}, status={"c": "errored"})
    assert group_on_its_way(path, "a", ["b"])
    # the group is not whole yet (c not created): the decision is not on its way
    write({"a": {"0": 0.5}}, members=("a", "b"))
    assert not group_on_its_way(path, "a", ["a", "b"])
    # the rung that matters is the first undecided one
    write({"a": {"0": 0.5, "1": 0.6}, "b": {"0": 0.7}, "c": {"0": 0.1}}, {"0": "CONTINUE"})
    assert not group_on_its_way(path, "a", [])
    assert group_on_its_way(path, "a", ["b", "c"])
    # decided: promoted goes on, stopped ends; an unreadable state never holds
    write({"a": {"0": 0.5}, "b": {"0": 0.7}, "c": {"0": 0.1}}, {"0": "CONTINUE"})
    assert promoted_plan(path, "a", 1.0, hold=lambda: True) == MemberPlan("train", 1, 2.0)
    write({"a": {"0": 0.5}, "b": {"0": 0.7}, "c": {"0": 0.1}}, {"0": "STOP"})
    assert promoted_plan(path, "a", 1.0, hold=lambda: True) is None
    assert not group_on_its_way(tmp_path / "missing.json", "a", ["b", "c"])
