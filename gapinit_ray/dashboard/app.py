"""The dashboard's ASGI app (Starlette): three HTML pages, their JSON endpoints, static files.

Read-only by construction: every route is a GET that goes through :class:`SweepReader`, which only
opens files for reading. Endpoints (all JSON; ``{name}`` is a sweep under the storage root):

=====================================  ==============================================================
``/api/sweeps``                        one summary per sweep (state, trials by status, hours, times)
``/api/version``                       ``{"version"}`` of the whole storage root's sweeps list
``/api/sweeps/{name}/version``         ``{"version"}``: changes whenever a file of the sweep changes
``/api/sweeps/{name}/summary``         the sweep's summary row, plus its metric columns
``/api/sweeps/{name}/trials``          trial table: status, group, seed, rung, stop reason, last metrics, error line, checkpoint
``/api/sweeps/{name}/curves``          ``?metric=val_cider&seeds=0|1``: per group per epoch mean, 95 % t interval, n; per-seed lines
``/api/sweeps/{name}/rungs``           rung timeline from ``scheduler_state.json`` (seed-group ASHA)
``/api/sweeps/{name}/compare``         ``?arms=init=gap,init=random&metric=&at=last&by=init,rank,backbone``: ``gapinit results --compare``;
                                       answered at once: ``stale``/``pending`` while recomputing (``&wait=1``: block)
``/api/sweeps/{name}/calibration``     GapArtifacts: per module gap norm, SPOT score; selected layers
``/api/sweeps/{name}/spec``            the spec as YAML and the commands that reproduce / resume it
``/api/sweeps/{name}/sequential``      sequential phase: per comparison the confidence sequence and e-value at every look, verdict
=====================================  ==============================================================

With a token, every request needs ``Authorization: Bearer <token>`` or ``?token=<token>``.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from gapinit_ray.dashboard.calibration import calibration
from gapinit_ray.dashboard.reader import SweepReader, list_sweeps
from gapinit_ray.dashboard.views import Views, check_at
from gapinit_ray.errors import GapinitError

STATIC = Path(__file__).parent / "static"
# page -> (its body's file under static/, its title, whether it draws plots)
PAGES = {
    "index": ("index.html", "sweeps", False),
    "sweep": ("sweep.html", "{{sweep}}", True),
    "calibration": ("calibration.html", "{{sweep}} calibration", True),
}
HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>{title} · gapinit dashboard</title>
<link rel="stylesheet" href="/static/dashboard.css">
{plotly}<script src="/static/dashboard.js"></script>
</head>
"""


def page_html(name: str) -> str:
    """The page ``name`` with the head every page shares; ``{{sweep}}``/``{{root}}`` still to fill."""
    file, title, plots = PAGES[name]
    plotly = '<script src="/static/plotly.min.js"></script>\n' if plots else ""
    return HEAD.format(title=title, plotly=plotly) + (STATIC / file).read_text()


