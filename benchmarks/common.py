"""Shared helpers of the benchmarks: the machine description and atomic result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """What the figures were measured on (ratios are only comparable on one machine, in one run)."""
    import torch

    info = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        model = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        info["cpu_model"] = next(
            (ln.split(":", 1)[1].strip() for ln in model.splitlines() if "Model name" in ln), None
        )
    except OSError:
        info["cpu_model"] = None
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def write_result(name: str, result: dict) -> Path:
    from gapinit_ray.atomic import write_atomic

    return write_atomic(RESULTS / f"{name}.json", json.dumps(result, indent=1, sort_keys=True, default=str))


def carried_over(name: str, part: str, this_run: str) -> dict | None:
    """``part`` of the previous ``<name>.json``, marked as measured in an earlier run (when a flag skips
    re-measuring it), or None when there is none; ``this_run`` says what this run measured instead."""
    try:
        earlier = json.loads((RESULTS / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    figures = earlier.get(part)
    if not isinstance(figures, dict):
        return None
    figures.setdefault(
        "carried_over",
        f"measured in an earlier run (machine {json.dumps(earlier.get('machine'), sort_keys=True)}); "
        f"this run measured {this_run}",
    )
    return figures
