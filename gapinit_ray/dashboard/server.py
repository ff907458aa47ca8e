"""Serving the dashboard: what to show, where to bind, which token, and a uvicorn server to run it.

``gapinit dashboard`` runs :func:`serve` in the foreground; ``gapinit run --dashboard`` runs
:func:`start_background` next to the sweep (a daemon thread of the driver, so it ends with it).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from gapinit_ray.errors import GapinitError
from gapinit_ray.names import RESULTS_DIR

#: the first port tried; Ray's own dashboard listens on 8265, so ours starts a little above it
DEFAULT_PORT = 8270
PORT_TRIES = 50
TOKEN_ENV = "GAPINIT_DASHBOARD_TOKEN"


class DashboardError(GapinitError):
    """A dashboard argument is wrong: nothing to show there, a port in use, no token off loopback."""


@dataclass(frozen=True)
class Target:
    """The storage root and, when one sweep was named, that sweep."""

    root: str
    sweep: str | None


def resolve_target(arg: str) -> Target:
    """``<storage>/<sweep>`` (a dir holding ``spec.json`` or ``results/``), a storage root (sweeps under
    it), a sweep spec YAML, or the same as a URI (``s3://bucket/storage[/sweep]``)."""
    from gapinit_ray.dashboard.reader import SPEC_FILE, list_sweeps

    p = Path(arg).expanduser()
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        from gapinit_ray.spec import load_spec

        spec = load_spec(p)
        return Target(spec.storage, spec.name)
    if "://" in arg:
        import pyarrow.fs as pafs

        from gapinit_ray.results._fs import resolve

        loc = resolve(arg.rstrip("/"))
        infos = loc.fs.get_file_info([f"{loc.path}/{SPEC_FILE}", f"{loc.path}/results"])
        if any(i.type != pafs.FileType.NotFound for i in infos):
            root, _, name = arg.rstrip("/").rpartition("/")
            return Target(root, name)
        if not list_sweeps(arg):
            raise DashboardError(f"{arg}: no sweep here (no spec.json or results/ in it or in its sub-dirs)")
        return Target(arg, None)
    if not p.is_dir():
        raise DashboardError(
            f"{arg}: no such directory; pass <storage>/<sweep>, a storage root or a spec file"
        )
    p = p.resolve()
    if (p / SPEC_FILE).is_file() or (p / RESULTS_DIR).is_dir():
        return Target(str(p.parent), p.name)
    if not list_sweeps(str(p)):
        raise DashboardError(
            f"{arg}: no sweep here (no spec.json or results/ in it or in its sub-dirs); pass "
            "<storage>/<sweep> or the storage root a spec's `storage` names"
        )
    return Target(str(p), None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None, token_file: str | None = None) -> str | None:
    """``--token``, else ``$GAPINIT_DASHBOARD_TOKEN``, else (``--token-file``, or when binding off
    loopback) the Ray auth token the Jobs client uses (:func:`gapinit_ray.cluster.resolve_token`:
    ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, the config's ``token_file``, ``~/.ray/auth_token``).
    Off loopback a token is required."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None and (token_file or not is_loopback(host)):
        from gapinit_ray.cluster import resolve_token as ray_token

        token = ray_token(token_file)
    if token is not None and not token.strip():
        raise DashboardError("dashboard token is empty; pass a non-empty --token")
    if token is not None:
        from gapinit_ray.cluster import ClusterError, well_formed_token

        try:
            token = well_formed_token(token, "dashboard --token / $" + TOKEN_ENV)
        except ClusterError as e:
            raise DashboardError(str(e)) from None
    if token is None and not is_loopback(host):
        raise DashboardError(
            f"--host {host} serves the dashboard beyond this machine: give it a token (--token, "
            f"${TOKEN_ENV}, or a Ray auth token via --token-file / RAY_AUTH_TOKEN), or bind 127.0.0.1"
        )
    return token.strip() if token else None


def bind(host: str, port: int | None) -> socket.socket:
    """A listening socket: ``port`` exactly (0: any free one), or None: the first free port from
    :data:`DEFAULT_PORT` up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = [port] if port is not None else range(DEFAULT_PORT, DEFAULT_PORT + PORT_TRIES)
    last: OSError | None = None
    for p in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, p))
        except OSError as e:
            sock.close()
            last = e
            continue
        sock.listen(128)
        sock.set_inheritable(True)
        return sock
    where = f"port {port}" if port is not None else f"ports {DEFAULT_PORT}-{DEFAULT_PORT + PORT_TRIES - 1}"
    raise DashboardError(
        f"cannot listen on {host} {where}: {last.strerror if last else 'in use'}; pass --port"
    )


class DashboardServer:
    """A uvicorn server over the dashboard app, on a socket bound before it starts (so the URL printed
    is the one that answers)."""

    def __init__(
        self, target: Target, host: str = "127.0.0.1", port: int | None = None, token: str | None = None
    ):
        import uvicorn

        from gapinit_ray.dashboard.app import Dashboard, build_app, plotly_js

        plotly_js()  # a missing plotly.js is said now, not as a broken page
        self.target = target
        self.token = token
        self.sock = bind(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        app = build_app(Dashboard(target.root, target.sweep, token))
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        path = f"/sweep/{self.target.sweep}" if self.target.sweep else "/"
        return f"http://{host}:{self.port}{path}"

    def run(self) -> None:
        """Serve in this thread until interrupted."""
        self.server.run(sockets=[self.sock])

    def start(self) -> DashboardServer:
        """Serve in a daemon thread (it ends with the process); returns once it answers."""
        import time

        self._thread = threading.Thread(target=self.run, name="gapinit-dashboard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        from gapinit_ray.dashboard.comparison import shutdown_compare_process

        self.server.should_exit = True
        shutdown_compare_process()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sock.close()


def start_background(
    storage: str, sweep: str, host: str = "127.0.0.1", port: int | None = None
) -> DashboardServer:
    """``gapinit run --dashboard``: the dashboard of ``<storage>/<sweep>`` in a daemon thread."""
    token = resolve_token(host, None)
    return DashboardServer(
        Target(str(Path(storage).expanduser().absolute()) if "://" not in storage else storage, sweep),
        host,
        port,
        token,
    ).start()
