"""The dashboard: its JSON endpoints give `gapinit results`'s numbers, it never writes, a token guards it
off loopback, and a headless Chromium renders the sweep page and follows a running sweep live.

The stores are written through ResultsStore's own write API (real Parquet files in the real layout): a
finished sweep (compacted, with a sweep-level file, a retried report after compaction, a stopped seed
group and a failed trial) and a running one (per-report files only), plus the scheduler state, spec
and GapArtifact metadata files a sweep writes next to them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from gapinit_ray.cli import default_by, main
from gapinit_ray.dashboard.reader import SweepReader
from gapinit_ray.dashboard.server import (
    DashboardError,
    DashboardServer,
    Target,
    resolve_target,
    resolve_token,
    start_background,
)
from gapinit_ray.results import ResultsStore, aggregate, compare
from gapinit_ray.results.stop_reason import error_stop, seed_group_stop

from ..conftest import QUICKSTART

INITS = ("gap", "random", "random-direction")
SEEDS = (1, 2, 3)
EPOCHS = (0, 1, 2, 3)
STOPPED = "random"  # this seed group is stopped at rung 1 (epoch 1)
FAILED = ("random-direction", 3)  # this trial fails after epoch 2
RETRIED = ("gap", 2, 3)  # (init, seed, epoch) reported again after the sweep was compacted
TOKEN = "s3cret-token"


def _config(init: str, seed: int) -> dict:
    return {"backbone": "tiny-blip2", "init": init, "seed": seed, "lora.rank": 1, "train.lr": 2e-3}


def _tid(init: str, seed: int) -> str:
    return f"init={init},seed={seed}"


def _cider(init: str, seed: int, epoch: float) -> float:
    base = {"gap": 1.0, "random": 0.7, "random-direction": 0.9}[init]
    return 0.2 + base * (1 - math.exp(-epoch)) + 0.05 * seed + 0.01 * seed * epoch


def _metrics(init: str, seed: int, epoch: float) -> dict:
    return {
        "epoch": float(epoch),
        "val_cider": _cider(init, seed, epoch),
        "val_loss": 2.0 / (1 + epoch) + 0.01 * seed,
        "train_loss": None if epoch == 0 else 2.2 / (1 + epoch),
        "align_cos_mean": (1.0 if init == "gap" else 0.05) - 0.01 * epoch,
    }


def _scheduler_state() -> dict:
    """A seed-group ASHA state as the scheduler's state writer saves it (gapinit_ray.seedgroup.state):
    rung 1 (epoch 1) judged for the three groups, ``random`` stopped there."""
    from gapinit_ray.seedgroup.core import RungBook, Schedule
    from gapinit_ray.seedgroup.state import Snapshot

    book = RungBook(Schedule(max_t=3, grace_period=1, reduction_factor=2, metric="val_cider", mode="max"))
    for init in INITS:
        key = f"g-{init}"
        members = [f"tune_{init}_{s}" for s in SEEDS]
        for m in members:
            book.apply(
                {
                    "k": "member",
                    "trial": m,
                    "group": key,
                    "status": "active",
                    "label": json.dumps({"init": init}),
                }
            )
        for s, m in zip(SEEDS, members, strict=True):
            book.apply({"k": "value", "trial": m, "rung": 0, "value": _cider(init, s, 1)})
        decision = "STOP" if init == STOPPED else "CONTINUE"
        mean = sum(_cider(init, s, 1) for s in SEEDS) / len(SEEDS)
        book.apply({"k": "decision", "group": key, "rung": 0, "decision": decision, "mean": mean})
        for s, m in zip(SEEDS, members, strict=True):
            status = "stopped" if decision == "STOP" else "errored" if (init, s) == FAILED else "completed"
            book.apply({"k": "member", "trial": m, "group": key, "status": status})
    return json.loads(Snapshot(book.schedule.to_dict(), book.events(), 0).to_json())


def _spec(name: str) -> dict:
    return {
        "name": name,
        "backbones": [{"name": "tiny-blip2"}],
        "search": {"axes": {"init": list(INITS), "seed": list(SEEDS)}},
        "scheduler": {"type": "seed-group-asha", "metric": "val_cider", "mode": "max", "grace_period": 1},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0},
        "train": {"epochs": 3},
    }


def _write_artifact(root: Path) -> None:
    modules = {}
    for layer in range(3):
        modules[f"language_model.model.decoder.layers.{layer}"] = {
            "layer": layer,
            "kind": "residual",
            "gap_norm": 1.0 + layer,
            "spot_score": 2.0 - 0.5 * layer,
            "first_share": 0.6,
            "translation_share": 0.5,
        }
        modules[f"language_model.model.decoder.layers.{layer}.fc1"] = {
            "layer": layer,
            "kind": "fc1",
            "gap_norm": 0.5 + layer,
            "spot_score": 1.0,
            "first_share": 0.4,
            "translation_share": 0.3,
        }
    meta = {
        "key": "abc123",
        "backbone_name": "tiny-blip2",
        "num_samples": 64,
        "pooling": "mean",
        "modules": modules,
    }
    d = root / "_cache" / "gaps" / "abc123"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps(meta))


def _write_sweep(root: Path, name: str, *, finished: bool) -> ResultsStore:
    store = ResultsStore(str(root), name)
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "spec.json").write_text(json.dumps(_spec(name)))
    (root / name / "scheduler_state.json").write_text(json.dumps(_scheduler_state()))
    checks = json.dumps({"selection": "naive", "top_k": 2, "layers": [0, 1], "vision_layers": []})
    for init in INITS:
        for seed in SEEDS:
            tid, cfg = _tid(init, seed), _config(init, seed)
            epochs = EPOCHS if finished else EPOCHS[:2]
            if init == STOPPED:
                epochs = epochs[:2]
            if (init, seed) == FAILED and finished:
                epochs = EPOCHS[:3]
            store.write_trial(tid, cfg, status="RUNNING", init_checks=checks)
            for e in epochs:
                store.write_report(tid, cfg, _metrics(init, seed, e), host="test")
            if not finished:
                continue
            if init == STOPPED:
                store.write_trial(
                    tid, cfg, status="STOPPED", stop_reason=seed_group_stop(0, 1.0).text(), rung_reached=1
                )
            elif (init, seed) == FAILED:
                store.write_trial(
                    tid,
                    cfg,
                    status="ERROR",
                    stop_reason=error_stop(2, 1).text(),
                    error="Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory (simulated)\n",
                )
            else:
                store.write_trial(
                    tid, cfg, status="TERMINATED", rung_reached=2, checkpoint_path=f"/ckpt/{tid}"
                )
    if finished:
        _write_sequential(root / name)
        store.compact()  # per-trial compacted files and metrics/_sweep.parquet, as the driver does
        init, seed, epoch = RETRIED  # a late retry: a per-epoch file next to the compacted one
        time.sleep(0.01)
        store.write_report(
            _tid(init, seed), _config(init, seed), {**_metrics(init, seed, epoch), "val_cider": 5.0}
        )
    return store


def _write_sequential(sweep: Path) -> None:
    """A sequential phase's record, written by the real bookkeeping from hand-made outcomes: gap vs
    mica decided (mica does not move), gap vs random still open at 8 seeds."""
    from gapinit_ray.results.looks import SequentialLog
    from gapinit_ray.sequential import comparisons as C
    from gapinit_ray.spec import spec_from_dict
    from gapinit_ray.spec.sequential import seed_sequence

    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["search"] = {"init": ["gap", "random", "mica"], "seed": [1, 2, 3]}
    raw["scheduler"] = {"type": "fifo", "metric": "val_cider", "mode": "max"}
    raw["sequential"] = {"max_seeds": 8, "min_effect": 0.02}
    spec = spec_from_dict(raw)
    gap = [0.80, 0.86, 0.78, 0.84, 0.81, 0.83, 0.79, 0.85]
    values = {"gap": gap, "random": [v - 0.01 * (-1) ** i for i, v in enumerate(gap)], "mica": [0.24] * 8}
    outcomes = {}
    for init, vs in values.items():
        for seed, v in zip(seed_sequence(spec), vs, strict=True):
            outcomes[C.Comparison("init", init, init, (), (("init", init),), ()).trial("a", seed)] = (
                C.Outcome(C.DONE, v)
            )
    states = C.evaluate(spec, outcomes)
    SequentialLog(sweep).record(
        states,
        {
            "metric": "val_cider",
            "mode": "max",
            "epoch": 3,
            "alpha": 0.05,
            "comparisons": 2,
            "alpha_each": 0.025,
            "min_effect": 0.02,
            "spent_device_hours": 0.01,
            "seeds_per_arm": {},
        },
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dash") / "storage"
    _write_sweep(root, "finished", finished=True)
    _write_sweep(root, "running", finished=False)
    _write_artifact(root)
    return root


@pytest.fixture(scope="module")
def server(root):
    srv = DashboardServer(Target(str(root), None), "127.0.0.1", 0).start()
    yield srv
    srv.stop()


def get(url: str, token: str | None = None, header: bool = True) -> tuple[int, dict]:
    if token and not header:
        url += ("&" if "?" in url else "?") + f"token={token}"
    req = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}"} if token and header else {}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def api(server: DashboardServer, path: str) -> dict:
    status, body = get(f"http://127.0.0.1:{server.port}{path}")
    assert status == 200, body
    return body


def _sorted(table: pa.Table, cols: list[str]) -> list[dict]:
    return table.select(cols).sort_by([("trial_id", "ascending"), ("epoch", "ascending")]).to_pylist()


# ------------------------------------------------------------------------------------ the reader


@pytest.mark.parametrize("sweep", ["finished", "running"])
def test_reader_rows_equal_the_store(root, sweep):
    store, reader = ResultsStore(str(root), sweep), SweepReader(str(root), sweep)
    cols = ["trial_id", "epoch", "init", "seed", "val_cider", "val_loss", "train_loss", "timestamp"]
    assert _sorted(reader.metrics(), cols) == _sorted(store.metrics(), cols)
    t_cols = ["trial_id", "status", "stop_reason", "error"]
    assert sorted(reader.trials().select(t_cols).to_pylist(), key=str) == sorted(
        store.trials().select(t_cols).to_pylist(), key=str
    )
    if sweep == "finished":  # the late retry wins over the compacted row, exactly as in the store
        init, seed, epoch = RETRIED
        row = [
            r
            for r in _sorted(reader.metrics(), cols)
            if r["trial_id"] == _tid(init, seed) and r["epoch"] == epoch
        ]
        assert [r["val_cider"] for r in row] == [5.0]


def test_reader_reads_only_what_changed(tmp_path):
    root = tmp_path / "s"
    store = _write_sweep(root, "live", finished=False)
    reader = SweepReader(str(root), "live")
    v0, n0 = reader.version(), reader.metrics().num_rows
    assert reader.version() == v0  # nothing changed: same version
    cached = dict(reader._files)
    tid = _tid("gap", 1)
    store.write_report(tid, _config("gap", 1), _metrics("gap", 1, 2))
    assert reader.version() != v0
    assert reader.metrics().num_rows == n0 + 1
    reread = [p for p, (ident, _) in reader._files.items() if p in cached and cached[p][0] is not ident]
    new = [p for p in reader._files if p not in cached]
    assert reread == [] and len(new) == 1 and "epoch=2.parquet" in new[0]
    assert _sorted(reader.metrics(), ["trial_id", "epoch", "val_cider"]) == _sorted(
        store.metrics(), ["trial_id", "epoch", "val_cider"]
    )


# ------------------------------------------------------------------------------------- endpoints


def test_sweeps_list(server):
    body = api(server, "/api/sweeps")
    by_name = {s["name"]: s for s in body["sweeps"]}
    assert set(by_name) == {"finished", "running"}
    assert by_name["finished"]["state"] == "failed"  # one trial ERROR, none live
    assert by_name["finished"]["trials"] == {"TERMINATED": 5, "STOPPED": 3, "ERROR": 1}
    assert by_name["running"]["state"] == "running"
    assert by_name["running"]["trials"] == {"RUNNING": 9}
    assert by_name["finished"]["backbones"] == ["tiny-blip2"]
    assert by_name["finished"]["cpu_hours"] >= 0


def test_curves_equal_aggregate_at_each_epoch(server, root):
    metrics = ResultsStore(str(root), "finished").metrics()
    by = default_by(metrics)
    body = api(server, "/api/sweeps/finished/curves?metric=val_cider&seeds=1")
    assert body["by"] == by and len(body["groups"]) == len(INITS)
    for g in body["groups"]:
        assert len(g["seeds"]) == len(SEEDS)
        for i, epoch in enumerate(g["epoch"]):
            agg = aggregate(metrics, by=by, metric="val_cider", at=f"epoch={epoch}")
            row = next(r for r in agg.to_pylist() if all(r[c] == v for c, v in g["key"].items()))
            assert g["n"][i] == row["n"]
            assert g["mean"][i] == pytest.approx(row["mean"], rel=1e-12)
            if row["ci95_low"] is not None:
                assert g["ci95_low"][i] == pytest.approx(row["ci95_low"], rel=1e-9)
                assert g["ci95_high"][i] == pytest.approx(row["ci95_high"], rel=1e-9)


def test_compare_equals_gapinit_results_compare(server, root, capsys):
    body = api(server, "/api/sweeps/finished/compare?wait=1")
    arms = "init=gap,init=random,init=random-direction"
    assert body["arms"] == arms.split(",")
    assert main(["results", str(root / "finished"), "--compare", arms, "--format", "json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert len(cli) == len(body["rows"]) == 2
    for a, b in zip(cli, body["rows"], strict=True):
        for key in ("arm1", "arm2", "n1", "n2", "verdict", "test", "paired"):
            assert a[key] == b[key], key
        for key in ("mean1", "mean2", "diff", "diff_ci_low", "diff_ci_high", "p_exact", "p_holm"):
            assert a[key] == pytest.approx(b[key], rel=1e-12, nan_ok=True), key
    metrics = ResultsStore(str(root), "finished").metrics()
    direct = compare(metrics, arms.split(","), metric="val_cider", by=["rank", "backbone"]).to_pylist()
    assert [r["verdict"] for r in direct] == [r["verdict"] for r in body["rows"]]
    # what the page asks: answered at once, the same table once computed
    deadline = time.monotonic() + 60
    while (live := api(server, "/api/sweeps/finished/compare")).get("pending") or live.get("stale"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert [r["verdict"] for r in live["rows"]] == [r["verdict"] for r in body["rows"]]


def test_trials_table(server, root):
    body = api(server, "/api/sweeps/finished/trials")
    rows = {r["trial_id"]: r for r in body["trials"]}
    assert len(rows) == len(INITS) * len(SEEDS)
    failed = rows[_tid(*FAILED)]
    assert failed["status"] == "ERROR" and failed["error"] == "RuntimeError: CUDA out of memory (simulated)"
    stopped = rows[_tid(STOPPED, 1)]
    assert stopped["status"] == "STOPPED" and stopped["stop_reason"] == "seed-group asha rung 1 (epoch 1)"
    assert stopped["stopped_by"] == "seed-group asha" and stopped["rung_reached"] == 1
    ok = rows[_tid("gap", 1)]
    assert ok["checkpoint"] == f"/ckpt/{_tid('gap', 1)}" and ok["group"] == "init=gap" and ok["seed"] == 1
    assert ok["metrics"]["val_cider"] == pytest.approx(_cider("gap", 1, 3))
    assert ok["n_reports"] == len(EPOCHS)
    metrics = ResultsStore(str(root), "finished").metrics()
    last = aggregate(metrics, by=["init", "seed"], metric="val_cider", at="last").to_pylist()
    for r in last:
        assert rows[_tid(r["init"], r["seed"])]["metrics"]["val_cider"] == pytest.approx(r["mean"], rel=1e-12)


def test_rungs_calibration_spec(server):
    r = api(server, "/api/sweeps/finished/rungs")
    assert r["available"] and [x["milestone"] for x in r["rungs"]] == [1.0, 2.0]
    rung1 = r["rungs"][0]
    assert rung1["groups_judged"] == 3
    assert rung1["promoted"] == ["init=gap", "init=random-direction"] and rung1["stopped"] == ["init=random"]
    states = {g["group"]: g["state"] for g in r["groups"]}
    assert states["init=random"] == "stopped"
    c = api(server, "/api/sweeps/finished/calibration")
    assert len(c["artifacts"]) == 1 and len(c["artifacts"][0]["modules"]) == 6
    assert c["selected"][0]["layers"] == [0, 1] and c["selected"][0]["n_trials"] == 9
    s = api(server, "/api/sweeps/finished/spec")
    assert "name: finished" in s["yaml"] and s["reproduce"].startswith("gapinit run finished.yaml storage=")


def test_sequential_panel_payload(server):
    q = api(server, "/api/sweeps/finished/sequential")
    assert q["available"] and [c["comparison"] for c in q["comparisons"]] == [
        "init=gap vs init=random",
        "init=gap vs init=mica",
    ]
    open_, clear = q["comparisons"]
    assert clear["status"] == "decided" and clear["verdict"].startswith("gap higher")
    assert clear["n"] == list(range(2, clear["n"][-1] + 1)) and len(clear["cs_low"]) == len(clear["n"])
    assert open_["status"] == "unresolved at max_seeds" and open_["n"][-1] == 8
    assert api(server, "/api/sweeps/running/sequential")["available"] is False


def test_unknown_sweep_and_bad_query(server):
    status, body = get(f"http://127.0.0.1:{server.port}/api/sweeps/nope/trials")
    assert status == 404 and "nope" in body["error"]
    status, body = get(f"http://127.0.0.1:{server.port}/api/sweeps/finished/curves?metric=nope")
    assert status == 400 and "available" in body["error"]
    status, body = get(f"http://127.0.0.1:{server.port}/api/sweeps/finished/compare?arms=init=gap,init=zzz")
    assert status == 400 and "init=zzz" in body["error"]


# ---------------------------------------------------------------------------- safety: token, writes


def test_token_required_off_loopback(monkeypatch, tmp_path, capsys, root):
    for var in ("GAPINIT_DASHBOARD_TOKEN", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    monkeypatch.setenv("GAPINIT_CONFIG", str(tmp_path / "none.yaml"))
    with pytest.raises(DashboardError, match="token"):
        resolve_token("0.0.0.0", None)
    assert resolve_token("127.0.0.1", None) is None
    assert resolve_token("0.0.0.0", "t") == "t"
    monkeypatch.setenv("GAPINIT_DASHBOARD_TOKEN", "from-env")
    assert resolve_token("10.1.2.3", None) == "from-env"
    monkeypatch.delenv("GAPINIT_DASHBOARD_TOKEN")
    assert main(["dashboard", str(root / "finished"), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gapinit: error:") and "token" in err[0]


def test_token_is_checked_on_every_request(root):
    srv = DashboardServer(Target(str(root), None), "127.0.0.1", 0, token=TOKEN).start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        for path in (
            "/api/sweeps",
            "/api/sweeps/finished/trials",
            "/sweep/finished",
            "/static/plotly.min.js",
        ):
            status, _ = get(base + path)
            assert status == 401, path
        assert get(base + "/api/sweeps", "wrong")[0] == 401
        assert get(base + "/api/sweeps", TOKEN)[0] == 200
        assert get(base + "/api/sweeps/finished/trials", TOKEN, header=False)[0] == 200
    finally:
        srv.stop()


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            st = os.stat(os.path.join(d, n))
            out[os.path.join(d, n)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def test_never_writes_to_the_store(tmp_path):
    root = tmp_path / "s"
    _write_sweep(root, "finished", finished=True)
    _write_artifact(root)
    before = _snapshot(root)
    srv = DashboardServer(Target(str(root), None), "127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        for path in ("/", "/sweep/finished", "/sweep/finished/calibration", "/api/sweeps", "/api/version"):
            urllib.request.urlopen(base + path, timeout=30).read()
        for what in (
            "summary",
            "trials",
            "curves?seeds=1",
            "rungs",
            "compare",
            "calibration",
            "spec",
            "version",
        ):
            urllib.request.urlopen(f"{base}/api/sweeps/finished/{what}", timeout=30).read()
    finally:
        srv.stop()
    assert _snapshot(root) == before
    # gapinit run --dashboard starts it before the sweep has written anything: it shows an empty sweep
    # and creates nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    srv = start_background(str(empty), "later", port=0)
    try:
        assert srv.url.endswith("/sweep/later")
        summary = api(srv, "/api/sweeps/later/summary")
        assert summary["state"] == "empty" and summary["n_trials"] == 0
        assert api(srv, "/api/sweeps/later/curves")["groups"] == []
        assert api(srv, "/api/sweeps/later/trials")["trials"] == []
    finally:
        srv.stop()
    assert list(empty.iterdir()) == []


def test_cli_targets(root, tmp_path):
    assert resolve_target(str(root)) == Target(str(root.resolve()), None)
    assert resolve_target(str(root / "finished")) == Target(str(root.resolve()), "finished")
    with pytest.raises(DashboardError, match="no sweep here"):
        resolve_target(str(tmp_path))
    assert main(["dashboard", str(tmp_path / "missing")]) == 2


# ----------------------------------------------------------------------------------- the browser


def _chromium() -> str:
    """The Chromium binary; installed with apt (Debian's `chromium`) when missing and possible."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=600, check=False
        )
        found = shutil.which("chromium")
        if found:
            return found
        pytest.skip(
            "Chromium is not installed and `apt-get install -y chromium` failed (offline? no apt lists?)"
        )
    pytest.skip("Chromium is not installed and cannot be installed here (needs apt-get as root)")


