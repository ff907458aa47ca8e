"""Where the work runs: an embedded local Ray (started and stopped by us) or an existing cluster."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from gapinit_ray.errors import GapinitError

TRAIN_ENV = {
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "86400",
    # Ray Train's controller sees a report and the end of training when it polls its workers (every 2 s
    # by default); every trial pays that latency at its end and every rung decision waits on it
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
#: The embedded single-machine Ray has no node to lose to a preemption: no watcher actor per trial (one
#: process less to start and hold for every trial segment).
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


class ClusterError(GapinitError):
    """The Ray cluster cannot be reached or refused us."""


#: Seconds every cluster call may wait to connect, and then for each answer (the Jobs API's HTTP
#: requests, the probe of a head before ``ray.init``): an address that accepts connections and never
#: answers is an error, not a hang.
TIMEOUT_ENV = "GAPINIT_CLUSTER_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 20.0


def cluster_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ClusterError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0")
    return value


@contextlib.contextmanager
def ray_session(
    address: str | None = None, num_cpus: int | None = None, quiet: bool = True
) -> Iterator[None]:
    """Use the Ray already initialized in this process, connect to ``address`` (or ``RAY_ADDRESS``),
    or start an embedded local Ray for the duration of the block (and shut down only what we started).
    The embedded Ray listens on loopback only (:func:`_loopback_only`)."""
    import ray

    if ray.is_initialized():
        yield
        return
    source = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address.strip().lower().startswith(("http://", "https://")):
        # the dashboard / Jobs API address README tells cluster users to export for `submit`: ray.init
        # cannot use it (it needs the GCS or the Ray Client port), and running the sweep here instead
        # would silently put a cluster's sweep on this machine
        raise ClusterError(
            f"{source} {address} is a Ray Jobs API (dashboard) address: `gapinit submit` runs a sweep "
            "there; to run it here on an embedded local Ray, unset RAY_ADDRESS (or connect to the "
            "cluster's GCS with --address HEAD:6379 or ray://HEAD:10001)"
        )
    if address and os.environ.get("RAY_AUTH_TOKEN"):
        well_formed_token(os.environ["RAY_AUTH_TOKEN"], "RAY_AUTH_TOKEN")
    kwargs: dict = {"log_to_driver": not quiet, "logging_level": "ERROR"} if quiet else {}
    # Trials wait for CPUs/GPUs on purpose (a paused seed-group member's slot goes to another trial);
    # Ray Train's default gives a worker group 60 s to be scheduled and started, then tears it down and
    # retries, which on a busy cluster turns waiting into a restart loop. Let them wait.
    defaults = TRAIN_ENV if address else {**TRAIN_ENV, **LOCAL_TRAIN_ENV}
    env = {k: os.environ.get(k, v) for k, v in defaults.items()}
    os.environ.update(env)  # the embedded Ray's processes inherit the driver's environment
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        # a driver started by the Jobs API (`gapinit submit`) already has these in its job's
        # runtime_env, which every worker inherits; Ray refuses to merge the same key twice
        kwargs["runtime_env"] = {"env_vars": env}
    if address:
        _probe(address)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            with _loopback_only():
                # address="local": always a new instance of our own, even when a `ray start` cluster
                # runs on this machine (plain ray.init() would join it, and refuse num_cpus)
                ray.init(
                    address="local",
                    num_cpus=num_cpus or os.cpu_count() or 1,
                    dashboard_host="127.0.0.1",
                    **kwargs,
                )
    except (ConnectionError, TimeoutError) as e:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}; check the address "
            "(ray://HEAD:10001 or HEAD:6379), that the head node is up, and RAY_AUTH_TOKEN if auth is on"
        ) from None
    global _EMBEDDED
    _EMBEDDED = not address
    try:
        yield
    finally:
        _EMBEDDED = False
        ray.shutdown()


_EMBEDDED = False


def embedded() -> bool:
    """Whether the Ray this process uses is the embedded local one :func:`ray_session` started (its
    resources are fixed: no node will join it)."""
    return _EMBEDDED


def local_resources(num_cpus: int | None = None, count_gpus: bool = True) -> dict[str, float]:
    """What the embedded local Ray of ``gapinit run`` on this machine has (``--num-cpus`` or every
    CPU; every CUDA GPU), without starting Ray. ``count_gpus=False`` skips the GPU count (it imports
    torch, about a second) when the question does not involve GPUs."""
    gpus = 0
    try:
        if count_gpus:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no usable torch: no GPU for Ray either
        gpus = 0
    return {"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": float(gpus)}


def resource_problem(spec, nodes: list[dict] | None = None) -> str | None:
    """What the cluster's live nodes (or ``nodes``: resource dicts) cannot grant of ``spec.resources``
    now, in words (``None``: they can): a worker (CPUs, GPUs) larger than every node, or more workers
    per trial than all nodes together hold."""
    r = spec.resources
    ask = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.gpus_per_worker else {})}
    if nodes is None:
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        return None

    def fit(res: dict) -> int:
        return int(min(res.get(k, 0.0) // v for k, v in ask.items()))

    largest = max(nodes, key=lambda res: (res.get("GPU", 0.0), res.get("CPU", 0.0)))
    have = f"the largest node has {largest.get('CPU', 0):g} CPU(s) and {largest.get('GPU', 0):g} GPU(s)"
    if not any(fit(res) >= 1 for res in nodes):
        field = (
            "resources.gpus_per_worker"
            if r.gpus_per_worker and not any(res.get("GPU", 0) >= r.gpus_per_worker for res in nodes)
            else "resources.cpus_per_worker"
        )
        value = r.gpus_per_worker if field.endswith("gpus_per_worker") else r.cpus_per_worker
        return f"{field}={value:g}: no node can hold one worker ({have})"
    total = sum(fit(res) for res in nodes)
    if total < r.workers_per_trial:
        return (
            f"resources.workers_per_trial={r.workers_per_trial} with {r.cpus_per_worker:g} CPU(s)"
            f"{f' and {r.gpus_per_worker:g} GPU(s)' if r.gpus_per_worker else ''} each: the cluster holds "
            f"{total} such worker(s) at once"
        )
    return None


_warned: set[str] = set()


def check_resources(spec) -> str | None:
    """Refuse, before anything is scheduled, resource requests the cluster can never grant
    (:func:`resource_problem`). On the embedded local Ray that is an error (exit 2, naming the field,
    what it asks and what there is); on a cluster the autoscaler may still add nodes, so it is one
    warning line (once per process) and the problem is returned, for :func:`resource_watch`."""
    import sys

    problem = resource_problem(spec)
    if problem is None:
        return None
    if embedded():
        raise ClusterError(f"{problem}; lower it, or run on a cluster that has the resources (--address)")
    if problem not in _warned:
        _warned.add(problem)
        print(
            f"gapinit: warning: {problem} now; trials wait until the autoscaler adds such nodes",
            file=sys.stderr,
        )
    return problem


#: how often :func:`resource_watch` says what a sweep still waits for
RESOURCE_WAIT_NOTICE_S = 60.0


@contextlib.contextmanager
def periodic(every_s: float, tick, name: str) -> Iterator[None]:
    """While the block runs: ``tick()`` every ``every_s`` in a daemon thread (``name``), until it returns
    True or the block ends."""
    import threading

    done = threading.Event()

    def loop() -> None:
        while not done.wait(every_s):
            if tick():
                return

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


@contextlib.contextmanager
def resource_watch(spec, problem: str | None, every_s: float | None = None) -> Iterator[None]:
    """While the block runs on a cluster that cannot hold a trial's workers yet (``problem``, from
    :func:`check_resources`): every ``every_s`` (default :data:`RESOURCE_WAIT_NOTICE_S`) one line on
    stderr saying what the sweep waits for and for how long, instead of silence; one line when the
    cluster can hold them, then quiet. Nothing when there is no problem."""
    import sys
    import time

    if problem is None:
        yield
        return
    t0 = time.monotonic()

    def watch() -> bool:
        try:
            now = resource_problem(spec)
        except Exception:  # the cluster went away: the sweep itself reports that
            return True
        waited = (time.monotonic() - t0) / 60
        if now is None:
            print(
                f"gapinit: the cluster can hold a trial's workers now (after {waited:.0f} min)",
                file=sys.stderr,
            )
            return True
        print(f"gapinit: waiting {waited:.0f} min for resources: {now}", file=sys.stderr)
        return False

    every = RESOURCE_WAIT_NOTICE_S if every_s is None else every_s
    with periodic(every, watch, "gapinit-resource-watch"):
        yield


#: Ray's switch for single-machine Ray (its default on macOS and Windows): the node's address is then
#: loopback, and every server of the node (GCS, raylet, object manager, workers, dashboard agent,
#: runtime env agent) listens on 127.0.0.1 only.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While the embedded Ray starts: make it listen on loopback only, so nothing of it (GCS, raylet,
    dashboard and Jobs API, agents) is reachable from another machine.

    Ray 2.60's ``ray.init`` turns ``_node_ip_address="127.0.0.1"`` into the machine's address, and its
    servers then listen on every interface (``::`` / ``0.0.0.0``); with Ray's single-machine switch
    (:data:`LOCAL_ONLY_ENV` off, read by Ray when it picks the node's address) the node's address is
    127.0.0.1 and they listen there. Both the variable (for processes Ray starts) and Ray's parsed
    constant (Ray may be imported already) are set, and restored afterwards: a later connection to a
    real cluster must report this machine's real address."""
    from gapinit_ray.ray_private import set_cluster_switch

    saved_env = os.environ.get(LOCAL_ONLY_ENV)
    os.environ[LOCAL_ONLY_ENV] = "0"
    saved = set_cluster_switch(False)
    try:
        yield
    finally:
        set_cluster_switch(saved)
        if saved_env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = saved_env


