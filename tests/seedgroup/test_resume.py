"""Seed-group ASHA through a driver crash: the `gapinit run` driver of a seed-group sweep is killed (by
pid, with all it started) while a member waits at a rung its group has not decided, and `gapinit resume`
finishes the sweep. No group is split, no report is lost or written twice, the rung records made before
the kill are kept, and the members of the group cut at a rung end as stopped trials, with no error."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from gapinit_ray.results import ResultsStore, aggregate
from gapinit_ray.seedgroup.state import load_book, state_path

from ..conftest import share_caches
from ..test_sweep import _finish, _kill_tree, _run_cli, sweep_raw

NAME = "sg_resume"


def _raw(tmp_path: Path) -> dict:
    raw = sweep_raw(tmp_path, name=NAME)
    # two groups of two seeds; a learning rate so small that its group cannot beat the other's loss at
    # the first rung: the group decided first there is promoted (no cutoff yet), the other one is cut
    # when it comes second, and it does (its configuration is the grid's second, see below)
    raw["search"] = {"seed": [1, 2], "cases": [{"train.lr": 1e-2}, {"train.lr": 1e-9}]}
    raw["scheduler"].update({"metric": "val_loss", "mode": "min"})  # rungs at epochs 1 and 2 (max_t 3)
    return raw


def _state(path: Path) -> dict | None:
    """The rung state read through the state protocol (snapshot + complete log lines), as plain dicts:
    trials (group, values per rung), groups (members, decisions per rung, stopped_at), rung means."""
    try:
        loaded = load_book(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if loaded is None:
        return None
    book = loaded[0]
    return {
        "settings": {"milestones": list(book.milestones)},
        "trials": {
            t: {"group": m.group, "values": {str(r): v for r, v in m.values.items()}}
            for t, m in book.members.items()
        },
        "groups": {
            k: {
                "members": list(g.members),
                "decisions": {str(r): d for r, d in g.decisions.items()},
                "stopped_at": g.stopped_at,
            }
            for k, g in book.groups.items()
        },
        "rungs": [dict(r) for r in book.rungs],
    }


def _holding(state: dict | None) -> list[tuple[str, int]]:
    """(trial, rung) of each member whose value at a rung is recorded while its group is undecided there."""
    if not state:
        return []
    out = []
    for tid, t in state["trials"].items():
        group = state["groups"][t["group"]]
        if group["stopped_at"] is not None:
            continue
        out += [(tid, int(r)) for r in t["values"] if r not in group["decisions"]]
    return out


@pytest.mark.slow
@pytest.mark.timeout(3600)  # two sweep drivers (~4 min alone on 2 cores), each given 25 min at most
def test_seed_group_sweep_resumed_after_the_driver_is_killed_mid_rung(tmp_path) -> None:
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(_raw(tmp_path)))
    share_caches(tmp_path / "store", "gaps", "features")  # calibrated and cached once per session
    sweep = tmp_path / "store" / NAME
    state_file = state_path(sweep)
    # 1 CPU, 1-worker trials: one Train slot, served to the first group's members in turn. The first
    # member at a rung ends its Train run there (its sibling is not training: no hold) and waits while
    # the sibling trains that whole segment. The driver is killed while one waits at the second rung:
    # the first rung's decision (promoted, the cutoff the second group will be judged by there) is
    # recorded, the second rung's is not. (With 2 CPUs both members train at once and reach the rung
    # within a fraction of a second of each other: too narrow a window to kill the driver in.)
    proc = _run_cli("run", str(spec_path), "--num-cpus", "1", "--quiet", cwd=tmp_path)
    driver = psutil.Process(proc.pid)
    deadline = time.time() + 1500
    held: list[tuple[str, int]] = []
    while not held and time.time() < deadline and proc.poll() is None:
        held = [(t, r) for t, r in _holding(_state(state_file)) if r == 1]
        time.sleep(0.05)
    assert held, f"no member waited at the second rung before the sweep ended ({proc.poll()=})"
    _kill_tree(driver)
    proc.communicate()
    before = _state(state_file)
    assert _holding(before), "the group was decided before the kill"
    rows_before = ResultsStore(str(tmp_path / "store"), NAME).metrics().to_pandas()

    # resumed with 3 CPUs: the first group's member still to report at the second rung and both members
    # of the second group train at once, so the second group's first member at the first rung holds
    # there while its sibling trains, and is holding when its group is cut
    resumed = _run_cli("resume", str(sweep), "--num-cpus", "3", "--quiet", cwd=tmp_path)
    holders: set[str] = set()
    deadline = time.time() + 1500
    while resumed.poll() is None and time.time() < deadline:
        holders |= {t for t, r in _holding(_state(state_file)) if r == 0}
        time.sleep(0.05)
    _out, err = _finish(resumed, 60)
    (tmp_path / "resume_stderr.txt").write_text(err)
    assert resumed.returncode == 0, err[-3000:]

    after = _state(state_file)
    milestones = after["settings"]["milestones"]
    assert milestones == [1.0, 2.0]
    # the rung records made before the kill are all kept, unchanged
    for tid, t in before["trials"].items():
        assert after["trials"][tid]["group"] == t["group"]
        for rung, value in t["values"].items():
            assert after["trials"][tid]["values"][rung] == pytest.approx(value, nan_ok=True), (tid, rung)
    for key, g in before["groups"].items():
        assert sorted(after["groups"][key]["members"]) == sorted(g["members"])
        for rung, decision in g["decisions"].items():
            assert after["groups"][key]["decisions"][rung] == decision, (key, rung)
    for rung, means in enumerate(before["rungs"]):
        for key, mean in means.items():
            assert after["rungs"][rung][key] == pytest.approx(mean, nan_ok=True)
    # every group decided on all its members at every rung it reached: promoted to the end, or cut
    assert len(after["groups"]) == 2 and len(after["trials"]) == 4
    stopped_groups = [g for g in after["groups"].values() if g["stopped_at"] is not None]
    assert [g["stopped_at"] for g in stopped_groups] == [0], after["groups"]
    for g in after["groups"].values():
        reached = len(milestones) if g["stopped_at"] is None else g["stopped_at"] + 1
        assert sorted(g["decisions"]) == [str(r) for r in range(reached)]
        for t in g["members"]:
            assert sorted(after["trials"][t]["values"]) == [str(r) for r in range(reached)], t
            assert all(not math.isnan(v) for v in after["trials"][t]["values"].values())

    store = ResultsStore(str(tmp_path / "store"), NAME)
    trials = store.trials().to_pandas()
    metrics = store.metrics().to_pandas()
    assert len(trials) == 4
    # no group split: its members end with the same status at the same epoch
    for _, group in trials.groupby("group_id"):
        assert group["status"].nunique() == 1 and group["last_epoch"].nunique() == 1, group
    # the group with the tiny learning rate was cut at the first rung; the other trained to max_t
    lrs = trials.set_index("trial_id")["config_json"].map(lambda c: json.loads(c)["train.lr"])
    cut = trials[trials["trial_id"].map(lrs) == 1e-9]
    kept = trials[trials["trial_id"].map(lrs) == 1e-2]
    assert set(cut["status"]) == {"STOPPED"} and set(cut["last_epoch"]) == {1.0}, cut
    assert set(cut["stop_reason"]) == {"seed-group asha rung 1 (epoch 1)"}, cut
    assert set(kept["status"]) == {"TERMINATED"} and set(kept["last_epoch"]) == {3.0}, kept
    # each trial's reports: every epoch from 0 to where it ended, each once (none lost, none repeated)
    assert not metrics.duplicated(["trial_id", "epoch"]).any()
    ends = trials.set_index("trial_id")["last_epoch"]
    for tid, rows in metrics.groupby("trial_id"):
        assert sorted(rows["epoch"]) == [float(e) for e in range(int(ends[tid]) + 1)], tid
    # reports written before the kill are kept with their numbers (a report the scheduler had not
    # recorded yet is reported again from its checkpoint: the same numbers, the row replaced)
    cols = ["train_loss", "val_loss", "val_cider"]
    both = metrics.merge(rows_before[["trial_id", "epoch", *cols]], on=["trial_id", "epoch"])
    assert len(both) == len(rows_before)
    for col in cols:
        x, y = both[f"{col}_x"].to_numpy(float), both[f"{col}_y"].to_numpy(float)
        assert x == pytest.approx(y, rel=1e-6, nan_ok=True), col

    # a member of the cut group held at the first rung (undecided there, its value recorded)
    cut_group = next(k for k, g in after["groups"].items() if g["stopped_at"] is not None)
    assert holders & set(after["groups"][cut_group]["members"]), (holders, after["groups"])
    # the cut group's members end as stopped trials: no error recorded, no error file, no Tune error
    assert cut["error"].isna().all(), cut["error"]
    assert not (sweep / "errors").exists() or not any((sweep / "errors").iterdir())
    assert not list((sweep / "tune").rglob("error.txt")), list((sweep / "tune").rglob("error.txt"))

    # the aggregate equals a plain-pandas recomputation from the raw Parquet files
    raw = pd.read_parquet(sweep / "results" / "metrics")
    raw["trial_id"] = raw["trial_id"].astype(str)
    last = raw.sort_values("epoch").groupby("trial_id").tail(1)
    expect = last.groupby("lr")["val_loss"].agg(["count", "mean", "std"])
    assert sorted(expect.index) == [1e-9, 1e-2]
    got = aggregate(store.metrics(), by=["lr"], metric="val_loss", at="last", mode="min").to_pandas()
    got = got.set_index("lr")
    for lr, row in expect.iterrows():
        assert got.loc[lr, "n"] == row["count"]
        assert got.loc[lr, "mean"] == pytest.approx(row["mean"])
        assert got.loc[lr, "std"] == pytest.approx(row["std"], nan_ok=True)
