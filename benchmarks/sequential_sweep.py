"""The real sequential sweep on this machine: ``gapinit run sweeps/sequential.yaml`` as a user runs it
(from a fresh directory, the unmodified spec, its relative storage), then what its record says: seeds
per arm, each comparison's verdict and where it stopped, wall time and device-hours, against running
every arm at ``max_seeds`` (the trials it did not run, at the mean measured cost of a trial it ran).

    python -m benchmarks.sequential_sweep        # writes benchmarks/results/sequential_sweep.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, write_result

ROOT = Path(__file__).parents[1]
SPEC = ROOT / "sweeps" / "sequential.yaml"


def main() -> dict:
    work = Path(tempfile.mkdtemp(prefix="gapinit-seq-bench-"))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "gapinit_ray.cli", "run", str(SPEC)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"the sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    sweep = work / "gapinit_results" / "sequential"
    record = json.loads((sweep / "sequential.json").read_text())
    summary = record["summary"]
    from gapinit_ray.results import ResultsStore

    metrics = ResultsStore(str(sweep.parent), sweep.name).metrics(columns=["trial_id", "device_s"])
    per_trial: dict[str, float] = {}
    for r in metrics.to_pylist():
        per_trial[r["trial_id"]] = per_trial.get(r["trial_id"], 0.0) + (r["device_s"] or 0.0)
    trials = len(per_trial)
    arms = len(summary["seeds_per_arm"])
    at_max = arms * summary["max_seeds"]
    mean_h = sum(per_trial.values()) / max(1, trials) / 3600
    result = {
        "machine": machine(),
        "command": f"gapinit run sweeps/sequential.yaml   (cwd: a fresh directory; {SPEC.name} unmodified)",
        "wall_s": round(wall, 1),
        "trials_run": trials,
        "trials_if_every_arm_ran_max_seeds": at_max,
        "device_hours": summary["spent_device_hours"],
        "device_hours_if_every_arm_ran_max_seeds": mean_h * at_max,
        "device_hours_ratio": summary["spent_device_hours"] / (mean_h * at_max) if mean_h else None,
        "seeds_per_arm": summary["seeds_per_arm"],
        "rounds": len(record["rounds"]),
        "verdicts": [
            {
                k: v[k]
                for k in (
                    "comparison",
                    "status",
                    "verdict",
                    "n",
                    "seeds",
                    "mean",
                    "cs_low",
                    "cs_high",
                    "e_value",
                )
            }
            for v in record["verdicts"]
        ],
        "summary": summary,
        "table": proc.stdout[proc.stdout.find("sequential comparisons") :].strip(),
    }
    path = write_result("sequential_sweep", result)
    print(result["table"])
    print(
        f"\nwall {wall / 60:.1f} min; {trials} trials ({at_max} at max_seeds for every arm); "
        f"{summary['spent_device_hours']:.3f} device-hours ({mean_h * at_max:.3f} at max_seeds) -> {path}"
    )
    return result


if __name__ == "__main__":
    main()
