"""Frozen-prefix feature cache: the vision prefix's outputs computed once per sweep, read by every trial.

In Gap-Init's setting the vision tower, Q-Former / merger and projector are frozen and LoRA sits only in
the LM, so what the prefix hands the LM for an image (:meth:`Backbone.image_features`) is the same in
every step of every epoch of every trial. It is computed once, with the same sharded Ray machinery as
calibration (:mod:`gapinit_ray.sharding`), and stored under ``<storage>/_cache/features/<model key>/``:

* ``<model key>`` hashes what determines the prefix's outputs: the backbone's weights identity (source
  id, dtype, and for a local checkpoint the size and mtime of its files) and the format version;
* inside, ``shard-*.safetensors`` files each hold the features of a set of images, keyed by the sha256
  of each image file's bytes (``metadata["digests"]``): rows ``features[offsets[i]:offsets[i+1]]``,
  plus the per-image extra inputs (Qwen2-VL's ``image_grid_thw``). Shards are written atomically and
  only ever added, so concurrent builders and readers are safe and a changed image simply gets a new
  entry;
* ``digests-*.json`` map image paths to their digest with the file's size and mtime, so a trial hashes
  only files that changed since.

A trial's data loader (:class:`FeatureCollate`) then builds batches from cached features instead of
opening images and running the prefix; an image missing from the cache is computed on the fly. The
cache is used only when it gives the same result: nothing in the prefix is trained (no
``lora.adapt_vision``) and the images are not randomly augmented (:func:`cache_plan`); the prefix runs
in eval mode in both paths (:meth:`Backbone.pin_frozen_prefix_eval`), so losses match.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gapinit_ray.atomic import write_atomic
from gapinit_ray.data.samples import batch_prompt
from gapinit_ray.errors import GapinitError

FORMAT = 1
SHARD_GLOB = "shard-*.safetensors"
DIGEST_GLOB = "digests-*.json"
_CHUNK = 1 << 20


class FeatureCacheError(GapinitError):
    """A feature cache that cannot be used (corrupt shard, wrong width)."""


# ------------------------------------------------------------------------------------------ policy


def cache_plan(spec) -> tuple[bool, str]:
    """``(use the cache, why not)`` for one trial's spec."""
    if not spec.train.feature_cache:
        return False, "train.feature_cache is false"
    if spec.lora.adapt_vision:
        return False, "lora.adapt_vision trains the vision tower, so its outputs change every step"
    if spec.train.augment:
        return False, f"train.augment {spec.train.augment} makes every epoch's images different"
    return True, ""


# ------------------------------------------------------------------------------------- identities


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex, 32 chars): an image's identity in the cache."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:32]