class Browser:
    """Headless Chromium driven over the Chrome DevTools Protocol (aiohttp's websocket client): load a
    page, evaluate JS, collect JS exceptions and console errors, take screenshots."""

    def __init__(self, binary: str, profile: Path):
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1400,1300",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        ws = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ws is None:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            if "DevTools listening on" in line:
                ws = line.split("listening on", 1)[1].strip()
        if ws is None:
            self.close()
            pytest.skip("headless Chromium did not start (no DevTools endpoint)")
        port = ws.split("://", 1)[1].split("/", 1)[0]
        self.loop = asyncio.new_event_loop()
        self.errors: list[str] = []
        self._id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self.loop.run_until_complete(self._connect(port))

    async def _connect(self, port: str) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://{port}/json/list") as r:
            pages = [t for t in await r.json() if t["type"] == "page"]
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self.reader = self.loop.create_task(self._read())
        for domain in ("Runtime", "Page", "Log"):
            await self._send(f"{domain}.enable")

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                d = data["params"]["exceptionDetails"]
                self.errors.append((d.get("exception") or {}).get("description") or d.get("text"))
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"]["type"] == "error":
                self.errors.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in data["params"]["args"])
                )
            elif data.get("method") == "Log.entryAdded" and data["params"]["entry"]["level"] == "error":
                self.errors.append(data["params"]["entry"]["text"])

    async def _send(self, method: str, **params) -> dict:
        self._id += 1
        fut = self.loop.create_future()
        self._pending[self._id] = fut
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        out = await asyncio.wait_for(fut, 60)
        if "error" in out:
            raise RuntimeError(f"{method}: {out['error']}")
        return out["result"]

    def call(self, method: str, **params) -> dict:
        return self.loop.run_until_complete(self._send(method, **params))

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expr: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(expr):
                return
            self.loop.run_until_complete(asyncio.sleep(0.2))
        raise AssertionError(f"timed out waiting for {expr}; JS errors: {self.errors}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && window.__dash && window.__dash.refreshes >= 1")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.session.close())
            self.reader.cancel()
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()