#: An HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (the GCS, the Ray Client
#: server) answers with its own SETTINGS frame at once.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a head that does not answer: ``ray.init`` keeps retrying a dead GCS for minutes,
    and waits for ever on a port that accepts connections and never answers. Checks that something
    listens at ``host:port`` and that it says anything at all to a gRPC client's opening within
    :func:`cluster_timeout` (``auto`` and ``local`` are left to Ray)."""
    import socket

    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = target.rpartition(":")
    if address in ("auto", "local") or not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s) as c:
            answer_s = cluster_timeout()
            c.settimeout(answer_s)
            c.sendall(_H2_PREFACE)
            try:
                c.recv(64)  # anything, or a closed connection (a TLS server may hang up): an answer
            except TimeoutError:
                raise ClusterError(
                    f"cannot reach the Ray cluster at {address}: {host}:{port} accepts connections but did "
                    f"not answer within {answer_s:g} s ({TIMEOUT_ENV}); check the address (ray://HEAD:10001 "
                    "or HEAD:6379) and that it is a Ray head"
                ) from None
    except OSError as e:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address}: nothing answers at {host}:{port} "
            f"({e.strerror or type(e).__name__}); check the address (ray://HEAD:10001 or HEAD:6379) "
            "and that the head node is up"
        ) from None


# ------------------------------------------------------------------------------ the Jobs API client

#: Where `submit`/`status`/... look for the cluster address and token when not given on the command line.
CONFIG_ENV = "GAPINIT_CONFIG"
DEFAULT_CONFIG = Path("~/.config/gapinit/config.yaml")
#: Every job this package submits carries this metadata key (value: the sweep name).
SWEEP_KEY = "gapinit_sweep"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
#: The job's environment variable that carries the validated spec (`gapinit run env:GAPINIT_SPEC`).
SPEC_ENV = "GAPINIT_SPEC"
#: How long `submit` retries while a freshly started head has no job agent yet.
SUBMIT_RETRY_S = 120.0


def _config() -> dict:
    path = Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG).expanduser()
    if not path.exists():
        return {}
    from gapinit_ray.spec import yaml_load

    try:
        data = yaml_load(path.read_text())
    except Exception as e:  # a broken config file is the user's to fix: say which
        raise ClusterError(f"{path}: not a YAML mapping ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not set(data) <= {"address", "token_file"}:
        raise ClusterError(f"{path}: expected a mapping with keys address, token_file")
    return data


def resolve_address(address: str | None) -> str:
    """The Jobs API address: ``--address``, else ``RAY_ADDRESS`` (an http(s) one), else the config
    file's ``address``."""
    addr = address or os.environ.get("RAY_ADDRESS") or _config().get("address")
    if not addr:
        raise ClusterError(
            "no cluster address: pass --address http://HEAD:8265, set RAY_ADDRESS, or put "
            f"'address: http://HEAD:8265' in {os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG}"
        )
    addr = str(addr).strip()
    if "://" not in addr:
        addr = f"http://{addr}"
    if not addr.startswith(("http://", "https://")):
        raise ClusterError(
            f"--address {addr}: the Jobs API is the dashboard's http(s) address, e.g. http://HEAD:8265"
        )
    return addr.rstrip("/")


