"""The GPU readiness check, run on CPU with --dry-run: the same code path the GPU run takes, so it
cannot rot while no GPU is around, and its JSON has every field the GPU run fills."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_gpu_check_dry_run_fills_every_field(tmp_path: Path) -> None:
    from benchmarks.gpu_check import FIELDS

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(FIELDS) <= set(result), set(FIELDS) - set(result)
    assert result["dry_run"] is True and result["device"] == "cpu"
    cal = result["calibration"]
    assert cal["samples"] == 16 and cal["samples_per_s"]["service"] > 0 and cal["hooked_modules"] > 0
    training = result["training"]
    for arm in ("feature_cache_off", "feature_cache_on", "plain_loop"):
        t = training[arm]
        assert t["step_s"] > 0 and t["tflops_per_s"] > 0 and t["mfu_vs_matmul"] > 0, (arm, t)
    flops = training["plain_loop"]
    assert 0 < flops["flops_per_step_feature_cache_on"] < flops["flops_per_step"]  # no vision prefix
    assert set(result["checks"]) == set(result["targets"])
    assert "gpu_check on cpu (dry run)" in r.stdout
