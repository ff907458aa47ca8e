"""Calibration throughput: W=1 vs W=2 Ray workers, and the Ray path vs a plain in-process loop.

Every path runs the same code (``gapinit_ray.calibration_job``) on the same calibration set, each
worker with the same number of torch threads (1), measured side by side in one run. Times include
loading the model and the images (both paths do both); Ray itself is started once beforehand.

    python -m benchmarks.calibration [--samples 1024] [--repeats 2]
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


def make_spec(storage: str, samples: int, workers: int):
    from gapinit_ray.spec import spec_from_dict

    raw = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    raw["storage"] = storage
    raw["data"]["sources"]["shapes"]["num_images"] = int(samples / 0.8) + 16
    raw["calibration"].update({"num_samples": samples, "batch_size": 16, "workers": workers})
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    import ray

    torch.set_num_threads(1)  # the plain loop gets the same one thread as each Ray worker
    with tempfile.TemporaryDirectory() as tmp:
        specs = {w: make_spec(tmp, args.samples, w) for w in (1, 2)}
        from gapinit_ray.data.resolve import calibration_pairs

        calibration_pairs(specs[1])  # generate the data set once, outside the timings
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            timed(specs[1], True, 1)  # warm-up: worker processes, imports, page cache
            runs: dict[str, list[tuple[float, float, float]]] = {"plain": [], "ray_w1": [], "ray_w2": []}
            for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all paths
                runs["plain"].append(timed(specs[1], False, 1))
                runs["ray_w1"].append(timed(specs[1], True, 1))
                runs["ray_w2"].append(timed(specs[2], True, 2))
        finally:
            ray.shutdown()
    total = {k: statistics.median(t for t, _, _ in v) for k, v in runs.items()}
    fwd = {k: statistics.median(f for _, f, _ in v) for k, v in runs.items()}
    shards = {k: statistics.median(w for _, _, w in v) for k, v in runs.items()}
    n = args.samples
    result = {
        "benchmark": "calibration",
        "samples": n,
        "backbone": "tiny-blip2 (not pretrained; same compute)",
        "seconds_end_to_end": {k: [t for t, _, _ in v] for k, v in runs.items()},
        "seconds_forward_phase": {k: [f for _, f, _ in v] for k, v in runs.items()},
        "seconds_in_shards_summed": {k: [w for _, _, w in v] for k, v in runs.items()},
        # what the forward phase spends outside the hooked forwards: worker start-up (process, imports,
        # model load), image decoding, moving shards and results; per path, wall seconds
        "seconds_forward_phase_outside_shards": {
            k: fwd[k] - shards[k] / (2 if k == "ray_w2" else 1) for k in fwd
        },
        # the forwards themselves on a Ray actor vs in the plain process (1.0: no per-sample overhead)
        "ray_w1_over_plain_time_in_shards": shards["ray_w1"] / shards["plain"],
        # > 1: two workers' forwards slow each other down (2 cores that also run the driver and Ray)
        "w2_over_w1_summed_shard_time": shards["ray_w2"] / shards["ray_w1"],
        "samples_per_s": {k: n / v for k, v in fwd.items()},
        "samples_per_s_end_to_end": {k: n / v for k, v in total.items()},
        "speedup_w2_over_w1": fwd["ray_w1"] / fwd["ray_w2"],
        "ray_w1_over_plain_time": fwd["ray_w1"] / fwd["plain"],
        "speedup_w2_over_w1_end_to_end": total["ray_w1"] / total["ray_w2"],
        "ray_w1_over_plain_time_end_to_end": total["ray_w1"] / total["plain"],
        "targets": {"speedup_w2_over_w1": ">= 1.7", "ray_w1_over_plain_time": "<= 1.15"},
        "machine": machine(),
    }
    write_result("calibration", result)
    return result


if __name__ == "__main__":
    r = main()
    print(
        f"calibration ({r['samples']} samples): plain {r['samples_per_s']['plain']:.0f}/s, "
        f"ray W=1 {r['samples_per_s']['ray_w1']:.0f}/s, W=2 {r['samples_per_s']['ray_w2']:.0f}/s; "
        f"W2/W1 speed-up {r['speedup_w2_over_w1']:.2f}x, Ray/plain time {r['ray_w1_over_plain_time']:.2f}x"
    )
