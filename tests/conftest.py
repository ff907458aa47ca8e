"""Shared fixtures: a real local Ray for the tests that need one, and paths of shipped files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"

#: the environment the test session started with, before the settings below: what a user's shell has
USER_ENV = dict(os.environ)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "86400")  # see gapinit_ray.cluster
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # see gapinit_ray.cluster
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")  # local Ray: see gapinit_ray.cluster


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, started once for the session and shut down by us (never `ray stop`)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()
