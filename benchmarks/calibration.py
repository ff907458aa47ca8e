"""Calibration throughput: W=1 vs W=2 Ray workers, and the Ray path vs a plain in-process loop.

Every path runs the same code (``gapinit_ray.calibration_job``) on the same calibration set, each
worker with the same number of torch threads (1), measured side by side in one run. Times include
loading the model and the images (both paths do both); Ray itself is started once beforehand.

Two figures per path:

* **throughput** (samples/s of the forward phase of an ``--samples`` run): what a user sees, start-up
  included. The Ray path starts worker processes (imports, model load) that the plain loop, run in this
  already-warm process, does not pay, so on a backbone this small the fixed start-up weighs a lot;
* **per-sample time**: the forward phase's time of an ``--samples`` run minus that of a one-batch run
  (``--small`` samples), divided by the difference in samples -- the marginal cost of a sample with
  each path's fixed start-up taken out. The issue's "per-sample overhead of the Ray path" and the
  steady W=2 / W=1 scaling are read from it; the fixed costs are reported too.

The central reduction (identical on every path) is not timed; SPOT-Gap scores are off here, as their
O(N²) neighbour search at 4096 samples would be most of each run's time without being measured.

    python -m benchmarks.calibration [--samples 4096] [--small 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.common import machine, write_result

ROOT = Path(__file__).parents[1]


def make_spec(storage: str, samples: int, workers: int, num_images: int):
    from gapinit_ray.spec import spec_from_dict

    raw = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    raw["storage"] = storage
    raw["data"]["sources"]["shapes"]["num_images"] = num_images
    raw["calibration"].update({"num_samples": samples, "batch_size": 16, "workers": workers})
    raw["calibration"]["spot"] = {"enabled": False}
    raw["lora"]["init_options"] = {"gap_source": "mean"}
    raw["resources"]["cpus_per_worker"] = 1
    return spec_from_dict(raw)


def timed(spec, use_ray: bool, workers: int) -> tuple[float, float, float]:
    """(end-to-end seconds, forward-phase seconds, in-shard seconds): the forward phase is what sharding
    parallelizes (worker start, model load, image decoding, forward passes); the driver's data hashing
    and the central reduction are identical on every path. In-shard seconds: the hooked forward passes
    alone, summed over shards (no start-up, no image decoding)."""
    from gapinit_ray.calibration_job import run_calibration
    from gapinit_ray.data.resolve import cache_dir

    shutil.rmtree(cache_dir(spec.storage) / "gaps", ignore_errors=True)
    t0 = time.perf_counter()
    artifact, hit = run_calibration(
        spec, spec.backbones[0], use_ray=use_ray, workers=workers, progress=False, cpus_per_worker=1
    )
    if hit:
        raise RuntimeError("benchmark hit the cache")
    timings = artifact.meta["timings"]
    return time.perf_counter() - t0, timings["forward_s"], timings["worker_forward_s"]


PATHS = ("plain", "ray_w1", "ray_w2")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--small", type=int, default=32, help="samples of the fixed-cost run (one batch each)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    import ray

    torch.set_num_threads(1)  # the plain loop gets the same one thread as each Ray worker
    n, small = args.samples, args.small
    with tempfile.TemporaryDirectory() as tmp:
        images = int(n / 0.8) + 16  # one data set for every run: the first 80 % are the train split
        specs = {(w, k): make_spec(tmp, k, w, images) for w in (1, 2) for k in (n, small)}
        from gapinit_ray.data.resolve import calibration_pairs

        calibration_pairs(specs[1, n])  # generate the data set once, outside the timings
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            timed(specs[1, small], True, 1)  # warm-up: worker processes, imports, page cache
            runs: dict[str, list[tuple[float, float, float]]] = {p: [] for p in PATHS}
            fixed: dict[str, list[float]] = {p: [] for p in PATHS}
            for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all paths
                for path in PATHS:
                    w, use_ray = (2 if path == "ray_w2" else 1), path != "plain"
                    runs[path].append(timed(specs[w, n], use_ray, w))
                    fixed[path].append(timed(specs[w, small], use_ray, w)[1])
        finally:
            ray.shutdown()
    total = {k: statistics.median(t for t, _, _ in v) for k, v in runs.items()}
    fwd = {k: statistics.median(f for _, f, _ in v) for k, v in runs.items()}
    shards = {k: statistics.median(w for _, _, w in v) for k, v in runs.items()}
    fixed_s = {k: statistics.median(v) for k, v in fixed.items()}
    # marginal seconds per sample: each repeat's big run minus its small run, then the median
    per_sample = {
        k: statistics.median((f - s) / (n - small) for (_, f, _), s in zip(runs[k], fixed[k], strict=True))
        for k in PATHS
    }
    result = {
        "benchmark": "calibration",
        "samples": n,
        "small_run_samples": small,
        "backbone": "tiny-blip2 (not pretrained; same compute); SPOT-Gap off (reduction not timed)",
        "seconds_end_to_end": {k: [t for t, _, _ in v] for k, v in runs.items()},
        "seconds_forward_phase": {k: [f for _, f, _ in v] for k, v in runs.items()},
        "seconds_in_shards_summed": {k: [w for _, _, w in v] for k, v in runs.items()},
        # the forward phase of a one-batch run: data hashing, worker start-up (process, imports, model
        # load), one batch; what a calibration pays whatever its size
        "seconds_fixed_small_run": {k: list(v) for k, v in fixed.items()},
        "ms_per_sample_marginal": {k: 1e3 * v for k, v in per_sample.items()},
        # the forwards themselves on a Ray actor vs in the plain process (1.0: no per-sample overhead)
        "ray_w1_over_plain_time_in_shards": shards["ray_w1"] / shards["plain"],
        # > 1: two workers' forwards slow each other down (2 cores that also run the driver and Ray)
        "w2_over_w1_summed_shard_time": shards["ray_w2"] / shards["ray_w1"],
        "samples_per_s": {k: n / v for k, v in fwd.items()},
        "samples_per_s_end_to_end": {k: n / v for k, v in total.items()},
        "samples_per_s_marginal": {k: 1 / v for k, v in per_sample.items()},
        "speedup_w2_over_w1": fwd["ray_w1"] / fwd["ray_w2"],
        "ray_w1_over_plain_time": fwd["ray_w1"] / fwd["plain"],
        "speedup_w2_over_w1_per_sample": per_sample["ray_w1"] / per_sample["ray_w2"],
        "ray_w1_over_plain_time_per_sample": per_sample["ray_w1"] / per_sample["plain"],
        "fixed_seconds": fixed_s,
        "speedup_w2_over_w1_end_to_end": total["ray_w1"] / total["ray_w2"],
        "ray_w1_over_plain_time_end_to_end": total["ray_w1"] / total["plain"],
        "targets": {
            "speedup_w2_over_w1": ">= 1.7",
            "ray_w1_over_plain_time": "<= 1.15",
            "speedup_w2_over_w1_per_sample": ">= 1.7",
            "ray_w1_over_plain_time_per_sample": "<= 1.15",
        },
        "machine": machine(),
    }
    write_result("calibration", result)
    return result


if __name__ == "__main__":
    r = main()
    print(
        f"calibration ({r['samples']} samples): plain {r['samples_per_s']['plain']:.0f}/s, "
        f"ray W=1 {r['samples_per_s']['ray_w1']:.0f}/s, W=2 {r['samples_per_s']['ray_w2']:.0f}/s; "
        f"W2/W1 speed-up {r['speedup_w2_over_w1']:.2f}x, Ray/plain time {r['ray_w1_over_plain_time']:.2f}x; "
        f"per sample (fixed start-up taken out): W2/W1 {r['speedup_w2_over_w1_per_sample']:.2f}x, "
        f"Ray/plain {r['ray_w1_over_plain_time_per_sample']:.2f}x; fixed s "
        + ", ".join(f"{k} {v:.1f}" for k, v in r["fixed_seconds"].items())
    )
