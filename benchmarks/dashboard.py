"""Dashboard benchmark: data-endpoint latency on a sweep of 1,000 trials x 100 reports, and the cost of
one live-update tick at that size.

The store is real (the layout, schemas and files ``ResultsStore`` writes and reads): 1,000 trials
(4 inits x 25 learning rates x 10 seeds: 100 seed groups) with a trial row each (``write_trial``),
and 100 reports per trial as a finished sweep holds them: one ``compacted.parquet`` per trial (rows
built from a real ``write_report`` row's schema, written with the store's compaction options) and the
sweep-level ``_sweep.parquet`` with its manifest (``ResultsStore.compact_sweep``). Building it row by
row through ``write_report`` would take ~20 minutes (~11 ms per report); what is timed is the reading.

Measured over HTTP against the real server (uvicorn in a thread, ``urllib`` client), medians of
``--repeats`` requests:

* cold: the first request of each endpoint after the server starts (the whole sweep file is read);
* warm, unchanged: the same request again (the version did not change: served from the cache);
* warm, after a change: one new report written to each of 10 trials (what a running sweep does
  between two polls), then the request: the reader lists the 10 changed trial directories, reads
  their new files, and the endpoint is recomputed. Target: <= 200 ms for every data endpoint;
* ``compare`` answers at once (stale-marked while a worker recomputes); ``compare?wait=1`` blocks;
* CPU ms (``process_time`` of this process: server thread + client) next to wall ms: a loaded, shared
  machine inflates wall times, much less CPU times;
* tick: ``/version`` when nothing changed (what every open page asks every 1.5 s), and a whole page
  refresh after a change: version + the 5 endpoints the sweep page fetches + the curves.

    python -m benchmarks.dashboard [--trials 1000] [--reports 100] [--repeats 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.common import RESULTS, machine

INITS = ("gap", "random", "random-direction", "pissa")
LRS = 25
TARGET_MS = 200
# compare last: it answers at once but starts a worker that recomputes the comparison (seconds)
ENDPOINTS = ("summary", "trials", "curves", "curves?seeds=1", "rungs", "spec", "version", "compare")
PAGE = ("version", "summary", "trials", "rungs", "compare", "spec", "curves", "curves?metric=align_cos_mean")


def config(i: int) -> dict:
    return {
        "backbone": "tiny-blip2",
        "init": INITS[i % len(INITS)],
        "train.lr": 1e-4 * (1 + (i // len(INITS)) % LRS),
        "seed": i // (len(INITS) * LRS),
        "lora.rank": 1,
    }


def tid(i: int) -> str:
    return f"t{i:05d}"


def value(i: int, epoch: float) -> float:
    c = config(i)
    q = 1.0 + 0.05 * INITS.index(c["init"]) + 0.002 * (i // len(INITS) % LRS)
    return q * (1 - math.exp(-epoch / 20)) + 0.01 * math.sin(7.3 * i + epoch)


def build(root: str, sweep: str, trials: int, reports: int) -> dict[str, float]:
    """Write the store (see the module docstring); returns the seconds each part took."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gapinit_ray.results import ResultsStore
    from gapinit_ray.results.store import METRICS, group_key

    store = ResultsStore(root, sweep)
    t0 = time.perf_counter()
    spec = {
        "name": sweep,
        "backbones": [{"name": "tiny-blip2"}],
        "search": {
            "axes": {"init": list(INITS), "train.lr": [1e-4 * (1 + k) for k in range(LRS)], "seed": []}
        },
        "scheduler": {"type": "fifo", "metric": "val_cider", "mode": "max"},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0},
        "train": {"epochs": reports},
    }
    Path(root, sweep).mkdir(parents=True, exist_ok=True)
    Path(root, sweep, "spec.json").write_text(json.dumps(spec))
    # one real report gives the exact schema every row has
    store.write_report(
        "probe", config(0), {"epoch": 1.0, "val_cider": 0.5, "val_loss": 1.0, "train_loss": 1.0}
    )
    probe_path = store.metric_path("probe", 1.0)
    schema = pq.read_schema(probe_path)
    Path(probe_path).unlink()
    Path(probe_path).parent.rmdir()
    now = int(time.time() * 1000)
    for i in range(trials):
        c = config(i)
        epochs = [float(e) for e in range(1, reports + 1)]
        cols = {name: pa.nulls(reports, schema.field(name).type) for name in schema.names}
        cols.update(
            {
                "sweep": pa.array([sweep] * reports, pa.string()),
                "group_id": pa.array([group_key(c)] * reports, pa.string()),
                "backbone": pa.array([c["backbone"]] * reports, pa.string()),
                "init": pa.array([c["init"]] * reports, pa.string()),
                "rank": pa.array([1] * reports, pa.int32()),
                "seed": pa.array([c["seed"]] * reports, pa.int64()),
                "lr": pa.array([c["train.lr"]] * reports, pa.float64()),
                "epoch": pa.array(epochs, pa.float64()),
                "iteration": pa.array(range(1, reports + 1), pa.int32()),
                "val_cider": pa.array([value(i, e) for e in epochs], pa.float64()),
                "val_loss": pa.array([2.0 / e for e in epochs], pa.float64()),
                "train_loss": pa.array([2.2 / e for e in epochs], pa.float64()),
                "align_cos_mean": pa.array([0.9 - 0.001 * e for e in epochs], pa.float64()),
                "timestamp": pa.array(
                    [now - (reports - k) * 1000 for k in range(reports)], schema.field("timestamp").type
                ),
                "host": pa.array(["bench"] * reports, pa.string()),
                "status": pa.array(["RUNNING"] * reports, pa.string()),
            }
        )
        table = pa.table({n: cols[n] for n in schema.names}, schema=schema)
        path = Path(store.compacted_path(tid(i)))
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="snappy", use_dictionary=False)
    t1 = time.perf_counter()
    for i in range(trials):
        store.write_trial(tid(i), config(i), status="TERMINATED", last_epoch=float(reports))
    t2 = time.perf_counter()
    store.compact_sweep()
    t3 = time.perf_counter()
    assert store.metrics().num_rows == trials * reports and set(METRICS) <= set(schema.names)
    return {"metric_files_s": t1 - t0, "trial_rows_s": t2 - t1, "sweep_file_s": t3 - t2}


