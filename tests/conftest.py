"""Shared fixtures: a real local Ray for the tests that need one, and paths of shipped files."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
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


def synthetic_pairs(out: Path, num_images: int, seed: int) -> list[tuple]:
    """(image id, PIL image, first caption) of a generated downstream caption set's train split."""
    from gapinit_ray.data import generate_synthetic, load_caption_set, load_image

    dataset = generate_synthetic(str(out / "set"), variant="downstream", num_images=num_images, seed=seed)
    return [
        (r.image_id, load_image(r), r.captions[0])
        for r in load_caption_set("karpathy", dataset, None, "train")
    ]


def modules_loaded_by(imports: str, *modules: str) -> list[bool]:
    """Whether each of ``modules`` is in sys.modules of a fresh interpreter after it runs ``imports``."""
    import subprocess
    import sys

    code = f"import sys; {imports}; print(*[m in sys.modules for m in {list(modules)!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [word == "True" for word in out.stdout.split()]


_shared_cache: list[Path] = []


def share_caches(storage: str | Path, *kinds: str) -> None:
    """Point the ``kinds`` of a test storage's shared cache (``backbones``: pretrained tiny presets,
    ``gaps``: GapArtifacts) at one directory each for the whole session, so the tiny preset is
    pretrained once (and a calibration done once), not again by every test that trains or calibrates.

    Safe to share: each entry's directory is named by a hash of what it was built from (a GapArtifact's
    names the backbone's resolved path, here the session's) and written whole (a pretrained backbone
    under a lock), as on a real cluster's shared storage."""
    if not _shared_cache:
        _shared_cache.append(Path(tempfile.mkdtemp(prefix="gapinit-test-cache-")))
        atexit.register(shutil.rmtree, _shared_cache[0], True)
    for kind in kinds:
        target = _shared_cache[0] / kind
        target.mkdir(exist_ok=True)
        link = Path(storage) / "_cache" / kind
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, started once for the session and shut down by us (never `ray stop`)."""
    import ray

    if not ray.is_initialized():
        # address="local": our own instance, even while a `ray start` cluster (another test's, another
        # user's) runs on this machine; a plain ray.init() would join that one
        ray.init(
            address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def clean_tiny_trial(ray_local, tmp_path_factory):
    """One unkilled 1-worker trial (gap, seed 3, 2 epochs of 4 steps) on Ray Train, run once for the
    tests that assert on such a run: its reports (every epoch's metrics, from a Ray Train callback), the
    spec (its storage holds the trial's data and GapArtifact) and the CPU seconds psutil measured of
    each Ray Train worker process of this session's Ray while it ran (sampled every 50 ms)."""
    import threading
    import time
    from types import SimpleNamespace

    import psutil

    from gapinit_ray.trial import build_trainer

    from .test_train import EpochLog, tiny_spec

    tmp_path = tmp_path_factory.mktemp("clean_trial")
    spec = tiny_spec(tmp_path, epochs=2)
    params = {"init": "gap", "seed": 3}
    cpu_s: dict[int, float] = {}
    done = threading.Event()

    me = psutil.Process()

    def _is_train_worker(p: psutil.Process | None) -> bool:
        return p is not None and "RayTrainWorker" in " ".join(p.cmdline())

    def sample() -> None:
        while not done.is_set():
            # this session's Ray only (its processes descend from this one): not another run's workers
            for p in me.children(recursive=True):
                try:
                    if not _is_train_worker(p) or _is_train_worker(p.parent()):
                        # a child a Train worker forks (a subprocess before its exec) carries the
                        # worker's title for a moment: it is not a second worker
                        continue
                    t = p.cpu_times()
                    cpu_s[p.pid] = t.user + t.system
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log = EpochLog(str(tmp_path / "reports.jsonl"))
    try:
        result = build_trainer(spec, params, callbacks=[log.callback], progress=False).fit()
    finally:
        done.set()
        sampler.join()
    return SimpleNamespace(spec=spec, params=params, result=result, reports=log.reports(), cpu_s=cpu_s)
