"""Opening images, and checking a whole caption set's images up front.

A missing or corrupt image found by a Ray worker an hour into a sweep wastes the sweep, so the
driver calls :func:`check_images` once before fanning out; both it and :func:`load_image` turn
PIL's exceptions into a one-line :class:`DataError` naming the path and the image id.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from gapinit_ray.data.records import CaptionRecord, _one_line
from gapinit_ray.errors import DataError

_SHOWN = 3  # offenders spelled out in check_images' message; the rest are only counted

# What PIL raises for unreadable / truncated / hostile files (UnidentifiedImageError is an OSError;
# some decoders raise SyntaxError or ValueError on malformed headers).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image(record_or_path: CaptionRecord | str | os.PathLike, image_id: str | None = None) -> Image.Image:
    """Open and fully decode an image as RGB.

    Accepts a :class:`CaptionRecord` (its path and id are used) or a path plus an optional id for
    the error message. Decoding happens here, not lazily later, so a corrupt file fails at this
    call with its name rather than deep inside a processor.
    """
    if isinstance(record_or_path, CaptionRecord):
        path, image_id = record_or_path.image_path, record_or_path.image_id
    else:
        path = os.fspath(record_or_path)
    problem = _problem(path, image_id)
    if isinstance(problem, str):
        raise DataError(problem + "; " + _ADVICE)
    return problem


_ADVICE = "re-download or regenerate the data set, or remove the image from the annotation file"


def _problem(path: str, image_id: str | None) -> Image.Image | str:
    """The decoded RGB image, or a one-line description of why it cannot be used."""
    who = f"(image id {image_id})" if image_id is not None else "(no image id given)"
    if not os.path.exists(path):
        return f"image file not found: {path} {who}"
    if not os.path.isfile(path):
        return f"image path is not a file: {path} {who}"
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except _DECODE_ERRORS as e:
        return f"corrupt or unreadable image: {path} {who}: {_one_line(e)}"


def _check_one(record: CaptionRecord) -> str | None:
    # Returns no pixels, so pending futures do not pile up decoded images on big sets.
    problem = _problem(record.image_path, record.image_id)
    return problem if isinstance(problem, str) else None


def check_images(records: Sequence[CaptionRecord], *, max_workers: int = 4) -> None:
    """Decode every record's image once, in threads, and raise one DataError listing the bad ones.

    PIL releases the GIL while decoding, so threads give real parallelism without the cost of
    processes. The first few offenders (in record order, so the message is reproducible) and the
    total count go into a single line.
    """
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise DataError(f"check_images: max_workers must be a positive integer, got {max_workers!r}")
    records = list(records)
    if not records:
        return
    with ThreadPoolExecutor(max_workers=min(max_workers, len(records))) as pool:
        results = pool.map(_check_one, records)
        problems = [p for p in results if p is not None]
    if not problems:
        return
    shown = "; ".join(problems[:_SHOWN])
    more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    raise DataError(f"{shown}{more} ({len(problems)} of {len(records)} images unusable); {_ADVICE}")