def plotly_js() -> Path:
    """plotly.js as the installed ``plotly`` package ships it (no CDN: clusters are often offline)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise GapinitError(f"{path}: plotly.min.js not found; reinstall plotly (pip install plotly)")
    return path


class Dashboard:
    """State of one dashboard: the storage root, the sweeps it may show, one reader per sweep."""

    def __init__(self, root: str, sweep: str | None = None, token: str | None = None):
        self.root = root
        self.only = sweep  # set: the dashboard shows this one sweep
        self.token = token
        self._views: dict[str, Views] = {}

    def names(self) -> list[str]:
        return [self.only] if self.only else list_sweeps(self.root)

    def views(self, name: str) -> Views:
        if name not in self._views:
            if name not in self.names():
                raise KeyError(name)
            self._views[name] = Views(SweepReader(self.root, name))
        return self._views[name]


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers={"Cache-Control": "no-store"})


def build_app(dash: Dashboard) -> Starlette:
    """The Starlette app over ``dash`` (see the module docstring for the routes)."""

    def sweep_views(request: Request) -> Views:
        return dash.views(request.path_params["name"])

    def page(name: str):
        def endpoint(request: Request) -> Response:
            html = page_html(name)
            sweep = request.path_params.get("name", "")
            if sweep and sweep not in dash.names():
                return HTMLResponse(f"<h1>no sweep {sweep!r} here</h1>", status_code=404)
            html = html.replace("{{sweep}}", _escape(sweep)).replace("{{root}}", _escape(dash.root))
            return HTMLResponse(html, headers={"Cache-Control": "no-store"})

        return endpoint

    def index(request: Request) -> Response:
        if dash.only:
            from starlette.responses import RedirectResponse

            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(f"/sweep/{dash.only}{query}")
        return page("index")(request)

    def api_sweeps(request: Request) -> Response:
        views = [dash.views(n) for n in dash.names()]
        return _json(
            {"root": dash.root, "sweeps": [v.cached(("row",), v.reader.version(), v.summary) for v in views]}
        )

    def api_root_version(request: Request) -> Response:
        h = hashlib.blake2b(digest_size=10)
        for n in dash.names():
            h.update(f"{n}:{dash.views(n).reader.version()}\n".encode())
        return _json({"version": h.hexdigest()})

    def api_version(request: Request) -> Response:
        return _json({"version": sweep_views(request).reader.version()})

    def api_summary(request: Request) -> Response:
        from gapinit_ray.results.aggregate import metric_columns

        v = sweep_views(request)
        version = v.reader.version()

        def compute() -> dict:
            out = v.summary()
            out["metric_columns"] = metric_columns(v.reader.metrics()) if v.reader.metrics().num_rows else []
            out["metric"] = v.metric_default()
            out["mode"] = v.mode()
            return out

        return _json(v.cached(("summary",), version, compute))

    def api_trials(request: Request) -> Response:
        v = sweep_views(request)
        return _json(v.cached(("trials",), v.reader.version(), v.trials))

    def api_curves(request: Request) -> Response:
        v = sweep_views(request)
        metric = request.query_params.get("metric") or None
        seeds = request.query_params.get("seeds", "0") in ("1", "true", "yes")
        return _json(v.cached(("curves", metric, seeds), v.reader.version(), lambda: v.curves(metric, seeds)))

    def api_rungs(request: Request) -> Response:
        v = sweep_views(request)
        return _json(v.cached(("rungs",), v.reader.version(), v.rungs))

    def api_compare(request: Request) -> Response:
        v = sweep_views(request)
        q = request.query_params
        arms, metric = q.get("arms") or None, q.get("metric") or None
        at, by = check_at(q.get("at") or "last"), q.get("by") or "init,rank,backbone"
        block = q.get("wait") in ("1", "true", "yes")  # notebooks, tests: wait for the current table
        return _json(v.comparison_live(arms, metric, at, by, block=block))

    def api_calibration(request: Request) -> Response:
        v = sweep_views(request)
        return _json(v.cached(("calibration",), v.reader.version(), lambda: calibration(v.reader)))

    def api_sequential(request: Request) -> Response:
        v = sweep_views(request)
        return _json(v.cached(("sequential",), v.reader.version(), v.sequential))

    def api_spec(request: Request) -> Response:
        v = sweep_views(request)
        return _json(v.cached(("spec",), v.reader.version(), v.spec))

    def static(request: Request) -> Response:
        name = request.path_params["file"]
        if name == "plotly.min.js":
            return FileResponse(plotly_js(), media_type="text/javascript")
        path = STATIC / name
        if (
            "/" in name
            or name.startswith(".")
            or not path.is_file()
            or name in {file for file, _, _ in PAGES.values()}
        ):
            return Response("not found", status_code=404)
        return FileResponse(path)

    routes = [
        Route("/", index),
        Route("/sweep/{name}", page("sweep")),
        Route("/sweep/{name}/calibration", page("calibration")),
        Route("/static/{file}", static),
        Route("/api/sweeps", api_sweeps),
        Route("/api/version", api_root_version),
        Route("/api/sweeps/{name}/version", api_version),
        Route("/api/sweeps/{name}/summary", api_summary),
        Route("/api/sweeps/{name}/trials", api_trials),
        Route("/api/sweeps/{name}/curves", api_curves),
        Route("/api/sweeps/{name}/rungs", api_rungs),
        Route("/api/sweeps/{name}/compare", api_compare),
        Route("/api/sweeps/{name}/calibration", api_calibration),
        Route("/api/sweeps/{name}/spec", api_spec),
        Route("/api/sweeps/{name}/sequential", api_sequential),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json({"error": f"no sweep {exc.args[0]!r} under {dash.root}"}, 404)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return _json({"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}, 400)

    app = Starlette(routes=routes, exception_handlers={KeyError: not_found, GapinitError: bad_request})
    if dash.token:
        return TokenGate(app, dash.token)
    return app


class TokenGate:
    """ASGI middleware: every HTTP request must carry the token (``Authorization: Bearer`` or
    ``?token=``), compared in constant time; anything else gets 401 and no data."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            response = JSONResponse(
                {"error": "this dashboard needs its token: Authorization: Bearer <token> or ?token=<token>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope) -> bool:
        from urllib.parse import parse_qs

        for name, value in scope.get("headers", []):
            bearer = name == b"authorization" and value[:7].lower() == b"bearer "
            if bearer and hmac.compare_digest(value[7:].strip(), self.token):
                return True
        query = parse_qs(scope.get("query_string", b"").decode(errors="replace"))
        return any(hmac.compare_digest(v.encode(), self.token) for v in query.get("token", []))


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)
