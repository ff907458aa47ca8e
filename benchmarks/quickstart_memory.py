"""Peak memory of the whole quickstart sweep: every process of it (driver, Ray's GCS, raylet, Tune
trial actors, Train controllers and workers, calibration actors), summed, sampled every 0.5 s.

PSS (proportional set size) is summed where the kernel provides it, so pages shared between processes
(the torch libraries mapped by every worker) are counted once overall, not once per process; RSS, which
over-counts them, is recorded too.

    python -m benchmarks.quickstart_memory
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks.common import machine, write_result

ROOT = Path(__file__).parents[1]


def _tree_memory(root: psutil.Process) -> tuple[float, float, int]:
    pss = rss = 0.0
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            info = p.memory_full_info()
            pss += getattr(info, "pss", info.rss)
            rss += info.rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pss / 2**30, rss / 2**30, len(procs)


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "gapinit_ray.cli",
            "run",
            str(ROOT / "sweeps" / "quickstart.yaml"),
            f"storage={tmp}/store",
            "--quiet",
        ]
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        root = psutil.Process(proc.pid)
        peak = {"pss_gib": 0.0, "rss_gib": 0.0, "processes": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    pss, rss, n = _tree_memory(root)
                except psutil.NoSuchProcess:
                    return
                if pss > peak["pss_gib"]:
                    peak.update(pss_gib=pss, rss_gib_at_peak=rss)
                peak["rss_gib"] = max(peak["rss_gib"], rss)
                peak["processes"] = max(peak["processes"], n)
                time.sleep(0.5)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        _out, err = proc.communicate()
        stop.set()
        thread.join()
        wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"quickstart failed: {err[-2000:]}")
    result = {
        "benchmark": "quickstart_memory",
        "wall_s": wall,
        "peak_pss_gib_all_processes": peak["pss_gib"],
        "peak_rss_gib_all_processes": peak["rss_gib"],
        "max_processes": peak["processes"],
        "target": {"peak_pss_gib_all_processes": "<= 8"},
        "includes": "first run on a fresh storage: synthetic data generation, tiny-backbone pretraining, calibration, 9 trials (3 inits x 3 seeds, seed-group ASHA)",
        "machine": machine(),
    }
    write_result("quickstart_memory", result)
    return result


if __name__ == "__main__":
    r = main()
    print(
        f"quickstart: {r['wall_s']:.0f} s, peak memory of all its processes {r['peak_pss_gib_all_processes']:.2f} GiB PSS "
        f"({r['peak_rss_gib_all_processes']:.2f} GiB RSS), up to {r['max_processes']} processes"
    )
