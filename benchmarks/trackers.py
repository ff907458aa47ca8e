"""Experiment trackers' overhead: the same tiny sweep with all three loggers (MLflow, TensorBoard,
W&B offline) and without, side by side in one process on one local Ray, alternating.

    python -m benchmarks.trackers [--rounds 4] [--epochs 4] [--steps 40] [--loggers mlflow,tensorboard,wandb] [--no-write]

Reports the per-step time (1 / samples_per_s of every training report) of the trials with loggers on
over off (target <= 1.03: the trackers run in one child process of the driver at nice 19), the ratio
of each round (the rounds alternate which side goes first) and the quartiles of both sides, so the
machine's own noise can be told from the trackers' cost, and the driver-side cost of one
``Trackers.result`` call (it only enqueues). ``--loggers`` picks the "on" side (one tracker at a time
gives the breakdown). Writes benchmarks/results/trackers.json unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, write_result


def _sweep(root: Path, name: str, loggers: list[str], epochs: int, steps: int) -> list[float]:
    """One sweep of 2 trials (2 seeds, one Train worker each: the machine's 2 CPUs busy training);
    (epoch, time per sample) of each report with a throughput (1 / samples_per_s over the epoch's
    ``steps`` steps of batch 4: the time per step over 4)."""
    import yaml

    from gapinit_ray.results import ResultsStore
    from gapinit_ray.spec import spec_from_dict
    from gapinit_ray.sweep import run_sweep

    raw = yaml.safe_load((Path(__file__).parents[1] / "sweeps" / "quickstart.yaml").read_text())
    raw.update(name=name, storage=str(root / "store"), loggers=loggers)
    raw["backbones"] = [{"name": "tiny-blip2", "pretrain": False}]
    raw["data"]["sources"]["shapes"]["num_images"] = 6 * steps  # the train split covers `steps` batches
    raw["data"]["val"]["limit"] = 6
    raw["calibration"].update({"num_samples": 16, "workers": 1})
    raw["train"].update({"epochs": epochs, "batch_size": 4, "max_steps_per_epoch": steps})
    raw["eval"].update({"metrics": ["bleu4"], "final_metrics": [], "generation": {"max_new_tokens": 4}})
    raw["search"] = {"init": ["gap"], "seed": [1, 2]}
    raw["scheduler"] = {"type": "fifo", "metric": "val_bleu4", "mode": "max"}
    raw["resources"] = {"workers_per_trial": 1, "cpus_per_worker": 1}
    spec = spec_from_dict(raw)
    run_sweep(spec, quiet=True)
    m = ResultsStore(spec.storage, spec.name).metrics().to_pandas()
    return [(float(e), 1.0 / v) for e, v in zip(m["epoch"], m["samples_per_s"], strict=True) if v > 0]


def _median(reports: list[tuple[float, float]], epoch: float | None = None) -> float:
    return statistics.median(s for e, s in reports if epoch is None or e == epoch)


def enqueue_cost(n: int = 2000) -> float:
    """Seconds per ``Trackers.result`` call on the driver (TensorBoard only: the enqueue is the same)."""
    from gapinit_ray.spec import spec_from_dict
    from gapinit_ray.trackers import Trackers

    with tempfile.TemporaryDirectory() as tmp:
        import yaml

        raw = yaml.safe_load((Path(__file__).parents[1] / "sweeps" / "quickstart.yaml").read_text())
        raw.update(storage=tmp, loggers=["tensorboard"])
        trackers = Trackers(spec_from_dict(raw), Path(tmp))
        metrics = {f"m{i}": float(i) for i in range(30)}
        trackers.result("t0", "g", {"init": "gap", "seed": 0}, {"epoch": 0.0})  # starts the process
        t0 = time.perf_counter()
        for i in range(n):
            trackers.result(
                f"t{i % 10}", "g", {"init": "gap", "seed": i % 10}, {"epoch": float(i), **metrics}
            )
        spent = time.perf_counter() - t0
        trackers.close()
    return spent / n


def tracker_cpu_s_per_report(logger: str, trials: int = 4, epochs: int = 4) -> float:
    """CPU seconds the trackers' process (and what it starts: W&B's service) uses per report of one
    tracker, from starting it to closing it, with ``trials`` x ``epochs`` reports of 30 metrics: what the
    tracker takes from the machine's CPUs (at nice 19). CPU time, not wall time: a busy machine makes
    it slower, not larger."""
    import threading

    import psutil
    import yaml

    from gapinit_ray.spec import spec_from_dict
    from gapinit_ray.trackers import Trackers

    with tempfile.TemporaryDirectory() as tmp:
        raw = yaml.safe_load((Path(__file__).parents[1] / "sweeps" / "quickstart.yaml").read_text())
        raw.update(storage=tmp, loggers=[logger])
        trackers = Trackers(spec_from_dict(raw), Path(tmp))
        metrics = {f"m{i}": float(i) for i in range(30)}
        for epoch in range(epochs):
            for t in range(trials):
                trackers.result(
                    f"t{t}", f"g{t // 2}", {"init": "gap", "seed": t}, {"epoch": epoch, **metrics}
                )
        for t in range(trials):
            trackers.end(f"t{t}", "TERMINATED", None, None)
        proc, used = psutil.Process(trackers._proc.pid), {}
        closing = threading.Thread(target=trackers.close)
        closing.start()
        while closing.is_alive():  # the last sample of each process before it ends
            with contextlib.suppress(psutil.Error):
                for p in [proc, *proc.children(recursive=True)]:
                    cpu = p.cpu_times()
                    used[p.pid] = cpu.user + cpu.system
            closing.join(0.2)
    return sum(used.values()) / (trials * epochs)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40, help="training steps per epoch (batch 4)")
    ap.add_argument("--loggers", default="mlflow,tensorboard,wandb", help="comma-separated, the 'on' side")
    ap.add_argument("--no-write", action="store_true", help="print only (a per-logger breakdown)")
    ap.add_argument("--cpu-only", action="store_true", help="only the trackers' CPU per report, no sweeps")
    args = ap.parse_args(argv)
    loggers = [s for s in args.loggers.split(",") if s]
    cpu = {lg: tracker_cpu_s_per_report(lg) for lg in loggers}
    if args.cpu_only:
        print(json.dumps({"tracker_cpu_s_per_report": cpu}, indent=1))
        return {"tracker_cpu_s_per_report": cpu}
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    on: list[tuple[float, float]] = []  # (epoch, time per sample) of every report
    off: list[tuple[float, float]] = []
    per_round: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):  # alternate, so drift on a shared machine hits both
                first, second = ("off", "on") if r % 2 == 0 else ("on", "off")
                got = {}
                for side in (first, second):
                    got[side] = _sweep(
                        Path(tmp), f"{side}{r}", loggers if side == "on" else [], args.epochs, args.steps
                    )
                off += got["off"]
                on += got["on"]
                per_round.append(_median(got["on"]) / _median(got["off"]))
    finally:
        ray.shutdown()

    def spread(xs: list[float]) -> dict[str, float]:
        q = statistics.quantiles(xs, n=4)
        return {"p25": q[0], "median": statistics.median(xs), "p75": q[2]}

    epochs = sorted({e for e, _ in on} & {e for e, _ in off})
    by_epoch = {f"{e:g}": _median(on, e) / _median(off, e) for e in epochs}
    on_s, off_s = [s for _, s in on], [s for _, s in off]
    result = {
        "machine": machine(),
        "loggers": loggers,
        "rounds": args.rounds,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps,
        "step_s_loggers_off": statistics.median(off_s),
        "step_s_loggers_on": statistics.median(on_s),
        "on_over_off_time_per_step": statistics.median(on_s) / statistics.median(off_s),
        "on_over_off_per_round": per_round,
        "on_over_off_per_epoch": by_epoch,
        "step_s_spread": {"on": spread(on_s), "off": spread(off_s)},
        "reports": {"on": len(on), "off": len(off)},
        "load_average_1m_at_end": os.getloadavg()[0],
        "driver_enqueue_s_per_result": enqueue_cost(),
        "tracker_cpu_s_per_report": cpu,
    }
    if not args.no_write:
        write_result("trackers", result)
    print(json.dumps(result, indent=1))
    print(
        f"time per step, loggers on / off: {result['on_over_off_time_per_step']:.3f} (target <= 1.03); "
        f"per round {', '.join(f'{x:.3f}' for x in per_round)}; "
        f"per epoch {', '.join(f'{e}: {x:.3f}' for e, x in by_epoch.items())}; "
        f"driver enqueue {result['driver_enqueue_s_per_result'] * 1e6:.1f} µs per result"
    )
    return result


if __name__ == "__main__":
    main()
