"""The sweep service on a real multi-node cluster: two raylets on loopback (tests/loopback_cluster.py),
sweeps submitted through the Ray Jobs API with the `gapinit` CLI, followed, stopped and resumed; token
auth on a second cluster. Clusters are stopped by the pid of the process that started them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from gapinit_ray.results import ResultsStore

from .conftest import ROOT
from .loopback_cluster import free_port
from .test_sweep import sweep_raw

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT), **extra}
    # the job entrypoint runs `python -m gapinit_ray.cli`: the cluster's python is this interpreter
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        if var not in extra:
            env.pop(var, None)
    return env


def _stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the cluster process (it removes its nodes), then kill by pid whatever it left."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


@contextlib.contextmanager
def loopback_cluster(nodes: int, cpus: float, **env: str):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.loopback_cluster",
            "--nodes",
            str(nodes),
            "--cpus",
            str(cpus),
            "--dashboard-port",
            str(port),
        ],
        cwd=ROOT,
        env=_env(**env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), f"cluster did not start: {line!r}"
        address = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:  # the dashboard (Jobs API) comes up after the raylets
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=5)
                break
            except urllib.error.HTTPError:  # it answers (401 with token auth on): it is up
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        yield address, line.split()[1]
    finally:
        _stop_tree(proc)


def gapinit(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gapinit_ray.cli", *args],
        cwd=ROOT,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _wait_status(job: str, address: str, want: tuple[str, ...], timeout: float) -> str:
    deadline = time.time() + timeout
    status = ""
    while time.time() < deadline:
        out = gapinit("status", job, "--address", address)
        assert out.returncode == 0, out.stderr
        status = out.stdout.split("status", 1)[1].split()[0]
        if status in want:
            return status
        time.sleep(3)
    raise AssertionError(f"job {job} still {status} after {timeout} s")


def _alive_actor_classes(gcs_address: str) -> list[str]:
    """ALIVE actors of the cluster, by class (a separate process: this one stays out of Ray)."""
    code = (
        "import json, ray; from ray.util.state import list_actors; "
        f"ray.init(address={gcs_address!r}, logging_level='ERROR', log_to_driver=False); "
        "print(json.dumps([a.class_name for a in list_actors(filters=[('state', '=', 'ALIVE')], "
        "limit=1000)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _spec(tmp_path: Path, name: str, **train) -> Path:
    raw = sweep_raw(tmp_path, name=name)
    raw["storage"] = str(tmp_path / "shared")  # the "shared" storage every node sees
    raw["scheduler"] = {"type": "fifo", "metric": "val_cider", "mode": "max"}
    raw["search"] = {"init": ["gap", "random"], "seed": [1]}
    raw["train"].update(train)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_submit_status_logs_results_stop_resume_on_two_nodes(tmp_path) -> None:
    with loopback_cluster(nodes=2, cpus=1) as (address, gcs):
        # --- a sweep runs to the end through the Jobs API; its two trials use both nodes
        spec = _spec(tmp_path, "multinode", epochs=1, max_steps_per_epoch=2)
        sub = gapinit("submit", str(spec), "--address", address)
        assert sub.returncode == 0, sub.stderr
        job = sub.stdout.strip()
        assert job.startswith("gapinit-multinode-")
        assert _wait_status(job, address, ("SUCCEEDED", "FAILED", "STOPPED"), 600) == "SUCCEEDED", gapinit(
            "logs", job, "--address", address
        ).stdout[-3000:]
        logs = gapinit("logs", job, "--address", address)
        assert logs.returncode == 0 and "sweep 'multinode'" in logs.stdout
        listed = gapinit("list", "--address", address)
        assert job in listed.stdout and "SUCCEEDED" in listed.stdout
        status = gapinit("status", job, "--address", address)
        assert "trials   2 terminated" in status.stdout, status.stdout

        store = ResultsStore(str(tmp_path / "shared"), "multinode")
        metrics = store.metrics().to_pandas()
        assert sorted(metrics["init"]) == ["gap", "gap", "random", "random"]  # epochs 0 (at init) and 1
        nodes = {h.split("/")[-1] for h in metrics["host"]}
        assert len(nodes) == 2, f"trials ran on {nodes}, expected both nodes"
        res = gapinit("results", str(tmp_path / "shared" / "multinode"), "--by", "init", "--format", "json")
        assert res.returncode == 0, res.stderr
        assert {r["init"] for r in json.loads(res.stdout)} == {"gap", "random"}

        # --- stop a running sweep: its trials' actors end with it; submitting it again resumes it
        spec = _spec(tmp_path, "stoppable", epochs=2, max_steps_per_epoch=40)
        job = gapinit("submit", str(spec), "--address", address).stdout.strip()
        deadline = time.time() + 600
        while "RayTrainWorker" not in _alive_actor_classes(gcs):
            assert time.time() < deadline, "no Train worker started"
            time.sleep(3)
        stop = gapinit("stop", job, "--address", address)
        assert stop.returncode == 0 and stop.stdout.strip().endswith("STOPPED"), stop.stdout + stop.stderr
        deadline = time.time() + 120
        left = _alive_actor_classes(gcs)
        while any(c in ("RayTrainWorker", "TrainController", "ImplicitFunc") for c in left):
            assert time.time() < deadline, f"actors left after stop: {left}"
            time.sleep(2)
            left = _alive_actor_classes(gcs)

        again = gapinit("submit", str(spec), "--address", address)
        assert again.returncode == 0, again.stderr
        job2 = again.stdout.strip()
        assert _wait_status(job2, address, ("SUCCEEDED", "FAILED", "STOPPED"), 900) == "SUCCEEDED", gapinit(
            "logs", job2, "--address", address
        ).stdout[-3000:]
        trials = ResultsStore(str(tmp_path / "shared"), "stoppable").trials().to_pandas()
        assert sorted(trials["status"]) == ["TERMINATED", "TERMINATED"]
        metrics = ResultsStore(str(tmp_path / "shared"), "stoppable").metrics().to_pandas()
        assert not metrics.duplicated(["trial_id", "epoch"]).any()
        assert metrics.groupby("trial_id")["epoch"].max().eq(2).all()

        # --- an unknown id is one clear line, exit code 2
        bad = gapinit("status", "gapinit-nope-123", "--address", address)
        assert bad.returncode == 2
        assert bad.stderr.strip().count("\n") == 0 and "no job 'gapinit-nope-123'" in bad.stderr


def test_token_auth_refuses_a_client_without_the_token(tmp_path) -> None:
    token = "gapinit-test-token-0123456789abcdef0123456789abcdef"
    with loopback_cluster(nodes=1, cpus=1, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token) as (address, _):
        home = str(tmp_path)  # a user with no ~/.ray/auth_token
        refused = gapinit("list", "--address", address, HOME=home)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "needs a token" in refused.stderr and "Traceback" not in refused.stderr
        wrong = gapinit("list", "--address", address, RAY_AUTH_TOKEN="not-the-token", HOME=home)
        assert wrong.returncode == 2 and "refused the token" in wrong.stderr, wrong.stderr
        ok = gapinit("list", "--address", address, RAY_AUTH_TOKEN=token)
        assert ok.returncode == 0, ok.stderr
        assert "no sweeps submitted" in ok.stdout
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        via_file = gapinit("list", "--address", address, "--token-file", str(token_file), HOME=home)
        assert via_file.returncode == 0, via_file.stderr


def test_unreachable_cluster_is_one_line() -> None:
    out = gapinit("list", "--address", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 2
    assert (
        out.stderr.startswith("gapinit: error: cannot reach the Ray Jobs API")
        and "Traceback" not in out.stderr
    )
