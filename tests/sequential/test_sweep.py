"""The sequential phase on a real local Ray (the `gapinit` command in a subprocess, real trials): seeds
added while the sweep runs, each row once; the driver killed between looks and resumed reaches the same
seeds and verdicts; a budget already spent ends the phase at once on resume.

Small on purpose (1 epoch of 3 steps, 2 arms, seeds [1, 2] then one extra seed): the statistics are
tested in tests/results/test_anytime.py and the simulation benchmark; here what is tested is the
driver. The metric is val_loss (min): on a tiny backbone without pretraining val_cider is 0 everywhere.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import psutil
import pytest
import yaml

from gapinit_ray.results import ResultsStore

from ..conftest import share_caches
from ..test_sweep import _finish, _kill_tree, _run_cli, sweep_raw

NAME = "seq"


def _spec_file(tmp: Path) -> Path:
    raw = sweep_raw(tmp, name=NAME)
    raw["train"].update({"epochs": 1, "max_steps_per_epoch": 3})
    raw["search"] = {"init": ["gap", "random"], "seed": [1, 2]}
    raw["scheduler"] = {"type": "fifo", "metric": "val_loss", "mode": "min"}
    raw["sequential"] = {"max_seeds": 3, "min_seeds": 2, "metric": "val_loss", "mode": "min"}
    # 4 one-worker trials at once on 2 CPUs: the grid's 4 trials start together, then the round's 2
    raw["resources"] = {"workers_per_trial": 1, "cpus_per_worker": 0.5, "max_concurrent_trials": 4}
    path = tmp / "seq.yaml"
    path.write_text(yaml.safe_dump(raw))
    share_caches(tmp / "store", "gaps", "features")
    return path


def _record(sweep: Path) -> dict:
    return json.loads((sweep / "sequential.json").read_text())


def _decisions(record: dict) -> tuple:
    """What must not depend on a kill: each look's seeds, numbers and decision, each verdict."""
    looks = [
        (lk["comparison"], lk["n"], lk["seed"], lk["mean"], lk["e_value"], lk["decision"])
        for lk in record["looks"]
    ]
    verdicts = [
        (v["comparison"], v["status"], v["verdict"], v["seeds"], v["diffs"]) for v in record["verdicts"]
    ]
    rounds = [
        (r["round"], r["seeds"], sorted(json.dumps(t, sort_keys=True) for t in r["trials"]))
        for r in record["rounds"]
    ]
    return looks, verdicts, rounds


def _rows_once(sweep: Path) -> dict[tuple, int]:
    table = ResultsStore(str(sweep.parent), sweep.name).metrics(columns=["trial_id", "seed", "init", "epoch"])
    counts: dict[tuple, int] = {}
    for r in table.to_pylist():
        key = (r["init"], r["seed"], r["epoch"])
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("seq_clean")
    proc = _run_cli("run", str(_spec_file(tmp)), "--num-cpus", "2", "--quiet", cwd=tmp)
    out, err = _finish(proc, 600)
    assert proc.returncode == 0, err[-3000:]
    return tmp / "store" / NAME, out


@pytest.mark.slow
def test_seeds_added_while_the_sweep_runs_give_every_row_once(uninterrupted) -> None:
    sweep, out = uninterrupted
    record = _record(sweep)
    # the initial seeds, then one round that added seed 3 to both arms
    assert [r["seeds"] for r in record["rounds"]] == [[3]]
    assert {t["init"] for t in record["rounds"][0]["trials"]} == {"gap", "random"}
    assert _rows_once(sweep) == {
        (i, s, e): 1 for i in ("gap", "random") for s in (1, 2, 3) for e in (0.0, 1.0)
    }
    # a look after every seed: at 2 seeds, and at 3 unless the first was decisive
    (verdict,) = record["verdicts"]
    assert [lk["n"] for lk in record["looks"]] == list(range(2, verdict["n"] + 1))
    assert verdict["verdict"] in ("a_higher", "b_higher", "unresolved")
    assert verdict["seeds"] == [1, 2, 3][: verdict["n"]]
    assert "sequential comparisons" in out and "init=gap vs init=random" in out
    # Ray Tune's experiment box (one per Tune run: the grid's and the round's) is in the sweep's log of
    # Ray's output, not on the terminal
    assert "Configuration for experiment" not in out
    assert (sweep / "ray_output.log").read_text().count("Configuration for experiment") == 2
    # the audit log through `gapinit results --looks`
    proc = _run_cli("results", str(sweep), "--looks", cwd=sweep.parent)
    text, err = _finish(proc, 120)
    assert proc.returncode == 0, err
    assert "sequential looks" in text and "p_anytime" in text
    # and in the report: the verdicts, every look and the evidence against seeds
    proc = _run_cli("report", str(sweep), "--compare", "none", cwd=sweep.parent)
    _, err = _finish(proc, 300)
    assert proc.returncode == 0, err
    report = (sweep / "report" / "report.md").read_text()
    assert "## Sequential comparisons" in report and "sequential looks" in report
    assert (sweep / "report" / "sequential.png").stat().st_size > 1000


