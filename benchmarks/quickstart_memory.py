"""Wall time and peak memory of the README's first command, run as a user runs it: ``bash
scripts/quickstart.sh`` from a fresh directory that is not the repository, the unmodified spec with its
relative storage, no overrides. Memory is that of every process of it (driver, Ray's GCS, raylet, Tune
trial actors, Train controllers and workers, calibration actors), summed, sampled every 0.5 s.

The command first runs ``scripts/install.sh`` (a no-op check of an installed venv, seconds); the sweep's
own time is counted from the line install.sh ends with.

PSS (proportional set size) is summed where the kernel provides it, so pages shared between processes
(the torch libraries mapped by every worker) are counted once overall, not once per process; RSS, which
over-counts them, is recorded too.

    python -m benchmarks.quickstart_memory
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks.common import machine, write_result

ROOT = Path(__file__).parents[1]


def _kind(p: psutil.Process) -> str:
    """What a process is: a Ray actor's class (``ray::TrainController``), java, raylet, the driver..."""
    cmd = p.cmdline()
    if not cmd:
        return p.name()
    head = cmd[0]
    if head.startswith("ray::"):
        return head.split()[0]
    if "gapinit_ray.cli" in cmd:
        return "driver (gapinit run)"
    return Path(head).name


def _tree_memory(root: psutil.Process) -> tuple[float, float, int, dict[str, float]]:
    """PSS and RSS (GiB) of ``root`` and its descendants, their number, and PSS (GiB) by kind."""
    pss = rss = 0.0
    by_kind: dict[str, float] = {}
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            info = p.memory_full_info()
            kind = _kind(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        pss += getattr(info, "pss", info.rss)
        rss += info.rss
        by_kind[kind] = by_kind.get(kind, 0.0) + getattr(info, "pss", info.rss) / 2**30
    return pss / 2**30, rss / 2**30, len(procs), by_kind


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["bash", str(ROOT / "scripts" / "quickstart.sh")]
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        root = psutil.Process(proc.pid)
        peak: dict = {"pss_gib": 0.0, "rss_gib": 0.0, "processes": 0, "by_kind": {}}
        stop = threading.Event()
        installed: list[float] = []
        out_lines: list[str] = []

        def read_stdout() -> None:
            for line in proc.stdout:  # install.sh's last line marks the start of the sweep
                out_lines.append(line)
                if line.startswith("install.sh: gapinit-ray installed") and not installed:
                    installed.append(time.time())

        def sample() -> None:
            while not stop.is_set():
                try:
                    pss, rss, n, by_kind = _tree_memory(root)
                except psutil.NoSuchProcess:
                    return
                if pss > peak["pss_gib"]:
                    peak.update(pss_gib=pss, rss_gib_at_peak=rss, by_kind=by_kind)
                peak["rss_gib"] = max(peak["rss_gib"], rss)
                peak["processes"] = max(peak["processes"], n)
                time.sleep(0.5)

        reader = threading.Thread(target=read_stdout, daemon=True)
        thread = threading.Thread(target=sample, daemon=True)
        reader.start()
        thread.start()
        err = proc.stderr.read()
        proc.wait()
        stop.set()
        thread.join()
        reader.join()
        wall = time.time() - t0
        sweep_s = time.time() - installed[0] if installed else wall
        # Train runs the sweep started (each trial logs one line per run of its own)
        results = Path(tmp, "gapinit_results")
        train_runs = sum(len(f.read_text().splitlines()) for f in results.rglob("train_runs.jsonl"))
        heads = [i for i, x in enumerate(out_lines) if x.startswith("backbone")]
        table = "".join(out_lines[heads[0] :]) if heads else ""
    if proc.returncode != 0:
        raise RuntimeError(f"quickstart failed: {err[-2000:]}")
    result = {
        "benchmark": "quickstart_memory",
        "command": "bash scripts/quickstart.sh (from a fresh directory)",
        "wall_s": wall,
        "sweep_s_after_install": sweep_s,
        "peak_pss_gib_all_processes": peak["pss_gib"],
        "peak_rss_gib_all_processes": peak["rss_gib"],
        "max_processes": peak["processes"],
        "train_runs": train_runs,
        # where the peak's memory is: PSS (GiB) summed by process kind at the peak sample
        "peak_pss_gib_by_kind": dict(sorted(peak["by_kind"].items(), key=lambda kv: -kv[1])),
        "target": {"peak_pss_gib_all_processes": "<= 8", "sweep_s_after_install": "<= 300"},
        "printed_table": table,
        "includes": "first run on a fresh storage: synthetic data generation, tiny-backbone pretraining, calibration, 9 trials (3 inits x 3 seeds, seed-group ASHA, 3 Train runs at once on 2 CPUs, one METEOR JVM at a time)",
        "machine": machine(),
    }
    write_result("quickstart_memory", result)
    return result


if __name__ == "__main__":
    r = main()
    print(
        f"quickstart: {r['wall_s']:.0f} s ({r['sweep_s_after_install']:.0f} s after install), peak memory of all its processes {r['peak_pss_gib_all_processes']:.2f} GiB PSS "
        f"({r['peak_rss_gib_all_processes']:.2f} GiB RSS), up to {r['max_processes']} processes, "
        f"{r['train_runs']} Train runs"
    )