def well_formed_token(token: str, source: str) -> str:
    """``token`` without its surrounding whitespace, if it is one line of printable characters; else a
    ClusterError naming ``source`` (never the token, nor any part of it: it is a secret, and a line
    break in it would otherwise reach an error message through the HTTP library's header check)."""
    token = token.strip()
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ClusterError(
            f"{source}: the token is malformed (it holds a line break, a space or a control character; "
            "not shown); a token is one line of printable characters: write it again"
        )
    return token


def resolve_token(token_file: str | None = None) -> str | None:
    """Ray's token auth (``RAY_AUTH_MODE=token``): ``--token-file``, else ``RAY_AUTH_TOKEN``, else the
    file named by ``RAY_AUTH_TOKEN_PATH``, the config file's ``token_file`` or ``~/.ray/auth_token``.
    A malformed token (:func:`well_formed_token`) is an error naming where it came from."""
    if not token_file and os.environ.get("RAY_AUTH_TOKEN"):
        return well_formed_token(os.environ["RAY_AUTH_TOKEN"], "RAY_AUTH_TOKEN")
    candidates = [token_file, os.environ.get("RAY_AUTH_TOKEN_PATH"), _config().get("token_file")]
    for i, name in enumerate(candidates):
        if not name:
            continue
        path = Path(name).expanduser()
        what = ("--token-file", "RAY_AUTH_TOKEN_PATH", "config token_file")[i]
        try:
            return well_formed_token(path.read_text(), f"{what} {path}")
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise ClusterError(f"{what} {path}: cannot read the token ({why})") from None
    default = Path("~/.ray/auth_token").expanduser()
    return well_formed_token(default.read_text(), str(default)) if default.exists() else None