def model_key(source_id: str, dtype: str, path: str | None = None) -> str:
    """Cache key of a backbone's vision prefix: weights identity, dtype, and for a local checkpoint
    directory the name, size and mtime of its files (a re-saved checkpoint gets a new key)."""
    files: list[tuple[str, int, int]] = []
    if path and Path(path).expanduser().is_dir():
        for f in sorted(Path(path).expanduser().rglob("*")):
            if f.is_file():
                st = f.stat()
                files.append((str(f.relative_to(Path(path).expanduser())), st.st_size, st.st_mtime_ns))
    blob = json.dumps({"format": FORMAT, "source": source_id, "dtype": dtype, "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def features_root(storage: str) -> Path:
    from gapinit_ray.data.resolve import cache_dir

    return cache_dir(storage) / "features"


class Digests:
    """Image path → content digest, remembered with the file's (size, mtime) so it is hashed once."""

    def __init__(self, known: dict[str, tuple[int, int, str]] | None = None) -> None:
        self.known = dict(known or {})
        self.new: dict[str, tuple[int, int, str]] = {}

    @classmethod
    def load(cls, cache: Path) -> Digests:
        known: dict[str, tuple[int, int, str]] = {}
        for f in sorted(cache.glob(DIGEST_GLOB)):
            try:
                known.update({k: tuple(v) for k, v in json.loads(f.read_text()).items()})
            except (OSError, ValueError):
                continue  # a digests file is only a shortcut: a bad one costs re-hashing, nothing else
        return cls(known)

    def of(self, path: str) -> str:
        st = os.stat(path)
        hit = self.known.get(path) or self.new.get(path)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = file_digest(path)
        self.new[path] = (st.st_size, st.st_mtime_ns, digest)
        return digest

    def save(self, cache: Path) -> None:
        if self.new:
            write_atomic(cache / f"digests-{uuid.uuid4().hex[:12]}.json", json.dumps(self.new))
            self.known.update(self.new)
            self.new = {}


# ------------------------------------------------------------------------------------------ store


@dataclass
class _Shard:
    path: Path
    offsets: list[int]
    extra_keys: list[str]
    handle: Any = None


class FeatureCache:
    """Read side of one model key's cache dir: ``get(digest)`` → (features, extras) or ``None``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.index: dict[str, tuple[int, int]] = {}  # digest -> (shard, row)
        self.shards: list[_Shard] = []
        self.refresh()

    def refresh(self) -> None:
        """Index every complete shard (temporaries start with ``.`` and are never matched)."""
        from safetensors import safe_open

        seen = {s.path for s in self.shards}
        for path in sorted(self.root.glob(SHARD_GLOB)):
            if path in seen:
                continue
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                    offsets = f.get_tensor("offsets").tolist()
                    extra_keys = [k for k in f.keys() if k.startswith("extra.")]  # noqa: SIM118
                digests = json.loads(meta["digests"])
            except Exception as exc:
                raise FeatureCacheError(
                    f"feature cache shard {path} is unreadable ({type(exc).__name__}: {exc}); delete it "
                    "and run again (missing features are recomputed)"
                ) from None
            k = len(self.shards)
            self.shards.append(_Shard(path, offsets, extra_keys))
            for row, digest in enumerate(digests):
                self.index.setdefault(digest, (k, row))

    def __contains__(self, digest: str) -> bool:
        return digest in self.index

    def __len__(self) -> int:
        return len(self.index)

    def get(self, digest: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        hit = self.index.get(digest)
        if hit is None:
            return None
        shard = self.shards[hit[0]]
        if shard.handle is None:
            from safetensors import safe_open

            shard.handle = safe_open(str(shard.path), framework="pt")  # memory-mapped, read lazily
        lo, hi = shard.offsets[hit[1]], shard.offsets[hit[1] + 1]
        feats = shard.handle.get_slice("features")[lo:hi]
        row = hit[1]
        extras = {
            k.removeprefix("extra."): shard.handle.get_slice(k)[row : row + 1][0] for k in shard.extra_keys
        }
        return feats, extras


def write_shard(root: Path, digests: Sequence[str], features: list[torch.Tensor], extras: list[dict]) -> Path:
    """One shard file (atomic): the features of ``digests`` concatenated, with their row offsets."""
    from safetensors.torch import save

    lengths = [int(f.shape[0]) for f in features]
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.long)
    tensors = {"features": torch.cat(features).contiguous(), "offsets": offsets}
    for key in extras[0] if extras else {}:
        tensors[f"extra.{key}"] = torch.stack([e[key] for e in extras]).contiguous()
    data = save(tensors, metadata={"format": str(FORMAT), "digests": json.dumps(list(digests))})
    return write_atomic(root / f"shard-{uuid.uuid4().hex[:16]}.safetensors", data)


# ------------------------------------------------------------------------------------------ build


@dataclass
class FeaturePayload:
    items: list[tuple[str, str, str]]  # (digest, image path, image id)
    batch_size: int


def _run_feature_shard(backbone, payload: FeaturePayload) -> dict[str, Any]:
    from gapinit_ray.data import load_image

    started = time.perf_counter()
    backbone.model.eval()
    feats: list[torch.Tensor] = []
    extras: list[dict] = []
    for lo in range(0, len(payload.items), payload.batch_size):
        chunk = payload.items[lo : lo + payload.batch_size]
        f, e = backbone.image_features([load_image(path, iid) for _, path, iid in chunk])
        feats += [x.cpu() for x in f]
        extras += [{k: v.cpu() for k, v in x.items()} for x in e]
    return {
        "digests": [d for d, _, _ in payload.items],
        "features": feats,
        "extras": extras,
        "seconds": time.perf_counter() - started,
    }


@dataclass
class BuildReport:
    root: str
    images: int  # distinct images the trials read
    computed: int  # of which computed now (the rest were cached)
    seconds: float

    def line(self, label: str) -> str:
        if not self.computed:
            return f"feature cache {label}: {self.images} images, all cached ({self.root})"
        return (
            f"feature cache {label}: computed {self.computed} of {self.images} images in {self.seconds:.1f} s "
            f"({self.root})"
        )


def build_feature_cache(
    storage: str,
    bspec,
    records: Iterable,
    *,
    backbone_path: str | None = None,
    use_ray: bool | None = None,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    batch_size: int = 32,
    shard_images: int = 512,
) -> BuildReport:
    """Compute the vision-prefix features of every image in ``records`` not yet cached; return where.

    Images are deduplicated by content; the work is split into shards run by ``workers`` Ray actors (one
    backbone each, a lost actor's shard retried) or in-process; every finished shard is written at once,
    so an interrupted build keeps what it finished.
    """
    from gapinit_ray.calibration_job import backbone_source_id, run_backbone_shards, shard_sizes

    started = time.perf_counter()
    root = features_root(storage) / model_key(
        backbone_source_id(bspec, backbone_path), bspec.dtype, backbone_path
    )
    root.mkdir(parents=True, exist_ok=True)
    digests = Digests.load(root)
    wanted: dict[str, tuple[str, str, str]] = {}
    for r in records:
        path = os.path.abspath(r.image_path)
        d = digests.of(path)
        wanted.setdefault(d, (d, path, str(r.image_id)))
    digests.save(root)
    cache = FeatureCache(root)
    todo = [item for d, item in wanted.items() if d not in cache]
    if todo:
        from gapinit_ray.raycompat import ray_initialized

        use_ray = ray_initialized() if use_ray is None else use_ray
        n = max(workers * 2 if use_ray else 1, -(-len(todo) // shard_images))
        payloads, lo = [], 0
        for s in shard_sizes(len(todo), n):
            payloads.append(FeaturePayload(todo[lo : lo + s], batch_size))
            lo += s
        stream = run_backbone_shards(
            bspec,
            backbone_path,
            _run_feature_shard,
            payloads,
            use_ray=use_ray,
            num_workers=workers,
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
            describe=lambda i: f"feature shard {i} (images {payloads[i].items[0][1]} …)",
        )
        for _, out in stream:
            write_shard(root, out["digests"], out["features"], out["extras"])
    return BuildReport(str(root), len(wanted), len(todo), time.perf_counter() - started)


# ---------------------------------------------------------------------------------- trial side


class FeatureCollate:
    """The trial's collate function with the cache: (image id, path, caption[, question]) samples →
    a :meth:`Backbone.build_feature_batch` batch; images missing from the cache are computed here."""

    def __init__(self, backbone, cache: FeatureCache, prompt: str | None, question_prompt: str | None = None):
        self.backbone, self.cache = backbone, cache
        self.prompt, self.question_prompt = prompt, question_prompt
        self.digests = Digests.load(cache.root)
        self._digest: dict[str, str] = {}  # image path -> content digest, resolved once per trial
        self.hits = self.misses = 0

    def _digest_of(self, path: str) -> str:
        if path not in self._digest:
            self._digest[path] = self.digests.of(os.path.abspath(path))
        return self._digest[path]

    def __call__(self, items):
        from gapinit_ray.data import load_image

        feats: list[torch.Tensor | None] = []
        extras: list[dict | None] = []
        missing = []
        for i, item in enumerate(items):
            got = self.cache.get(self._digest_of(item[1]))
            if got is None:
                missing.append(i)
                feats.append(None)
                extras.append(None)
            else:
                feats.append(got[0])
                extras.append(got[1])
        if missing:
            f, e = self.backbone.image_features([load_image(items[i][1], items[i][0]) for i in missing])
            for i, fi, ei in zip(missing, f, e, strict=True):
                feats[i], extras[i] = fi, ei
        self.hits += len(items) - len(missing)
        self.misses += len(missing)
        prompt = batch_prompt(self.backbone, items, self.prompt, self.question_prompt)
        return self.backbone.build_feature_batch(
            feats, extras, [item[2] for item in items], with_labels=True, prompt=prompt
        )
