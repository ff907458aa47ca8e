"""The calibration sample Gap-Init estimates its modality-gap direction from, and its content hash.

The paper mixes sources by fraction (Table 10: 50% COCO + 50% Flickr30k). Every trial of a sweep
that shares a calibration spec must see exactly the same pairs, on any node, so sampling is a pure
function of (sources, num_samples, seed) and the set is identified by a hash of its content
(ids, captions and image bytes) that names the cached statistics.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Iterable, Sequence

from gapinit_ray.data._random import StableRandom
from gapinit_ray.data.records import CaptionRecord
from gapinit_ray.errors import DataError

FRACTION_TOLERANCE = 1e-6


def largest_remainder(fractions: Sequence[float], total: int) -> list[int]:
    """Integer counts proportional to ``fractions`` that sum to exactly ``total``.

    Floors first, then hands the leftover units to the largest fractional parts (ties to the
    earlier entry), so 50/50 of 101 is 51/50 and never 50/50 or 51/51.
    """
    exact = [f * total for f in fractions]
    counts = [math.floor(x) for x in exact]
    leftover = total - sum(counts)
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: max(0, leftover)]:
        counts[i] += 1
    return counts


def _describe(index: int, records: Sequence[CaptionRecord]) -> str:
    """A human name for a source: records carry no set name, so use where their images live."""
    if not records:
        return f"source #{index} (empty)"
    try:
        where = os.path.commonpath([os.path.dirname(r.image_path) for r in records])
    except ValueError:  # mixed drives / relative paths
        where = os.path.dirname(records[0].image_path)
    splits = ",".join(sorted({r.split for r in records}))
    return f"source #{index} (images under {where}, split {splits})"


def sample_calibration(
    sources: Sequence[tuple[Sequence[CaptionRecord], float]], num_samples: int, seed: int
) -> list[tuple[CaptionRecord, str]]:
    """Draw ``num_samples`` distinct images with one caption each, mixing sources by fraction.

    Per-source counts come from :func:`largest_remainder`, so they sum to ``num_samples``
    exactly; a source too small for its share is an error rather than silently fewer samples.
    Each source is sorted by ``(image_id, image_path)`` before sampling and draws from its own
    stream keyed by ``(seed, source index)``, so the result does not depend on the order records
    were loaded in, and changing one source's records does not reshuffle another's. The output is
    source by source, each in that sorted order. Images are identified by path: two sources that
    share an image file are rejected, since ids alone can collide across sets (COCO vs Flickr).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise DataError(f"calibration: num_samples must be a positive integer, got {num_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"calibration: seed must be an integer, got {seed!r}")
    if not sources:
        raise DataError("calibration: no sources given; pass at least one (records, fraction) pair")
    fractions = []
    for i, source in enumerate(sources):
        if not isinstance(source, (tuple, list)) or len(source) != 2:
            raise DataError(
                f"calibration: source #{i} must be a (records, fraction) pair, got {type(source).__name__}"
            )
        fraction = source[1]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise DataError(
                f"calibration: fraction of source #{i} must be a number in [0, 1], got {fraction!r}"
            )
        fractions.append(float(fraction))
    if abs(math.fsum(fractions) - 1.0) > FRACTION_TOLERANCE:
        raise DataError(
            f"calibration: source fractions {fractions} sum to {math.fsum(fractions):.6g}, not 1; "
            "adjust them so they sum to 1 (e.g. 0.5 COCO + 0.5 Flickr)"
        )
    _reject_shared_images(sources)
    counts = largest_remainder(fractions, num_samples)
    picked: list[tuple[CaptionRecord, str]] = []
    for i, ((records, _), count) in enumerate(zip(sources, counts, strict=True)):
        if count > len(records):
            raise DataError(
                f"calibration asks for {count} samples from {_describe(i, records)} but it has only "
                f"{len(records)} images; lower num_samples or that source's fraction, or add images"
            )
        if count == 0:
            continue
        ordered = sorted(records, key=lambda r: (r.image_id, r.image_path))
        rng = StableRandom("calibration", seed, i)
        chosen = sorted(rng.sample_indices(len(ordered), count))
        for k in chosen:
            record = ordered[k]
            if not record.captions:
                raise DataError(
                    f"calibration: image id {record.image_id} ({record.image_path}) has no captions; "
                    "load records with load_caption_set, which rejects such images"
                )
            picked.append((record, rng.choice(record.captions)))
    return picked


def _reject_shared_images(sources: Sequence[tuple[Sequence[CaptionRecord], float]]) -> None:
    owner: dict[str, tuple[int, str]] = {}
    for i, (records, _) in enumerate(sources):
        for r in records:
            if not isinstance(r, CaptionRecord):
                raise DataError(
                    f"calibration: source #{i} holds a {type(r).__name__}, expected CaptionRecord"
                )
            if r.image_path in owner:
                j, other_id = owner[r.image_path]
                raise DataError(
                    f"calibration: image {r.image_path} (image id {r.image_id}) appears in source #{i} and "
                    f"(as image id {other_id}) in source #{j}; calibration images must be distinct, pass disjoint sources"
                )
            owner[r.image_path] = (i, r.image_id)


_HASH_CACHE: dict[tuple, str] = {}
_HASH_CACHE_LOCK = threading.Lock()
_HASH_CACHE_MAX = 200_000


def _file_sha256(path: str, image_id: str) -> str:
    """sha256 of a file's bytes, cached per (path, inode, size, mtime, ctime) within this process."""
    try:
        st = os.stat(path)
    except OSError:
        raise DataError(
            f"image file not found: {path} (image id {image_id}); cannot hash the calibration set, "
            "re-download or regenerate the data set"
        ) from None
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _HASH_CACHE_LOCK:
        cached = _HASH_CACHE.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise DataError(
            f"cannot read image {path} (image id {image_id}): {e.strerror}; check its permissions"
        ) from None
    value = digest.hexdigest()
    with _HASH_CACHE_LOCK:
        if len(_HASH_CACHE) >= _HASH_CACHE_MAX:
            _HASH_CACHE.clear()
        _HASH_CACHE[key] = value
    return value


def calibration_set_hash(pairs: Iterable[tuple[CaptionRecord, str]]) -> str:
    """sha256 hex over the ordered (image_id, caption, sha256 of the image bytes) triples.

    Hashing the pixels' bytes rather than paths means a moved data set keeps its cache entry and a
    silently re-encoded image invalidates it. Triples are JSON-encoded, one per line, so no two
    different sets can serialize to the same byte stream.
    """
    digest = hashlib.sha256()
    for record, caption in pairs:
        file_hash = _file_sha256(record.image_path, record.image_id)
        digest.update(json.dumps([record.image_id, caption, file_hash], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
