"""Results-store writers and a reader, each in its own OS process, for the fault tests.

``python -m tests.store_process write ROOT SWEEP --trials N --epochs E --prefix P`` writes, per trial,
what a sweep's processes write: the driver's trial row (``RUNNING``), one report per epoch as the
trial's Train callback does (``ResultsStore.write_report``), then the driver's final trial row
(``TERMINATED``); with ``--compact`` it then runs the end-of-sweep compaction (``ResultsStore.compact``).
``--fsize-limit BYTES`` first sets ``RLIMIT_FSIZE`` with SIGXFSZ ignored, so a write past the limit
fails with EFBIG as on a full disk. It prints one JSON line, ``{"written": reports written, "error":
[class name, message] or null}``, and exits 0, or 3 after a user-facing error.

``python -m tests.store_process read ROOT SWEEP [SWEEP ...] --stop-file F`` prints ``READY``, then
queries every sweep (``metrics()``, ``trials()``) and reads every Parquet file under ROOT with plain
pyarrow, over and over until F exists, then once more; it prints one JSON line: the number of
queries and files read, of rounds that began with some rows already written (while writers ran),
every problem seen (a failed query or file read, a row that is not whole, a row count that went
down) and the last row count per sweep.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys
import time
from pathlib import Path

from gapinit_ray.errors import GapinitError
from gapinit_ray.results import ResultsStore


def trial_config(prefix: str, i: int) -> tuple[str, dict]:
    """The trial id and flat config of trial ``i`` (the standard columns a sweep's rows carry)."""
    config = {"backbone": "tiny-blip2", "init": "gap", "lora.rank": 1, "train.lr": 2e-3, "seed": i}
    return f"{prefix}-{i}", config


def cider(epoch: float, seed: int) -> float:
    """The val_cider every writer reports for (epoch, seed): a reader checks rows against it."""
    return 100.0 + epoch + seed / 100


def report(epoch: int, seed: int) -> dict:
    """A report as the trial's Train workers send it."""
    return {
        "epoch": float(epoch),
        "train_loss": 3.0 / epoch,
        "val_loss": 2.0 / epoch,
        "val_cider": cider(epoch, seed),
        "lr": 1e-3,
        "samples_per_s": 50.0,
        "worker_host": "writer",
        "optimizer_steps": 10 * epoch,
        "init_checks": json.dumps({"align": 0.9}) if epoch == 1 else "",
    }


def write_sweep(
    store: ResultsStore, prefix: str, trials: int, epochs: int, first_epoch: int = 1, pause: float = 0.0
):
    """Write the trials (``pause`` seconds between reports, as training would take); yields after
    each report written (so a caller counts what got through)."""
    for i in range(trials):
        tid, config = trial_config(prefix, i)
        store.write_trial(tid, config, status="RUNNING")
        for epoch in range(first_epoch, epochs + 1):
            time.sleep(pause)
            store.write_report(tid, config, report(epoch, i), host="writer")
            yield tid, epoch
        store.write_trial(tid, config, status="TERMINATED", last_epoch=float(epochs))


def write(args: argparse.Namespace) -> int:
    store = ResultsStore(args.root, args.sweep)
    if args.fsize_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize_limit, args.fsize_limit))
    written, error = 0, None
    try:
        for _ in write_sweep(store, args.prefix, args.trials, args.epochs, args.first_epoch, args.pause):
            written += 1
        if args.compact:
            store.compact()
    except GapinitError as e:
        error = [type(e).__name__, str(e)]
    print(json.dumps({"written": written, "error": error}), flush=True)
    return 3 if error else 0


def _check_rows(sweep: str, table) -> list[str]:
    """A row is whole when every column a report sets is there and its value is the one written."""
    problems = []
    for row in table.select(["sweep", "trial_id", "seed", "epoch", "val_cider", "timestamp"]).to_pylist():
        if None in row.values() or row["sweep"] != sweep:
            problems.append(f"{sweep}: incomplete row {row}")
        elif not math.isclose(row["val_cider"], cider(row["epoch"], row["seed"])):
            problems.append(f"{sweep}: row with a wrong value {row}")
    return problems


def read(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    counts = dict.fromkeys(args.sweeps, 0)
    problems: list[str] = []
    queries = files = during = 0  # during: rounds that saw some rows but not all (writers mid-way)
    print("READY", flush=True)
    last = False
    while not last:
        last = os.path.exists(args.stop_file)  # one more round after the writers are done
        before = sum(counts.values())
        for sweep in args.sweeps:
            store = ResultsStore(args.root, sweep)
            try:
                metrics, trials = store.metrics(), store.trials()
            except Exception as e:  # any failure is a finding: report it, keep reading
                problems.append(f"{sweep}: query failed: {type(e).__name__}: {e}")
                continue
            queries += 1
            problems += _check_rows(sweep, metrics)
            if metrics.num_rows < counts[sweep]:
                problems.append(f"{sweep}: {metrics.num_rows} rows after {counts[sweep]}")
            counts[sweep] = metrics.num_rows
            if None in trials.column("status").to_pylist():
                problems.append(f"{sweep}: a trial row without a status")
        for path in Path(args.root).rglob("*.parquet"):
            if path.name.startswith("."):  # a writer's temp file: never read (see results._fs)
                continue
            try:
                pq.read_table(path)
                files += 1
            except FileNotFoundError:  # deleted by a compaction between the listing and the read
                continue
            except Exception as e:
                problems.append(f"{path}: unreadable: {type(e).__name__}: {e}")
        during += before > 0 and not last
        time.sleep(0.01)
    summary = {"queries": queries, "files": files, "during": during, "problems": problems, "rows": counts}
    print(json.dumps(summary), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("root")
    w.add_argument("sweep")
    w.add_argument("--trials", type=int, default=2)
    w.add_argument("--epochs", type=int, default=3)
    w.add_argument("--first-epoch", type=int, default=1)
    w.add_argument("--prefix", default="t")
    w.add_argument("--compact", action="store_true")
    w.add_argument("--fsize-limit", type=int, default=None)
    w.add_argument("--pause", type=float, default=0.0)
    r = sub.add_parser("read")
    r.add_argument("root")
    r.add_argument("sweeps", nargs="+")
    r.add_argument("--stop-file", required=True)
    args = ap.parse_args()
    return write(args) if args.cmd == "write" else read(args)


if __name__ == "__main__":
    sys.exit(main())
