"""The calibration stage of a sweep: D_cal -> sharded forward passes -> central reduction -> GapArtifact.

Computed once per (backbone, calibration set, settings) and cached under ``<storage>/_cache/gaps/<key>``;
every trial of the sweep, and every later sweep with the same key, loads it instead of recomputing.
The key is a content hash of the backbone id/revision, the calibration set (ids, captions, image bytes),
the hooked modules and the reduction settings.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapinit_ray.calibrate import PooledShard, calibrate
from gapinit_ray.data import calibration_set_hash, load_image
from gapinit_ray.data.resolve import cache_dir, calibration_pairs
from gapinit_ray.gap import ArtifactMismatch, GapArtifact, SpotSettings, artifact_key, reduce_shards
from gapinit_ray.names import GAPS_DIR
from gapinit_ray.sharding import WorkerOptions, run_local, run_on_ray


def backbone_source_id(bspec, path: str | None = None) -> str:
    """Identity of a backbone's weights for cache keys, known without loading it; equal to the
    ``source_id`` the loaded :class:`Backbone` reports. ``path`` is where the weights come from (a
    pretrained tiny preset's cache dir, whose name carries its key), default the spec's path."""
    path = path or bspec.path
    if path is None:
        return f"{bspec.name}:seed=0"
    local = Path(path).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return f"{path}@{bspec.revision or 'main'}"


def target_modules_for(spec, bspec) -> list[str]:
    """Modules to hook: calibration.target_modules, else the LoRA targets, else the family defaults."""
    from gapinit_ray.backbones import backbone_class

    if spec.calibration.target_modules:
        return list(spec.calibration.target_modules)
    if spec.lora.target_modules:
        return list(spec.lora.target_modules)
    return list(backbone_class(bspec.name).default_target_modules)


def load_backbone_for(bspec, device: str = "cpu", path: str | None = None):
    from gapinit_ray.backbones import load_backbone

    path = path or bspec.path
    return load_backbone(bspec.name, path=path, revision=bspec.revision, dtype=bspec.dtype, device=device)


# ---- worker side (plain functions: run in-process or inside a Ray actor)


def worker_backbone(bspec_dict: dict, path: str | None = None) -> Any:
    """A sharded job's per-worker state: the backbone of ``bspec_dict`` (a dumped ``BackboneSpec``) on
    this worker's device, the GPU when it has one. Calibration, the feature cache and the init
    statistics all run their shards on it (:mod:`gapinit_ray.sharding`)."""
    import torch

    from gapinit_ray.spec import BackboneSpec

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_backbone_for(BackboneSpec.model_validate(bspec_dict), device=device, path=path)


def run_backbone_shards(
    bspec: Any,
    backbone_path: str | None,
    run_shard: Callable[[Any, Any], Any],
    payloads: Sequence[Any],
    *,
    use_ray: bool,
    num_workers: int,
    num_cpus: float,
    num_gpus: float,
    describe: Callable[[int], str],
) -> Iterator[tuple[int, Any]]:
    """Yield ``(shard index, result)`` of ``run_shard`` over ``payloads``, each worker holding the frozen
    backbone of ``bspec`` (:func:`worker_backbone`): a pool of ``num_workers`` Ray actors (a dying one is
    replaced and its shard retried once) when ``use_ray``, else this process in shard order. Calibration,
    the feature cache and the init statistics all run this way."""
    state_kwargs = {"bspec_dict": bspec.model_dump(), "path": backbone_path}
    if not use_ray:
        return run_local(worker_backbone, run_shard, payloads, state_kwargs)
    opts = WorkerOptions(
        num_workers=num_workers, num_cpus=num_cpus, num_gpus=num_gpus and 1.0, max_attempts=2
    )
    return run_on_ray(worker_backbone, run_shard, payloads, opts, state_kwargs, describe)


@dataclass
class ShardPayload:
    items: list[tuple[str, str, str]]  # (sample id, image path, caption)
    targets: list[str]
    residual_stream: bool
    batch_size: int
    prompt: str | None
    passes: str = "separate"


def _run_shard(backbone, payload: ShardPayload) -> PooledShard:
    pairs = [(sid, load_image(path, sid), cap) for sid, path, cap in payload.items]
    return calibrate(
        backbone,
        pairs,
        payload.targets,
        residual_stream=payload.residual_stream,
        batch_size=payload.batch_size,
        prompt=payload.prompt,
        passes=payload.passes,
    )


# ---- driver side


def shard_sizes(n: int, w: int) -> list[int]:
    """Split n items into w contiguous shards as evenly as possible (first ones one larger)."""
    w = max(1, min(w, n))
    return [n // w + (1 if i < n % w else 0) for i in range(w)]


def _progress_bar(total: int, label: str):
    done = 0
    start = time.perf_counter()

    def step(k: int) -> None:
        nonlocal done
        done += k
        if sys.stderr.isatty() or done == total:
            width = 30
            fill = int(width * done / max(total, 1))
            rate = done / max(time.perf_counter() - start, 1e-9)
            print(
                f"\r{label} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} samples ({rate:.1f}/s)",
                end="\n" if done == total else "",
                file=sys.stderr,
                flush=True,
            )

    return step


def artifact_parts(spec, bspec, pairs, backbone_path: str | None = None) -> dict[str, Any]:
    """Everything that determines a backbone's GapArtifact; its hash is the cache key."""
    cal = spec.calibration
    spot = SpotSettings(
        cal.spot.enabled, cal.spot.k, cal.spot.alpha_sem, cal.spot.alpha_geom, cal.spot.neighbor_space
    )
    return {
        "backbone": backbone_source_id(bspec, backbone_path),
        "dtype": bspec.dtype,
        "calibration_set": calibration_set_hash(pairs),
        "target_modules": target_modules_for(spec, bspec),
        "residual_stream": cal.residual_stream,
        "passes": cal.passes,
        "pooling": cal.pooling,
        "spot": dict(spot.__dict__),
        "prompt": spec.train.prompt,
    }


def run_calibration(
    spec,
    bspec,
    *,
    use_ray: bool | None = None,
    workers: int | None = None,
    shards_per_worker: int = 2,
    progress: bool = True,
    cpus_per_worker: float | None = None,
    backbone_path: str | None = None,
) -> tuple[GapArtifact, bool]:
    """Return ``(artifact, cache_hit)`` for one backbone of the spec; compute it if not cached.

    ``use_ray=None`` uses Ray when it is initialized. The calibration set is split into
    ``workers × shards_per_worker`` contiguous shards so a lost worker costs only its shard.
    """
    started = time.perf_counter()
    cal = spec.calibration
    pairs = calibration_pairs(spec)
    parts = artifact_parts(spec, bspec, pairs, backbone_path)
    targets, prompt = parts["target_modules"], parts["prompt"]
    spot = SpotSettings(**parts["spot"])
    key = artifact_key(parts)
    root = cache_dir(spec.storage) / GAPS_DIR
    if (root / key / "meta.json").exists():
        cached = GapArtifact.load(root / key)
        # a copied or stale cache entry must not pass for this backbone's gaps
        wrong = [k for k in ("backbone", "dtype", "target_modules") if cached.meta.get(k) != parts[k]]
        if wrong:
            k = wrong[0]
            raise ArtifactMismatch(
                f"GapArtifact {root / key} was computed for {k}={cached.meta.get(k)!r}, but backbone "
                f"{bspec.key} has {k}={parts[k]!r}; the cache entry is stale or copied from elsewhere: "
                "delete that directory and run again to recalibrate"
            )
        return cached, True

    items = [(str(r.image_id), r.image_path, cap) for r, cap in pairs]  # ids are unique per D_cal
    from gapinit_ray.raycompat import ray_initialized

    use_ray = ray_initialized() if use_ray is None else use_ray
    n_workers = workers or cal.workers
    sizes = shard_sizes(len(items), n_workers * (shards_per_worker if use_ray else 1))
    payloads, lo = [], 0
    for s in sizes:
        payloads.append(
            ShardPayload(items[lo : lo + s], targets, cal.residual_stream, cal.batch_size, prompt, cal.passes)
        )
        lo += s
    bar = _progress_bar(len(items), f"calibrating {bspec.key}") if progress else None
    results: dict[int, PooledShard] = {}

    def describe(i: int) -> str:
        shard_ids = [x[0] for x in payloads[i].items]
        shown = ", ".join(shard_ids[:8]) + (f" … (+{len(shard_ids) - 8})" if len(shard_ids) > 8 else "")
        return f"calibration shard {i} (samples {shown})"

    stream = run_backbone_shards(
        bspec,
        backbone_path,
        _run_shard,
        payloads,
        use_ray=use_ray,
        num_workers=n_workers,
        num_cpus=cpus_per_worker or spec.resources.cpus_per_worker,
        num_gpus=spec.resources.gpus_per_worker,
        describe=describe,
    )
    for i, shard in stream:
        results[i] = shard
        if bar:
            bar(len(shard.sample_ids))
    forward_s = time.perf_counter() - started
    from gapinit_ray.backbones import backbone_class

    gaps = reduce_shards(
        [results[i] for i in range(len(payloads))], spot, backbone_class(bspec.name).lm_layers_path
    )
    meta = {
        **parts,
        "backbone_name": bspec.name,
        "backbone_path": backbone_path or bspec.path,
        "backbone_revision": bspec.revision,
        "sample_ids": [x[0] for x in items],
        "num_samples": len(items),
        "timings": {
            "total_s": time.perf_counter() - started,
            "forward_s": forward_s,
            "worker_forward_s": sum(s.seconds for s in results.values()),
            "workers": n_workers if use_ray else 1,
            "shards": len(payloads),
            "tokens": sum(s.tokens for s in results.values()),
        },
    }
    artifact = GapArtifact(key, gaps, meta)
    artifact.save(root)
    return artifact, False