CPU: dict[str, list[float]] = {}


def fetch(url: str, cpu_key: str | None = None) -> tuple[float, int]:
    """(wall ms, bytes) of one GET; with ``cpu_key`` also the process CPU ms it took (server thread +
    client: this process's ``process_time``), a figure a loaded shared machine inflates much less."""
    c0, t0 = time.process_time(), time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as r:
        body = r.read()
    if cpu_key is not None:
        CPU.setdefault(cpu_key, []).append((time.process_time() - c0) * 1000)
    return (time.perf_counter() - t0) * 1000, len(body)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--reports", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    from gapinit_ray.dashboard.server import DashboardServer, Target
    from gapinit_ray.results import ResultsStore

    sweep = "bench"
    with tempfile.TemporaryDirectory(prefix="dash-bench-") as tmp:
        build_s = build(tmp, sweep, args.trials, args.reports)
        print(f"built {args.trials} x {args.reports} in {sum(build_s.values()):.1f} s", flush=True)
        srv = DashboardServer(Target(tmp, sweep), "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{srv.port}/api/sweeps/{sweep}/"
        store = ResultsStore(tmp, sweep)
        next_epoch = [float(args.reports + 1)]

        def change(n: int = 10) -> None:
            """One new report in each of ``n`` trials (as a running sweep between two polls)."""
            e = next_epoch[0]
            for i in range(n):
                j = (i * 97) % args.trials
                store.write_report(tid(j), config(j), {"epoch": e, "val_cider": value(j, e), "val_loss": 1.0})
            next_epoch[0] += 1

        try:
            cold, warm, changed, sizes = {}, {}, {}, {}
            for ep in ENDPOINTS[:-1]:
                cold[ep], sizes[ep] = fetch(base + ep)
            cold["compare?wait=1"], sizes["compare?wait=1"] = fetch(base + "compare?wait=1")
            for ep in ENDPOINTS:
                warm[ep] = statistics.median(fetch(base + ep, f"warm {ep}")[0] for _ in range(args.repeats))
            for ep in ENDPOINTS:
                runs = []
                for _ in range(args.repeats):
                    change()
                    runs.append(fetch(base + ep, f"after_change {ep}")[0])
                changed[ep] = statistics.median(runs)
            fetch(base + "compare?wait=1")  # the workers the loop above started are done
            change()  # the blocking comparison (= gapinit results --compare's cost), once, after a change
            changed["compare?wait=1"] = fetch(base + "compare?wait=1", "after_change compare?wait=1")[0]
            idle = statistics.median(fetch(base + "version")[0] for _ in range(max(args.repeats, 20)))
            page, page_cpu = [], []
            for _ in range(args.repeats):
                fetch(base + "compare?wait=1")  # no worker of the previous refresh still running
                change()
                t0, c0 = time.perf_counter(), time.process_time()
                for ep in PAGE:
                    fetch(base + ep)
                page.append((time.perf_counter() - t0) * 1000)
                page_cpu.append((time.process_time() - c0) * 1000)
        finally:
            srv.stop()
    data_eps = [e for e in ENDPOINTS if e != "version"]
    worst = max(changed[e] for e in data_eps)
    cpu = {k: statistics.median(v) for k, v in CPU.items()}
    result = {
        "benchmark": "dashboard",
        "what": (
            f"{args.trials} trials x {args.reports} reports (100 seed groups of 10 seeds), finished-sweep layout "
            "(compacted trial files + _sweep.parquet); HTTP against the real uvicorn server; medians of "
            f"{args.repeats}. 'after_change': 10 new reports written before each request (re-read + recompute)"
        ),
        "trials": args.trials,
        "reports": args.reports,
        "build_s": build_s,
        "cold_ms": cold,
        "warm_unchanged_ms": warm,
        "warm_after_change_ms": changed,
        "response_bytes": sizes,
        "tick_idle_version_ms": idle,
        "tick_page_refresh_after_change_ms": statistics.median(page),
        "tick_page_refresh_note": "the page's 8 requests in a row; its compare request starts a worker that "
        "runs on beside them (its CPU is in the cpu figure)",
        "tick_page_refresh_after_change_cpu_ms": statistics.median(page_cpu),
        "cpu_ms": cpu,
        "worst_data_endpoint_after_change_cpu_ms": max(cpu[f"after_change {e}"] for e in data_eps),
        "load_average_at_end": os.getloadavg(),
        "notes": (
            "compare answers at once (the last finished table, marked stale, while a worker thread "
            "recomputes: its permutation tests on 250 trials per arm take seconds); compare?wait=1 is the "
            "blocking form (= gapinit results --compare's cost). Wall times on a shared machine include "
            "waiting for a CPU: see load_average_at_end and the cpu_ms figures."
        ),
        "worst_data_endpoint_after_change_ms": worst,
        "target_ms": TARGET_MS,
        "meets_target_warm_unchanged": max(warm[e] for e in data_eps) <= TARGET_MS,
        "meets_target_after_change": worst <= TARGET_MS,
        "machine": machine(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from gapinit_ray.atomic import write_atomic

    write_atomic(out / "dashboard.json", json.dumps(result, indent=1, sort_keys=True, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
