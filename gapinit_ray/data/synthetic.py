"""Writing a synthetic shapes caption set to disk, reproducibly, idempotently and atomically.

Many Ray workers may ask for the same synthetic set at once, and a run may be killed mid-write,
so the set is built in a temporary sibling directory and renamed into place under a file lock,
and a manifest (the arguments plus a hash of every file) tells a later call that the directory
already holds exactly this set. See :mod:`gapinit_ray.data.shapes` for what the scenes and the
``pretrain`` / ``downstream`` variants look like.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from gapinit_ray.data._random import StableRandom
from gapinit_ray.data.calibration import largest_remainder
from gapinit_ray.data.shapes import VARIANTS, captions, render, sample_scene
from gapinit_ray.errors import DataError

GENERATOR_VERSION = 1  # bump whenever the output of the same arguments changes
MANIFEST = "manifest.json"
DATASET = "dataset.json"
IMAGES = "images"
SPLIT_NAMES = ("train", "val", "test")


def generate_synthetic(
    out_dir: str,
    *,
    variant: str = "pretrain",
    num_images: int = 512,
    seed: int = 0,
    image_size: int = 32,
    captions_per_image: int = 2,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
) -> str:
    """Render a shapes caption set into ``out_dir`` and return the path of its ``dataset.json``.

    The set is Karpathy format (``filepath="images"``, ``filename``, ``split``, ``sentences``,
    ``imgid``), so ``load_caption_set("karpathy", path, None)`` reads it; each entry also carries
    a ``scene`` with the drawn shapes' colours, centres and radii for tests and debugging. Ids are
    ``"<variant>-s<seed>-<index>"`` so sets of different variants or seeds never share an id.
    ``splits`` are the train/val/test fractions; the first images go to train, then val, test.

    Variants (details in :mod:`gapinit_ray.data.shapes`): ``pretrain`` is black-background
    red/green/blue/yellow circles, squares and triangles captioned "a small red circle on the
    left"; ``downstream`` switches to a white background, adds purple/orange stars and diamonds and
    phrases captions differently ("there is one red circle located in the left part of the
    picture"), a shift a pretrained captioner has to adapt to.

    Same arguments give byte-identical files (same Pillow/zlib build). If ``out_dir`` already holds
    a complete set for the same arguments, nothing is touched; a set for other arguments (or a
    damaged one) is replaced; a directory with anything else in it is refused. Concurrent callers
    (Ray workers) serialize on an empty ``.<name>.lock`` file next to ``out_dir``, which is left there.
    """
    args = _validate_args(out_dir, variant, num_images, seed, image_size, captions_per_image, splits)
    out = os.path.abspath(out_dir)
    dataset_path = os.path.join(out, DATASET)
    if _is_complete(out, args):
        return dataset_path
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    with _locked(os.path.join(parent, f".{name}.lock")):
        if _is_complete(out, args):  # another process finished it while we waited
            return dataset_path
        _check_replaceable(out)
        # os.mkdir (not mkdtemp, which forces mode 0700) so the set gets the usual umask permissions.
        tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        os.mkdir(tmp)
        try:
            _write_set(tmp, args)
            _swap_in(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dataset_path


def _validate_args(out_dir, variant, num_images, seed, image_size, captions_per_image, splits) -> dict:
    def integer(name: str, value, lo: int, hi: int | None = None) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < lo
            or (hi is not None and value > hi)
        ):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise DataError(
                f"generate_synthetic({out_dir}): {name} must be an integer {bound}, got {value!r}"
            )
        return value

    if variant not in VARIANTS:
        raise DataError(
            f"generate_synthetic({out_dir}): unknown variant {variant!r}; use one of {', '.join(VARIANTS)}"
        )
    integer("num_images", num_images, 1, 1_000_000)
    integer("seed", seed, -(2**63))
    integer("image_size", image_size, 32, 1024)
    integer("captions_per_image", captions_per_image, 1, 100)
    try:
        fractions = [float(f) for f in splits]
    except (TypeError, ValueError):
        fractions = []
    if (
        len(fractions) != len(SPLIT_NAMES)
        or not all(math.isfinite(f) and f >= 0 for f in fractions)
        or abs(math.fsum(fractions) - 1.0) > 1e-6
    ):
        raise DataError(
            f"generate_synthetic({out_dir}): splits must be 3 non-negative train/val/test fractions summing to 1, "
            f"got {splits!r}"
        )
    return {
        "variant": variant, "num_images": num_images, "seed": seed, "image_size": image_size,
        "captions_per_image": captions_per_image, "splits": fractions,
    }  # fmt: skip


def _write_set(root: str, args: dict) -> None:
    """Render every image and write images, dataset.json and, last, the manifest."""
    variant, size = args["variant"], args["image_size"]
    vocab = VARIANTS[variant]
    counts = largest_remainder(args["splits"], args["num_images"])
    split_of = [name for name, n in zip(SPLIT_NAMES, counts, strict=True) for _ in range(n)]
    os.mkdir(os.path.join(root, IMAGES))
    files: dict[str, bytes] = {}
    entries = []
    for i in range(args["num_images"]):
        # One stream per image: image i is the same whatever num_images is.
        rng = StableRandom("synthetic-shapes", GENERATOR_VERSION, variant, args["seed"], size, i)
        shapes = sample_scene(rng, vocab, size)
        texts = captions(rng, shapes, variant, args["captions_per_image"])
        imgid = f"{variant}-s{args['seed']}-{i:06d}"
        filename = f"{imgid}.png"
        buf = io.BytesIO()
        render(shapes, vocab, size).save(buf, format="PNG", compress_level=9, optimize=False)
        files[f"{IMAGES}/{filename}"] = buf.getvalue()
        first_sentid = i * args["captions_per_image"]
        entries.append({
            "filepath": IMAGES, "filename": filename, "imgid": imgid, "split": split_of[i],
            "sentids": [first_sentid + j for j in range(len(texts))],
            "sentences": [
                {"raw": t, "tokens": t.replace(":", "").replace(",", "").split(), "imgid": imgid, "sentid": first_sentid + j}
                for j, t in enumerate(texts)
            ],
            "scene": {"background": vocab.background, "shapes": [s.as_json(vocab) for s in shapes]},
        })  # fmt: skip
    dataset = {"dataset": f"synthetic-shapes-{variant}", "images": entries}
    files[DATASET] = (json.dumps(dataset, indent=1, sort_keys=True) + "\n").encode("utf-8")
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    manifest = {
        "generator": "gapinit_ray.data.synthetic", "version": GENERATOR_VERSION, "args": args,
        "num_files": len(files), "content_sha256": _content_hash(files.items()),
    }  # fmt: skip
    with open(os.path.join(root, MANIFEST), "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _content_hash(files) -> str:
    """sha256 over sorted ``relative-path <tab> sha256(bytes)`` lines."""
    digest = hashlib.sha256()
    for rel, data in sorted(files):
        digest.update(f"{rel}\t{hashlib.sha256(data).hexdigest()}\n".encode())
    return digest.hexdigest()


def _read_tree(root: str) -> Iterator[tuple[str, bytes]]:
    yield DATASET, _read(os.path.join(root, DATASET))
    for name in os.listdir(os.path.join(root, IMAGES)):
        yield f"{IMAGES}/{name}", _read(os.path.join(root, IMAGES, name))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _is_complete(out: str, args: dict) -> bool:
    """Whether ``out`` holds exactly the set for ``args``: manifest matches and every byte hashes right.

    Re-hashing costs a few milliseconds for these tiny images and catches files damaged after
    the rename (e.g. by a crash before they reached disk), which are then regenerated.
    """
    try:
        with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("version") != GENERATOR_VERSION or manifest.get("args") != args:
            return False
        files = list(_read_tree(out))
    except (OSError, ValueError, AttributeError):
        return False
    return len(files) == manifest.get("num_files") and _content_hash(files) == manifest.get("content_sha256")


def _check_replaceable(out: str) -> None:
    """Refuse to replace a directory that holds anything but a (stale) synthetic set."""
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out) or os.path.islink(out):
        raise DataError(
            f"generate_synthetic: {out} exists and is not a directory; pass a new or empty directory"
        )
    foreign = sorted(set(os.listdir(out)) - {MANIFEST, DATASET, IMAGES})
    if foreign:
        raise DataError(
            f"generate_synthetic: {out} holds files that are not part of a synthetic set (e.g. {foreign[0]}); "
            "pass a new or empty directory so nothing is overwritten"
        )


def _swap_in(tmp: str, out: str) -> None:
    """Move the finished set to ``out``; any old set is moved aside first, then deleted.

    At no point does ``out`` hold a partial set: it is either the old set, absent, or the new one.
    """
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    trash = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    old = os.path.join(trash, "set")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def _locked(lock_path: str) -> Iterator[None]:
    """An exclusive advisory lock, so concurrent workers build a set once rather than racing."""
    with open(lock_path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
