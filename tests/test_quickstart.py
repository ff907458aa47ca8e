"""The README's first command, as a user runs it: `bash scripts/quickstart.sh`, unmodified spec and its
relative storage, from a directory that is not the repository, on an embedded local Ray.

No override of any kind: not the storage, not the sizes, not the environment the test session set for
itself. What this test checks is what a newcomer sees.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from gapinit_ray.results import ResultsStore

from .conftest import ROOT, USER_ENV

QUICKSTART_S = 1500  # the sweep takes 4-8 min alone on 2 cores (by CPU model); CI shares the machine


def _gapinit_results_dirs(*roots: Path, since: float) -> list[Path]:
    found = []
    for root in roots:
        if root.is_dir():
            found += [p for p in root.rglob("gapinit_results") if p.stat().st_mtime >= since]
    return sorted(found)


@pytest.mark.slow
@pytest.mark.timeout(QUICKSTART_S + 120)
def test_the_readme_quickstart_command_as_written(tmp_path: Path) -> None:
    home = tmp_path / "user"  # where the user runs it: not the repository
    home.mkdir()
    started = time.time()
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "quickstart.sh")],
        cwd=home,
        env=USER_ENV,
        capture_output=True,
        text=True,
        timeout=QUICKSTART_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr

    # the results went where the spec says, relative to where the command ran: nowhere else (not into
    # Tune's per-trial working dirs, not into the repository)
    results = home / "gapinit_results"
    assert (results / "quickstart" / "spec.json").is_file()
    strays = _gapinit_results_dirs(ROOT, home, Path("/tmp/ray"), since=started)
    assert strays == [results], strays

    store = ResultsStore(str(results), "quickstart")
    metrics = store.metrics().to_pandas()
    trials = store.trials().to_pandas()
    assert len(trials) == 9 and set(trials["status"]) <= {"TERMINATED", "STOPPED"}, trials
    assert metrics["trial_id"].nunique() == 9
    # every trial has its epoch-0 report (the backbone with its adapters at init)...
    at0 = metrics[metrics["epoch"] == 0]
    assert sorted(at0["trial_id"]) == sorted(trials["trial_id"])
    # ...which is the same model for every arm (ΔW = 0 at init): one value
    assert at0["val_cider"].max() - at0["val_cider"].min() < 1e-9
    # every arm ends clearly above where it started (mean over its seeds of each one's last report)
    last = metrics.sort_values("epoch").groupby("trial_id").tail(1)
    for init, rows in last.groupby("init"):
        start = at0[at0["init"] == init]["val_cider"].mean()
        end = rows["val_cider"].mean()
        assert end > start + 0.2, (init, start, end)
    # stop reasons are the one form the readers parse: the table labels seed-group stops
    stopped = trials[trials["status"] == "STOPPED"]
    assert all(r.startswith("seed-group asha rung ") for r in stopped["stop_reason"])
    if len(stopped):
        assert "(seed-group)" in proc.stdout
    # the printed table: one row per arm
    for init in ("gap", "random", "random-direction"):
        assert f"tiny-blip2  {init} " in proc.stdout

    # cost: every report carries its device-seconds; the sweep's line under the table, and ASHA's
    # saving computed by hand from the rung record (stopped trials: their per-epoch cost x the epochs
    # to max_t they did not train)
    assert (metrics["device_s"] > 0).all() and (metrics["wall_s"] > 0).all()
    assert "cost (CPU-time; " in proc.stdout and "calibration: 1 GapArtifact(s)" in proc.stdout
    import yaml

    spec = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    max_t = spec["scheduler"].get("max_t") or spec["train"]["epochs"]
    saved = 0.0
    for _, t in stopped.iterrows():
        rows = metrics[metrics["trial_id"] == t["trial_id"]]
        trained = rows[rows["epoch"] > 0]
        saved += trained["device_s"].sum() / rows["epoch"].max() * (max_t - rows["epoch"].max())
    from gapinit_ray.results.cost import cost_summary, trial_costs

    summary = cost_summary(trial_costs(store.metrics(), store.trials(), max_t, ["init"]))
    assert summary["sweep"]["asha_saved_device_s"] == pytest.approx(saved, rel=1e-9)
    assert summary["sweep"]["device_s"] == pytest.approx(metrics["device_s"].sum(), rel=1e-9)
    if len(stopped):
        assert "ASHA stopped" in proc.stdout

    # the dashboard over this real sweep's store: its numbers are gapinit results' numbers
    import json
    import urllib.request

    from gapinit_ray.cli import default_by
    from gapinit_ray.dashboard.server import DashboardServer, Target
    from gapinit_ray.results import aggregate

    server = DashboardServer(Target(str(results), "quickstart"), "127.0.0.1", 0).start()
    try:

        def api(path: str) -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=60) as r:
                return json.loads(r.read())

        table = store.metrics()
        by = default_by(table)
        curves = api("/api/sweeps/quickstart/curves?metric=val_cider")
        assert len(curves["groups"]) == 3
        for g in curves["groups"]:
            for i, epoch in enumerate(g["epoch"]):
                agg = aggregate(table, by=by, metric="val_cider", at=f"epoch={epoch}").to_pylist()
                row = next(r for r in agg if all(r[c] == v for c, v in g["key"].items()))
                assert g["n"][i] == row["n"] and g["mean"][i] == pytest.approx(row["mean"], rel=1e-12)
        rows = api("/api/sweeps/quickstart/trials")["trials"]
        assert sorted(r["trial_id"] for r in rows) == sorted(trials["trial_id"])
        assert {r["trial_id"]: r["status"] for r in rows} == dict(
            zip(trials["trial_id"], trials["status"], strict=True)
        )
    finally:
        server.stop()
