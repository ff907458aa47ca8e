"""Experiment trackers read back with each tool's own reader: MLflow's client on its local store,
TensorBoard's event reader, the W&B offline run directory. A resumed sweep continues the same runs; an
unreachable MLflow server never stops the sweep and the trial rows say logging failed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gapinit_ray.results import ResultsStore
from gapinit_ray.spec import spec_from_dict
from gapinit_ray.trackers import Trackers, run_id_of
from gapinit_ray.trackers.backends import wandb_history, wandb_records

from ..conftest import ROOT, share_caches
from ..test_sweep import sweep_raw

TRIALS = {  # trial id -> (group, config)
    "init=gap,seed=1_aa": ("g1", {"init": "gap", "seed": 1, "lora.rank": 1}),
    "init=gap,seed=2_bb": ("g1", {"init": "gap", "seed": 2, "lora.rank": 1}),
    "init=random,seed=1_cc": ("g2", {"init": "random", "seed": 1, "lora.rank": 1}),
}


def _metrics(tid: str, epoch: int) -> dict:
    return {"epoch": float(epoch), "val_cider": 0.1 * epoch + len(tid) / 100, "val_loss": 2.0 - 0.1 * epoch}


def _spec(tmp_path: Path, **mlflow_over):
    raw = sweep_raw(tmp_path)
    raw["loggers"] = [{"type": "mlflow", **mlflow_over}, "tensorboard", "wandb"]
    return spec_from_dict(raw)


def _log(spec, root: Path, epochs: range, end: bool, nices: list | None = None) -> dict[str, str]:
    trackers = Trackers(spec, root)
    for epoch in epochs:
        for tid, (group, config) in TRIALS.items():
            trackers.result(tid, group, config, _metrics(tid, epoch))
    if end:
        for tid in TRIALS:
            trackers.end(tid, "TERMINATED", None, None)
    if nices is not None:  # the trackers' process and what it started (W&B's service), once set up
        import os
        import time

        import psutil

        def threads() -> list[tuple[str, int, int]]:  # on Linux the priority is per thread
            out = []
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error, OSError):
                    out += [
                        (
                            f"{p.name()}:{t.id}",
                            os.getpriority(os.PRIO_PROCESS, t.id),
                            os.sched_getscheduler(t.id),
                        )
                        for t in p.threads()
                    ]
            return out

        # each tracker sets itself up at normal priority (while a sweep's trials start), then every
        # thread of the process drops to the lowest, and what starts later (W&B's service) inherits it
        assert trackers.wait_ready(120)  # what a sweep waits for before its trials start
        proc, deadline = psutil.Process(trackers._proc.pid), time.time() + 120
        seen = threads()
        set_up = {(n, policy) for _, n, policy in seen}  # the trackers' process, ready
        assert set_up == {(19, os.SCHED_IDLE)}, seen
        while time.time() < deadline and not (
            proc.children(recursive=True) and {(n, policy) for _, n, policy in seen} == {(19, os.SCHED_IDLE)}
        ):
            time.sleep(0.5)
            seen = threads()
        nices += seen
    return trackers.close()


def test_three_trackers_read_back_and_a_resume_continues_the_same_runs(tmp_path) -> None:
    spec = _spec(tmp_path)
    root = tmp_path / "sweep"
    nices: list[tuple[str, int, int]] = []
    assert _log(spec, root, range(0, 2), end=False, nices=nices) == {}  # the sweep is killed after epoch 1...
    # all tracker I/O runs at the lowest CPU priority, W&B's service included: trials never wait for it
    import os

    assert len(nices) >= 2 and {(n, policy) for _, n, policy in nices} == {(19, os.SCHED_IDLE)}, nices
    # ...and resumed: Tune replays epoch 1 (restored from its checkpoint), then epoch 2 and the end
    assert _log(spec, root, range(1, 3), end=True) == {}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow/mlflow.db")
    exp = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    trials = [r for r in runs if r.data.tags.get("gapinit.kind") == "trial"]
    groups = {r.info.run_id: r for r in runs if r.data.tags.get("gapinit.kind") == "group"}
    assert sorted(r.data.tags["gapinit.trial_id"] for r in trials) == sorted(TRIALS)  # one run each
    assert sorted(r.data.tags["gapinit.group_id"] for r in groups.values()) == ["g1", "g2"]
    for r in trials:
        tid = r.data.tags["gapinit.trial_id"]
        group, config = TRIALS[tid]
        parent = groups[r.data.tags["mlflow.parentRunId"]]
        assert parent.data.tags["gapinit.group_id"] == group == r.data.tags["gapinit.group_id"]
        assert r.data.params["init"] == config["init"] and r.data.params["seed"] == str(config["seed"])
        history = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_cider"))
        assert history == [(e, pytest.approx(_metrics(tid, e)["val_cider"])) for e in range(3)]
        assert r.info.status == "FINISHED" and r.data.tags["gapinit.status"] == "TERMINATED"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for tid in TRIALS:
        acc = EventAccumulator(str(root / "tensorboard" / tid))
        acc.Reload()
        values = [(e.step, e.value) for e in acc.Scalars("val_cider")]
        assert values == [(e, pytest.approx(_metrics(tid, e)["val_cider"], rel=1e-6)) for e in range(3)]
        # the HParams plugin's session: the config without its seed, plus the group id
        from tensorboard.plugins.hparams import plugin_data_pb2

        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert info.hparams["group_id"].string_value == TRIALS[tid][0] and "seed" not in info.hparams
        assert info.hparams["init"].string_value == TRIALS[tid][1]["init"]

    offline = sorted((root / "wandb" / "wandb").glob("offline-run-*"))
    ids = {p.name.split("-", 3)[3] for p in offline}
    assert ids == {run_id_of(t) for t in TRIALS}  # the resume continued each run's id: no new runs
    for p in offline:
        record = _wandb_run_record(p)
        tid = next(t for t in TRIALS if run_id_of(t) == record.run_id)
        assert record.run_group == TRIALS[tid][0] and record.job_type == TRIALS[tid][1]["init"]
    for tid in TRIALS:  # one history row per epoch over the run's offline logs: the replay is skipped
        runs = [p for p in offline if p.name.endswith("-" + run_id_of(tid))]
        assert sorted(row["_step"] for p in runs for row in wandb_history(p)) == [0, 1, 2]


def _wandb_run_record(run_dir: Path):
    """The run record (id, group, job type) of an offline W&B run, read from its ``.wandb`` log."""
    for rec in wandb_records(run_dir):
        if rec.WhichOneof("record_type") == "run":
            return rec.run
    raise AssertionError(f"{run_dir}: no run record")


def test_an_unreachable_tracker_is_one_line_and_every_trial_says_logging_failed(
    tmp_path, capfd, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    spec = _spec(tmp_path, tracking_uri="http://127.0.0.1:9")  # nothing listens on the discard port
    failed = _log(spec, tmp_path / "sweep", range(0, 2), end=True)
    assert set(failed) == set(TRIALS)
    assert all(v.startswith("logging failed: mlflow: ") for v in failed.values())
    err = capfd.readouterr().err
    assert err.count("gapinit: logger mlflow failed") == 1  # once, not per event


def test_a_logger_whose_package_is_missing_is_a_spec_error_naming_the_extra(tmp_path) -> None:
    raw = sweep_raw(tmp_path)
    raw["loggers"] = ["wandb"]
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    code = "import sys; sys.modules['wandb'] = None; from gapinit_ray.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run(
        [sys.executable, "-c", code, "validate", str(spec_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "loggers" in r.stderr and "pip install 'gapinit-ray[wandb]'" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_sweep_report_goes_to_one_sweep_level_mlflow_run(tmp_path) -> None:
    import json

    from mlflow.tracking import MlflowClient

    from gapinit_ray.trackers import log_report

    spec = _spec(tmp_path)
    root = tmp_path / "sweep"
    (root / "report").mkdir(parents=True)
    (root / "spec.json").write_text(json.dumps(spec.model_dump(mode="json")))
    page = root / "report" / "report.md"
    page.write_text("first\n")
    first = log_report(root, [str(page)])
    page.write_text("second\n")  # the report written again: the same run, the files replaced
    assert log_report(root, [str(page)]) == first
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow/mlflow.db")
    exp = client.get_experiment_by_name(spec.name)
    sweeps = [
        r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("gapinit.kind") == "sweep"
    ]
    assert [r.info.run_id for r in sweeps] == [first]
    assert [a.path for a in client.list_artifacts(first, "report")] == ["report/report.md"]
    got = Path(client.download_artifacts(first, "report/report.md", str(tmp_path)))
    assert got.read_text() == "second\n"


def _wait_for(what, timeout_s: float, proc) -> None:
    import time

    deadline = time.time() + timeout_s
    while not what() and time.time() < deadline and proc.poll() is None:
        time.sleep(1)


@pytest.mark.slow
def test_a_killed_and_resumed_sweep_with_all_three_trackers_logs_what_the_store_has_once(tmp_path) -> None:
    """A tiny sweep with all three trackers in a `gapinit run` subprocess, SIGKILLed (with everything it
    started: Ray, the trackers' process, wandb-core) once a trial finished and the next one reported,
    then `gapinit resume`d: each tracker read back with its own reader has exactly one run per trial,
    the store's per-epoch metrics once each (no step logged twice), and `gapinit report` puts the
    report on the sweep's MLflow run."""
    import time

    import psutil

    from ..test_sweep import _finish, _kill_tree, _run_cli

    raw = sweep_raw(tmp_path, name="tracked")
    share_caches(raw["storage"], "gaps", "features")  # calibrated and cached once per session
    raw["search"] = {"init": ["gap"], "seed": [1, 2]}
    raw["scheduler"]["type"] = "fifo"
    raw["train"]["epochs"] = 2
    raw["resources"]["max_concurrent_trials"] = 1  # one trial at a time: "one done, one running"
    raw["loggers"] = ["mlflow", "tensorboard", "wandb"]
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    spec = spec_from_dict(raw)
    root = Path(spec.storage) / spec.name
    store = ResultsStore(spec.storage, spec.name)

    def table(kind: str):
        try:
            return getattr(store, kind)().to_pandas()
        except Exception:
            return None

    def one_done_and_the_next_reported() -> bool:
        t, m = table("trials"), table("metrics")
        if t is None or m is None:
            return False
        done = set(t.loc[t["status"] == "TERMINATED", "trial_id"])
        return bool(done) and bool(set(m["trial_id"]) - done)

    proc = _run_cli("run", str(spec_path), "--num-cpus", "2", "--quiet", cwd=tmp_path)
    _wait_for(one_done_and_the_next_reported, 900, proc)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    assert one_done_and_the_next_reported(), "no trial finished before the deadline"
    time.sleep(3)  # the trackers' process takes the report
    _kill_tree(psutil.Process(proc.pid))
    proc.communicate()
    resumed = _run_cli("resume", str(root), "--num-cpus", "2", "--quiet", cwd=tmp_path)
    _out, err = _finish(resumed, 900)
    assert resumed.returncode == 0, err[-3000:]

    metrics, trials = store.metrics().to_pandas(), store.trials().to_pandas()
    assert sorted(trials["status"]) == ["TERMINATED"] * 2 and trials["logger_errors"].isna().all()
    assert not metrics.duplicated(["trial_id", "epoch"]).any()
    ours = {
        tid: sorted((round(e), v) for e, v in zip(rows["epoch"], rows["val_cider"], strict=True))
        for tid, rows in metrics.groupby("trial_id")
    }
    assert sorted(ours) == sorted(trials["trial_id"])

    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow/mlflow.db")
    exp = client.get_experiment_by_name(spec.name)
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("gapinit.kind") == "trial"]
    assert sorted(r.data.tags["gapinit.trial_id"] for r in runs) == sorted(ours)  # one run per trial
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1  # both seeds under one group's run, closed by the resumed sweep
    assert client.get_run(parents.pop()).info.status == "FINISHED"
    assert sorted(p.name for p in (root / "tensorboard").iterdir()) == sorted(ours)  # one run dir each
    offline = sorted((root / "wandb" / "wandb").glob("offline-run-*"))
    assert {p.name.split("-", 3)[3] for p in offline} == {run_id_of(t) for t in ours}  # one run id each
    for r in runs:
        tid = r.data.tags["gapinit.trial_id"]
        expected = [(e, pytest.approx(v)) for e, v in ours[tid]]
        logged = [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_cider")]
        assert sorted(logged) == expected  # every epoch once: no step twice after the resume
        assert r.info.status == "FINISHED" and r.data.tags["gapinit.status"] == "TERMINATED"
        assert client.list_artifacts(r.info.run_id, "adapter")  # the trial's last adapter
        acc = EventAccumulator(str(root / "tensorboard" / tid))
        acc.Reload()
        scalars = [(s.step, s.value) for s in acc.Scalars("val_cider")]
        assert sorted(scalars) == [(e, pytest.approx(v, rel=1e-6)) for e, v in ours[tid]]
        steps = [
            r["_step"] for p in offline if p.name.endswith("-" + run_id_of(tid)) for r in wandb_history(p)
        ]
        assert sorted(steps) == [e for e, _ in ours[tid]]

    from gapinit_ray.cli import main

    assert main(["report", str(root)]) == 0
    sweep_runs = [
        r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("gapinit.kind") == "sweep"
    ]
    assert len(sweep_runs) == 1
    logged = {a.path for a in client.list_artifacts(sweep_runs[0].info.run_id, "report")}
    assert {"report/report.md", "report/report.html"} <= logged