@pytest.mark.slow
def test_driver_killed_between_looks_resumes_to_the_same_seeds_and_verdicts(uninterrupted, tmp_path) -> None:
    """The driver (and the Ray it started) killed while a trial of the first round trains, after the
    look at 2 seeds and before the one at 3; `gapinit resume` then continues the sweep: the finished
    trials are not run again, the one that was training restarts from its checkpoint, every row is
    written once, and the seeds, looks and verdicts are the uninterrupted run's. (This is also the
    suite's test of a plain sweep's driver being killed mid-trial and resumed.)"""
    import pandas as pd

    clean, _ = uninterrupted
    proc = _run_cli("run", str(_spec_file(tmp_path)), "--num-cpus", "2", "--quiet", cwd=tmp_path)
    sweep = tmp_path / "store" / NAME
    deadline = time.monotonic() + 600

    def round_training() -> bool:
        if not (sweep / "sequential.json").exists() or not _record(sweep)["rounds"]:
            return False
        rows = _rows_once(sweep)
        return any((i, 3, 0.0) in rows for i in ("gap", "random")) and not all(
            (i, 3, 1.0) in rows for i in ("gap", "random")
        )

    while time.monotonic() < deadline and proc.poll() is None and not round_training():
        time.sleep(0.3)
    assert proc.poll() is None, "the sweep ended before a trial of its first round trained"
    _kill_tree(psutil.Process(proc.pid))
    proc.communicate()
    killed_at = pd.Timestamp.now(tz="UTC")
    killed = _record(sweep)
    assert [lk["n"] for lk in killed["looks"]] == [2]
    store = ResultsStore(str(sweep.parent), NAME)
    done_before = [t["trial_id"] for t in store.trials().to_pylist() if t["status"] == "TERMINATED"]
    assert len(done_before) == 4  # the grid's trials; the round's are not finished

    resumed = _run_cli("resume", str(sweep), "--num-cpus", "2", "--quiet", cwd=tmp_path)
    out, err = _finish(resumed, 600)
    assert resumed.returncode == 0, err[-3000:]
    assert _decisions(_record(sweep)) == _decisions(_record(clean))
    assert _rows_once(sweep) == _rows_once(clean)  # every (trial, epoch) once, as in the clean run
    assert "sequential comparisons" in out
    trials = store.trials().to_pandas()
    assert sorted(trials["status"]) == ["TERMINATED"] * 6
    metrics = store.metrics().to_pandas()
    # finished trials were not run again: all their rows were written before the driver was killed
    before = metrics[metrics["trial_id"].isin(done_before)]
    assert len(before) == 2 * len(done_before) and (before["timestamp"] < killed_at).all()
    # the finished sweep is compacted: one file per trial, and the sweep-level file covering them all
    assert sorted(p.name for p in (sweep / "results" / "metrics").rglob("*.parquet")) == [
        "_sweep.parquet",
        *["compacted.parquet"] * 6,
    ]


@pytest.mark.slow
def test_a_budget_already_spent_ends_the_phase_at_once_on_resume(uninterrupted, tmp_path) -> None:
    """The finished sweep, copied elsewhere, with its spec given a larger max_seeds and a budget it has
    already spent (as a sweep killed after spending its budget is found): resume of the copy resumes
    it where it is, starts no trial, and the open comparison ends unresolved at budget."""
    clean, _ = uninterrupted
    shutil.copytree(clean.parent, tmp_path / "store", symlinks=True)
    sweep = tmp_path / "store" / NAME
    spec = json.loads((sweep / "spec.json").read_text())
    spec["sequential"].update({"max_seeds": 5, "budget_device_hours": 1e-6})
    (sweep / "spec.json").write_text(json.dumps(spec))  # its storage still names the original's place
    before, original = _rows_once(sweep), (clean / "sequential.json").read_bytes()
    proc = _run_cli("resume", str(sweep), "--num-cpus", "2", cwd=tmp_path)
    out, err = _finish(proc, 300)
    assert proc.returncode == 0, err[-3000:]
    # `resume DIR` resumes the copy in DIR, says so, and leaves the original alone
    assert f"gapinit: resuming the sweep in {sweep} (its spec.json names storage {clean.parent}" in err
    assert (clean / "sequential.json").read_bytes() == original
    assert _rows_once(sweep) == before  # no trial started
    record = _record(sweep)
    assert record["ended"]["reason"] == "budget"
    (verdict,) = record["verdicts"]
    if verdict["status"] != "decided":
        assert verdict["status"] == "unresolved at budget" and verdict["verdict"] == "unresolved"
        assert "unresolved at budget" in out
    assert "budget reached" in err
