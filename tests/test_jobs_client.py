"""The Jobs API client's inputs without a cluster: address / token resolution, the config file, and
specs a cluster cannot run. (The real cluster round trips are in test_cluster.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from gapinit_ray.cluster import ClusterError, resolve_address, resolve_token

from .conftest import QUICKSTART, ROOT


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GAPINIT_CONFIG", str(tmp_path / "config.yaml"))
    return tmp_path


def test_address_precedence_flag_env_config(clean_env, monkeypatch) -> None:
    with pytest.raises(ClusterError, match="no cluster address"):
        resolve_address(None)
    (clean_env / "config.yaml").write_text("address: head.example:8265\n")
    assert resolve_address(None) == "http://head.example:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://env-head:8265/")
    assert resolve_address(None) == "http://env-head:8265"
    assert resolve_address("https://flag-head:443") == "https://flag-head:443"
    with pytest.raises(ClusterError, match="dashboard's http"):
        resolve_address("ray://head:10001")


def test_token_sources(clean_env, monkeypatch) -> None:
    assert resolve_token() is None
    (clean_env / ".ray").mkdir()
    (clean_env / ".ray" / "auth_token").write_text("from-home\n")
    assert resolve_token() == "from-home"
    tok = clean_env / "tok"
    tok.write_text("from-config\n")
    (clean_env / "config.yaml").write_text(f"token_file: {tok}\n")
    assert resolve_token() == "from-config"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert resolve_token() == "from-env"
    assert resolve_token(str(tok)) == "from-config"  # an explicit --token-file wins
    with pytest.raises(ClusterError, match=r"--token-file .*missing"):
        resolve_token(str(clean_env / "missing"))


def test_broken_config_file_names_the_file(clean_env) -> None:
    (clean_env / "config.yaml").write_text("adress: typo\n")
    with pytest.raises(ClusterError, match=r"config\.yaml: expected a mapping with keys address, token_file"):
        resolve_address(None)


def _cli(*args: str, home) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "gapinit_ray.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_submit_refuses_a_relative_storage_before_connecting(tmp_path) -> None:
    # the address is never contacted: the spec problem is found first
    out = _cli("submit", str(QUICKSTART), "--address", "http://127.0.0.1:9", home=tmp_path)
    assert out.returncode == 2
    assert "storage: './gapinit_results' is relative" in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_submit_a_bad_spec_is_a_spec_error(tmp_path) -> None:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["lora"]["rank"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = _cli("submit", str(path), "--address", "http://127.0.0.1:9", home=tmp_path)
    assert out.returncode == 2 and "lora.rank" in out.stderr and "Traceback" not in out.stderr


def test_run_reads_a_spec_from_the_environment(tmp_path) -> None:
    env_out = subprocess.run(
        [sys.executable, "-m", "gapinit_ray.cli", "validate", "env:GAPINIT_SPEC"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "GAPINIT_SPEC": QUICKSTART.read_text()},
        capture_output=True,
        text=True,
    )
    assert env_out.returncode == 0, env_out.stderr
    missing = _cli("validate", "env:NOPE", home=tmp_path)
    assert missing.returncode == 2 and "environment variable NOPE is not set" in missing.stderr


@pytest.mark.parametrize("port", [51401, 40403, 31404])
def test_a_port_holding_an_http_status_is_not_read_as_that_status(port: int) -> None:
    """A refused connection to a port whose digits contain 401 / 403 / 404 is "cannot reach", not
    "needs a token" (the address was once searched for the status code: CI drew port 51401)."""
    from gapinit_ray.cluster import JobsClient

    client = JobsClient.__new__(JobsClient)  # no connection: only the error mapping
    client._token, client.address, client.timeout_s = None, f"http://127.0.0.1:{port}", 20
    refused = ConnectionError(
        f"HTTPConnectionPool(host='127.0.0.1', port={port}): Max retries exceeded with url: /api/version "
        "(Caused by NewConnectionError: Failed to establish a new connection: [Errno 111] Connection refused)"
    )
    assert str(client._error(refused, job="j")).startswith(
        f"cannot reach the Ray Jobs API at {client.address}"
    )
    assert "needs a token" in str(client._error(RuntimeError("Request failed with status code 401")))
    assert "refused the token" in str(client._error(RuntimeError("status code 403 Forbidden")))