def check_submittable(spec, source: str) -> str:
    """The spec's storage, if a cluster can use it: an absolute (shared) path or a URI. Every other
    local path the spec names (data files, image dirs, checkpoint dirs) must be absolute too: the job
    runs in a working dir of the cluster's choosing, so a relative path would mean nothing there."""
    from gapinit_ray.spec import relative_paths

    for field, value in relative_paths(spec):
        if field == "storage":
            raise ClusterError(
                f"{source}: storage: {value!r} is relative; on a cluster give an absolute shared path "
                "or a URI (e.g. storage=/mnt/shared/gapinit or --storage s3://bucket/gapinit)"
            )
        raise ClusterError(
            f"{source}: {field}: {value!r} is relative; on a cluster give the absolute path every node "
            "sees (a shared volume) or a URI"
        )
    return str(spec.storage)


def _is_timeout(e: BaseException) -> bool:
    import requests

    return isinstance(e, TimeoutError | requests.exceptions.Timeout)


def _client_class():
    """Ray's ``JobSubmissionClient`` whose every HTTP request has a connect and a read timeout (Ray
    sets none, so an address that accepts connections and never answers hung ``list`` for ever)."""
    from ray.job_submission import JobSubmissionClient

    class TimedJobSubmissionClient(JobSubmissionClient):
        def __init__(self, *args, timeout_s: float, **kwargs) -> None:
            self._gapinit_timeout = (timeout_s, timeout_s)
            super().__init__(*args, **kwargs)

        def _do_request(self, *args, **kwargs):
            kwargs.setdefault("timeout", self._gapinit_timeout)
            return super()._do_request(*args, **kwargs)

    return TimedJobSubmissionClient


