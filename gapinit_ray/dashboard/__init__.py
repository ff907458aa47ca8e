"""A live, read-only web dashboard over a sweep's results store (``gapinit dashboard``).

* :mod:`~gapinit_ray.dashboard.reader` — :class:`SweepReader`: the sweep's files, re-read only when their
  identity changes, and the cheap ``version()`` fingerprint the pages poll;
* :mod:`~gapinit_ray.dashboard.views` — the JSON payloads (trials, curves with 95 % t bands, rung
  timeline, ``gapinit results --compare``, calibration, spec), on the results package's own functions;
* :mod:`~gapinit_ray.dashboard.calibration` — the calibration page's data (GapArtifact metadata, the
  layers the trials adapted);
* :mod:`~gapinit_ray.dashboard.app` — the Starlette app: pages, endpoints, token gate, static files
  (plotly.js from the installed ``plotly`` package, no CDN);
* :mod:`~gapinit_ray.dashboard.server` — target / port / token resolution and the uvicorn server.

Heavy imports (starlette, uvicorn, scipy) happen in those modules, not here.
"""
