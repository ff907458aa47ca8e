"""Sweeps on a real local Ray: search space, seed-group ASHA on real trials, results vs raw Parquet,
and resume after the driver process is killed by pid."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from gapinit_ray.plan import CASE_KEY, SEED_KEY, grid_points, param_space, params_of
from gapinit_ray.results import ResultsStore, aggregate
from gapinit_ray.spec import spec_from_dict

from .conftest import QUICKSTART, ROOT, share_caches


def sweep_raw(tmp_path: Path, name: str = "tiny", **over) -> dict:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["name"] = name
    raw["storage"] = str(tmp_path / "store")
    raw["backbones"] = [{"name": "tiny-blip2", "pretrain": False}]  # no pretraining: keeps tests short
    raw["data"]["sources"]["shapes"]["num_images"] = 64
    raw["data"]["val"]["limit"] = 6
    raw["calibration"].update({"num_samples": 16, "workers": 1})
    raw["train"].update({"epochs": 3, "batch_size": 8, "max_steps_per_epoch": 3, "lr": 1e-2})
    raw["eval"].update(
        {"metrics": ["bleu4", "cider"], "final_metrics": [], "generation": {"max_new_tokens": 6}}
    )
    raw["search"] = {"init": ["gap", "random"], "seed": [1, 2]}
    raw["scheduler"] = {
        "type": "seed-group-asha",
        "metric": "val_cider",
        "mode": "max",
        "grace_period": 1,
        "reduction_factor": 2,
    }
    raw["resources"] = {"workers_per_trial": 1, "cpus_per_worker": 1}
    raw.update(over)
    return raw


def test_search_space_seeds_first_and_cases() -> None:
    raw = sweep_raw(Path("/tmp/unused"))
    raw["search"] = {
        "train.lr": [1e-3, 1e-2],
        "seed": [1, 2, 3],
        "cases": [{"init": "gap"}, {"init": "random", "lora.rank": 2}],
    }
    spec = spec_from_dict(raw)
    space = param_space(spec)
    # Tune varies the alphabetically first key fastest: a configuration's seeds are created together
    assert sorted(space)[0] == SEED_KEY
    from ray.tune.search.variant_generator import generate_variants

    order = [(v["train.lr"], v[CASE_KEY], v[SEED_KEY]) for _, v in generate_variants(space)]
    assert len(order) == 12
    assert space[CASE_KEY]["grid_search"] == [0, 1]
    points = grid_points(spec)
    assert len(points) == 2 * 3 * 2
    assert params_of({SEED_KEY: 1, "train.lr": 1e-3, CASE_KEY: 1}, spec) == {
        "seed": 1,
        "train.lr": 1e-3,
        "init": "random",
        "lora.rank": 2,
    }


def _run_cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "gapinit_ray.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_tree(proc: psutil.Process) -> None:
    """Kill a process and everything it started (by pid: only what this test started)."""
    family = proc.children(recursive=True)
    for p in [proc, *family]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs([proc, *family], timeout=30)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(psutil.Process(proc.pid))
        raise
    return out, err


@pytest.mark.slow
def test_tiny_sweep_never_splits_a_group_and_aggregates_match_raw_parquet(tmp_path) -> None:
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(sweep_raw(tmp_path)))
    share_caches(tmp_path / "store", "gaps", "features")  # calibrated and cached once per session
    # 2 CPUs for 4 one-worker trials: members that reach a rung first end their Train run and wait,
    # and their worker slots go to the members still training (the hand-over the design rests on)
    proc = _run_cli("run", str(spec_path), "--num-cpus", "2", "--quiet", cwd=tmp_path)
    out, err = _finish(proc, 840)
    assert proc.returncode == 0, err[-3000:]
    assert "mean_pm_std" in out or "±" in out  # the aggregate table is printed at the end

    store = ResultsStore(str(tmp_path / "store"), "tiny")
    trials = store.trials().to_pandas()
    assert len(trials) == 4
    metrics = store.metrics().to_pandas()
    # a group (same config but the seed) is never split: its members end at the same epoch
    for _, group in trials.groupby("group_id"):
        assert group["last_epoch"].nunique() == 1, group[["trial_id", "status", "last_epoch"]]
        assert group["status"].nunique() == 1
    # each (trial, epoch) reported once
    assert not metrics.duplicated(["trial_id", "epoch"]).any()
    # every group was decided at the first rung on both members' values, and a stopped group's
    # members trained nothing past the rung they were stopped at
    from gapinit_ray.seedgroup.state import load_book, state_path

    book, _ = load_book(state_path(tmp_path / "store" / "tiny"))
    assert set(book.groups) == set(trials["group_id"])  # one group id: the scheduler's is the store's
    for group in book.groups.values():
        assert group.decisions[0] in ("CONTINUE", "STOP")
        assert all(0 in book.members[t].values for t in group.members)
        if group.stopped_at is not None:
            for t in group.members:
                assert len(book.members[t].values) == group.stopped_at + 1
    stop_epochs = {book.milestones[g.stopped_at] for g in book.groups.values() if g.stopped_at is not None}
    stopped = trials[trials["status"] == "STOPPED"]
    assert set(stopped["last_epoch"]) <= stop_epochs

    # the aggregate equals a plain-pandas recomputation from the raw Parquet files
    raw = pd.read_parquet(tmp_path / "store" / "tiny" / "results" / "metrics")
    raw["trial_id"] = raw["trial_id"].astype(str)
    last = raw.sort_values("epoch").groupby("trial_id").tail(1)
    expect = last.groupby("init")["val_cider"].agg(["count", "mean", "std"])
    got = aggregate(store.metrics(), by=["init"], metric="val_cider", at="last").to_pandas().set_index("init")
    for init, row in expect.iterrows():
        assert got.loc[init, "n"] == row["count"]
        assert got.loc[init, "mean"] == pytest.approx(row["mean"])
        assert got.loc[init, "std"] == pytest.approx(row["std"], nan_ok=True)

    report = _run_cli("report", str(tmp_path / "store" / "tiny"), "--by", "init", cwd=tmp_path)
    out, err = _finish(report, 300)
    assert report.returncode == 0, err
    assert (tmp_path / "store" / "tiny" / "report" / "curves.png").exists()


def test_finished_report_hands_tune_the_last_stored_report_of_a_terminated_trial(tmp_path) -> None:
    """What a resumed trainable reports for a trial that finished before the driver stopped but that
    Tune's saved state still shows running: its last stored report; nothing for unfinished trials."""
    from gapinit_ray.sweep import finished_report

    spec = spec_from_dict(sweep_raw(tmp_path, name="finished"))
    store = ResultsStore(spec.storage, spec.name)
    params = {"init": "gap", "seed": 1}
    assert finished_report(spec, "done") is None  # empty store
    for epoch in (1.0, 2.0, 3.0):
        for tid in ("done", "running"):
            store.write_report(
                tid, params, {"epoch": epoch, "val_cider": epoch / 10, "train_loss": 4 - epoch}
            )
    store.write_trial("running", params, status="RUNNING")
    assert finished_report(spec, "running") is None
    store.write_trial("done", params, status="TERMINATED")
    last = finished_report(spec, "done")
    assert last["epoch"] == 3.0 and last["val_cider"] == pytest.approx(0.3) and last["train_loss"] == 1.0
    assert all(v is not None for v in last.values())
    # the scheduler's metric came out NaN in the last report (stored as null) and a sweep-specific
    # metric (not a standard column) was reported: Tune still gets both, or it refuses the result
    store.write_report("nan", params, {"epoch": 1.0, "val_cider": float("nan"), "val_vqa_acc": 0.5})
    store.write_trial("nan", params, status="TERMINATED")
    last = finished_report(spec, "nan")
    assert spec.scheduler.metric == "val_cider" and math.isnan(last["val_cider"])
    assert last["val_vqa_acc"] == 0.5 and last["epoch"] == 1.0