TRACES = "Array.from(document.getElementById('curves').data || []).filter(t => t.meta.kind === '{}').length"
ROWS = "document.querySelectorAll('#trials tbody tr').length"


def test_browser_finished_and_running_sweep(tmp_path):
    binary = _chromium()
    root = tmp_path / "storage"
    _write_sweep(root, "finished", finished=True)
    store = _write_sweep(root, "running", finished=False)
    _write_artifact(root)
    srv = DashboardServer(Target(str(root), None), "127.0.0.1", 0).start()
    browser = Browser(binary, tmp_path / "profile")
    try:
        base = f"http://127.0.0.1:{srv.port}"
        browser.open(f"{base}/sweep/finished")
        browser.wait(f"({TRACES.format('mean')}) === 3")
        assert browser.js(TRACES.format("band")) == 3  # one 95 % band per group
        assert browser.js(ROWS) == 9
        assert browser.js("document.querySelectorAll('#rung-table tbody tr').length") == 2
        browser.wait("document.getElementById('compare').innerText.includes('no verdict possible at n=3')")
        # the sequential panel: one chart per comparison, band + mean + e-value, the verdict beside it
        browser.wait("document.querySelectorAll('.sequential-chart').length === 2")
        browser.wait(
            "Array.from(document.querySelectorAll('.sequential-chart')).every(c => (c.data || []).length === 4)"
        )
        assert "gap higher" in browser.js("document.getElementById('sequential').innerText")
        assert browser.js("document.getElementById('state').textContent") == "failed"
        browser.js("document.getElementById('show-seeds').click()")
        browser.wait(f"({TRACES.format('seed')}) === {len(INITS) * len(SEEDS)}")
        browser.screenshot(tmp_path / "sweep_finished.png")

        browser.open(f"{base}/sweep/running")
        browser.wait(f"({TRACES.format('mean')}) === 3 && ({ROWS}) === 9")
        epochs = "Math.max(...document.getElementById('curves').data.filter(t => t.meta.kind === 'mean').flatMap(t => t.x))"
        assert browser.js(epochs) == 1
        browser.js("window.__noReload = true")
        refreshes = browser.js("window.__dash.refreshes")
        for seed in SEEDS:  # a new report of every gap seed at epoch 2: the gap curve grows a point
            store.write_report(_tid("gap", seed), _config("gap", seed), _metrics("gap", seed, 2))
        browser.wait(f"({epochs}) === 2", timeout=15)
        assert browser.js("window.__noReload") is True  # updated in place, not reloaded
        browser.wait(f"window.__dash.refreshes > {refreshes}")  # counted once the refresh is complete
        gap_row = "[...document.querySelectorAll('#trials tbody tr')].find(r => r.cells[0].textContent === 'init=gap,seed=1')"
        assert browser.js(f"{gap_row}.cells[4].textContent") == "2"  # its last epoch in the trial table
        browser.screenshot(tmp_path / "sweep_running.png")

        browser.open(f"{base}/sweep/running/calibration")
        browser.wait("document.querySelectorAll('#artifacts table tbody tr').length === 6")
        browser.open(f"{base}/")
        browser.wait("document.querySelectorAll('#sweeps tbody tr').length === 2")
        assert browser.errors == [] and browser.js("window.__dash.errors") == []
    finally:
        browser.close()
        srv.stop()
    assert (tmp_path / "sweep_finished.png").stat().st_size > 10_000
    print(f"screenshots: {tmp_path / 'sweep_finished.png'}, {tmp_path / 'sweep_running.png'}")


def test_plotly_is_served_from_the_package(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/static/plotly.min.js", timeout=30) as r:
        head = r.read(4096)
    assert r.status == 200 and b"plotly" in head.lower()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/sweep/finished", timeout=30) as r:
        html = r.read().decode()
    assert "cdn" not in html.lower() and 'src="/static/plotly.min.js"' in html