class JobsClient:
    """``gapinit submit/status/logs/stop/list``: Ray's ``JobSubmissionClient`` with one-line errors."""

    def __init__(self, address: str | None = None, token_file: str | None = None) -> None:
        self.address = resolve_address(address)
        token = resolve_token(token_file)
        self._token = token
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = cluster_timeout()
        try:
            self._client = _client_class()(
                self.address, headers=dict(self._headers), timeout_s=self.timeout_s
            )
        except Exception as e:  # ConnectionError, requests errors, version mismatch
            raise self._error(e) from None

    def _error(self, e: BaseException, job: str | None = None) -> ClusterError:
        text = str(e).strip()
        if self._token:  # an error text may quote a request header: never show the token
            text = text.replace(self._token, "<token>")
        first = text.splitlines()[0] if text else type(e).__name__
        low = text.lower()

        def status(code: int) -> bool:
            # an HTTP status in the text, not a number inside the address (port 51401 holds "401")
            return re.search(rf"(?<![\d.:]){code}(?![\d.:])", text.replace(self.address, "")) is not None

        if _is_timeout(e) or "timed out" in low:
            return ClusterError(
                f"the Ray Jobs API at {self.address} did not answer within {self.timeout_s:g} s "
                f"({TIMEOUT_ENV}); check the address (the head's dashboard port, default 8265) and that "
                "the cluster is up"
            )
        if status(401) or "unauthorized" in low or "authentication required" in low:
            return ClusterError(
                f"{self.address} refused the request: it needs a token (set RAY_AUTH_TOKEN, "
                "--token-file, or token_file in the config file)"
            )
        if status(403) or "forbidden" in low or "invalid authentication token" in low:
            return ClusterError(f"{self.address} refused the token: check RAY_AUTH_TOKEN / --token-file")
        if job is not None and ("does not exist" in low or status(404) or "not found" in low):
            return ClusterError(f"no job {job!r} on {self.address}; `gapinit list` shows the sweeps there")
        if isinstance(e, ConnectionError | TimeoutError) or "connect" in low or "connection" in low:
            return ClusterError(
                f"cannot reach the Ray Jobs API at {self.address} ({first}); check the address "
                "(the head's dashboard port, default 8265) and that the cluster is up"
            )
        return ClusterError(f"{self.address}: {first}")

    def _call(self, fn, *args, job: str | None = None, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise self._error(e, job) from None

    # -- commands

    def submit(
        self,
        spec,
        *,
        source: str,
        ship_code: bool = False,
        submission_id: str | None = None,
    ) -> str:
        """Submit a validated spec as a Ray job running ``gapinit run``; returns the submission id at
        once. Only the validated spec travels (as an environment variable of the job: no upload); data
        and storage are paths/URIs on the cluster. ``ship_code`` also uploads this package."""
        import json
        import re
        import uuid

        storage = check_submittable(spec, source)
        sid = submission_id or f"gapinit-{re.sub(r'[^A-Za-z0-9_-]', '-', spec.name)}-{uuid.uuid4().hex[:8]}"
        env = {
            **TRAIN_ENV,
            "TOKENIZERS_PARALLELISM": "false",
            SPEC_ENV: json.dumps(spec.model_dump(mode="json")),
        }
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME"):
            if var in os.environ:
                env[var] = os.environ[var]
        runtime_env: dict = {"env_vars": env}
        if ship_code:
            import gapinit_ray

            runtime_env["py_modules"] = [str(Path(gapinit_ray.__file__).parent)]
        import time

        deadline = time.monotonic() + SUBMIT_RETRY_S
        while True:
            try:
                self._client.submit_job(
                    entrypoint=f"python -m gapinit_ray.cli run env:{SPEC_ENV}",
                    submission_id=sid,
                    runtime_env=runtime_env,
                    metadata={SWEEP_KEY: spec.name, "storage": storage, "spec": Path(source).name},
                    entrypoint_num_cpus=0,
                )
                return sid
            except Exception as e:
                # a head that has just started answers 500 "No available agent to submit job" until
                # its job agent is up: transient, so retry for a while
                if "no available agent" not in str(e).lower() or time.monotonic() > deadline:
                    raise self._error(e) from None
                time.sleep(2)

    def info(self, job: str):
        return self._call(self._client.get_job_info, job, job=job)

    def status(self, job: str) -> str:
        return str(self._call(self._client.get_job_status, job, job=job).value)

    def logs(self, job: str) -> str:
        return self._call(self._client.get_job_logs, job, job=job)

    def follow(self, job: str, write) -> None:
        """Stream the job's logs until it ends (Ctrl-C stops following, not the job)."""
        import asyncio

        async def tail() -> None:
            async for chunk in self._client.tail_job_logs(job):
                write(chunk)

        self.info(job)  # an unknown id fails here, with one line
        self._call(asyncio.run, tail(), job=job)

    def stop(self, job: str, wait_s: float = 120.0) -> str:
        """Ask the job to stop (its driver, and with it the trials' actors, end) and wait for it."""
        import time

        self._call(self._client.stop_job, job, job=job)
        deadline = time.monotonic() + wait_s
        status = self.status(job)
        while status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(1)
            status = self.status(job)
        return status

    def sweeps(self) -> list:
        """Jobs submitted by this package, oldest first."""
        jobs = self._call(self._client.list_jobs)
        mine = [j for j in jobs if SWEEP_KEY in (j.metadata or {})]
        return sorted(mine, key=lambda j: j.start_time or 0)
