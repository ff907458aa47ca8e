"""Caption sets as plain records, loaded from Karpathy- or COCO-format annotation files.

Gap-Init estimates its LoRA direction from image-caption pairs, and the sweep service fans those
pairs out to Ray workers, so a record is a small frozen value (ids and paths, no pixels). Loading
only parses JSON: it validates the structure thoroughly and fails with a :class:`DataError` that
names the file and the image id, but it never opens an image (that is :func:`check_images`' job),
so a driver can load 120k COCO records in a second.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from gapinit_ray.errors import DataError

FORMATS = ("karpathy", "coco")


@dataclass(frozen=True)
class CaptionRecord:
    """One image and all its reference captions.

    ``image_id`` is a string so COCO ids (ints), Flickr ``imgid`` s and synthetic ids share one
    type; it is unique within one caption set, not across sets (COCO and Flickr ids overlap), so
    code that mixes sets should key on ``image_path``.
    """

    image_id: str
    image_path: str
    captions: tuple[str, ...]
    split: str


def load_caption_set(
    fmt: str, annotations: str, images: str | None, split: str | None = None
) -> list[CaptionRecord]:
    """Parse a caption annotation file into records, checking it without opening any image.

    ``fmt="karpathy"``: a Karpathy split file (``dataset_coco.json``, ``dataset_flickr30k.json``
    or a synthetic set's ``dataset.json``). The image path is ``images/[filepath/]filename`` and
    the id is ``cocoid`` when present, else ``imgid``. ``split`` filters by the entries' ``split``;
    following the Karpathy convention, ``split="train"`` also returns the ``"restval"`` images
    (the 30k COCO val2014 images Karpathy moved to training); the records keep ``split="restval"``
    so callers can still tell them apart. ``split=None`` returns every entry in file order.

    ``fmt="coco"``: an official ``captions_<split><year>.json``. The whole file is one split, so
    ``split`` is a label, not a filter; when ``None`` it is read from the file name
    (``captions_val2017.json`` -> ``"val"``). Records come in ascending image id order.

    ``images`` is the image root; ``None`` means the annotation file's directory (which is where
    :func:`~gapinit_ray.data.generate_synthetic` lays its images out).
    """
    if fmt not in FORMATS:
        raise DataError(
            f"unknown caption-set format {fmt!r} for {annotations}; use one of {', '.join(FORMATS)}"
        )
    path = os.path.abspath(annotations)
    root = os.path.dirname(path) if images is None else os.path.abspath(images)
    data = _read_json(path, fmt)
    if images is not None and not os.path.isdir(root):
        raise DataError(
            f"image directory not found: {root} (for {path}); pass the folder that holds the images"
        )
    if fmt == "karpathy":
        return _load_karpathy(path, data, root, split)
    return _load_coco(path, data, root, split)


def _read_json(path: str, fmt: str) -> Any:
    if not os.path.isfile(path):
        raise DataError(f"annotation file not found: {path}; check the path of the {fmt} file")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            "re-download or regenerate the annotation file"
        ) from None
    except (ValueError, OSError) as e:  # undecodable bytes, unreadable file
        raise DataError(
            f"cannot read {path} as JSON ({_one_line(e)}); re-download or regenerate it"
        ) from None


def _expect_key(path: str, obj: Any, key: str, fmt: str, where: str) -> Any:
    """Fetch a required key, or say which key and which format were expected."""
    if not isinstance(obj, dict) or key not in obj:
        hint = _FORMAT_HINTS[fmt]
        other = "coco" if fmt == "karpathy" else "karpathy"
        if isinstance(obj, dict) and where == "top level" and _looks_like(obj, other):
            hint += f"; this looks like a {other}-format file, so pass fmt={other!r}"
        raise DataError(f"{path}: {where} is missing key {key!r} expected in the {fmt} format ({hint})")
    return obj[key]


_FORMAT_HINTS = {
    "karpathy": 'a Karpathy split file like dataset_coco.json: {"images": [{"filename", "split", '
    '"sentences": [{"raw"}], "cocoid" or "imgid"}]}',
    "coco": 'an official COCO captions file like captions_train2017.json: {"images": [{"id", '
    '"file_name"}], "annotations": [{"image_id", "caption"}]}',
}


def _looks_like(obj: dict, fmt: str) -> bool:
    if fmt == "coco":
        return "annotations" in obj
    images = obj.get("images")
    return (
        isinstance(images, list) and bool(images) and isinstance(images[0], dict) and "sentences" in images[0]
    )


def _expect_list(path: str, value: Any, key: str, fmt: str) -> list:
    if not isinstance(value, list):
        raise DataError(f"{path}: {key!r} must be a list in the {fmt} format, got {type(value).__name__}")
    return value


def _image_id(path: str, value: Any, where: str, what: str = "image id") -> str:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, str))
        or (isinstance(value, str) and not value.strip())
    ):
        raise DataError(f"{path}: {where} has {what} {value!r}; ids must be integers or non-empty strings")
    return str(value)


def _caption(path: str, value: Any, image_id: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            f"{path}: image id {image_id} has an empty caption ({where}: {value!r}); "
            "fix or remove that caption in the annotation file"
        )
    return " ".join(value.split())


def _load_karpathy(path: str, data: Any, root: str, split: str | None) -> list[CaptionRecord]:
    entries = _expect_list(
        path, _expect_key(path, data, "images", "karpathy", "top level"), "images", "karpathy"
    )
    if _looks_like(data, "coco") and not _looks_like(data, "karpathy"):
        raise DataError(
            f"{path}: has 'annotations' and no per-image 'sentences', so it is a COCO captions file, "
            "not the karpathy format; pass fmt='coco'"
        )
    records: list[CaptionRecord] = []
    first_entry: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"image entry #{i}"
        if not isinstance(entry, dict):
            raise DataError(
                f"{path}: {where} is a {type(entry).__name__}, expected an object (karpathy format)"
            )
        if "cocoid" in entry:
            image_id = _image_id(path, entry["cocoid"], where)
        else:
            image_id = _image_id(
                path, _expect_key(path, entry, "imgid", "karpathy", f"{where} (no 'cocoid')"), where
            )
        where = f"image entry #{i} (image id {image_id})"
        if image_id in first_entry:
            raise DataError(
                f"{path}: image id {image_id} appears twice (image entries #{first_entry[image_id]} and #{i}); "
                "image ids must be unique, remove the duplicate"
            )
        first_entry[image_id] = i
        filename = _expect_key(path, entry, "filename", "karpathy", where)
        entry_split = _expect_key(path, entry, "split", "karpathy", where)
        sentences = _expect_key(path, entry, "sentences", "karpathy", where)
        if not isinstance(filename, str) or not filename or not isinstance(entry_split, str):
            raise DataError(f"{path}: {where} needs a non-empty string 'filename' and a string 'split'")
        if not isinstance(sentences, list) or not sentences:
            raise DataError(
                f"{path}: image id {image_id} has no captions ('sentences' is empty); add captions or remove the image"
            )
        captions = []
        for j, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if raw is None and isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
                raw = " ".join(str(t) for t in sentence["tokens"])
            captions.append(_caption(path, raw, image_id, f"sentence #{j}"))
        filepath = entry.get("filepath") or ""
        image_path = os.path.normpath(os.path.join(root, str(filepath), filename))
        records.append(CaptionRecord(image_id, image_path, tuple(captions), entry_split))
    if split is None:
        return records
    wanted = {"train", "restval"} if split == "train" else {split}
    selected = [r for r in records if r.split in wanted]
    if not selected:
        present = ", ".join(sorted({r.split for r in records})) or "none"
        raise DataError(
            f"{path}: no images with split {split!r} (splits present: {present}); pass one of those"
        )
    return selected


def _load_coco(path: str, data: Any, root: str, split: str | None) -> list[CaptionRecord]:
    images = _expect_list(path, _expect_key(path, data, "images", "coco", "top level"), "images", "coco")
    annotations = _expect_list(
        path, _expect_key(path, data, "annotations", "coco", "top level"), "annotations", "coco"
    )
    if split is None:
        match = re.search(r"(train|val|test)", os.path.basename(path))
        if match is None:
            raise DataError(
                f"{path}: cannot tell the split from the file name; pass split= (e.g. 'train') for a COCO-format file"
            )
        split = match.group(1)
    files: dict[str, str] = {}
    sort_keys: dict[str, tuple] = {}
    for i, entry in enumerate(images):
        where = f"images entry #{i}"
        raw_id = _expect_key(path, entry, "id", "coco", where)
        image_id = _image_id(path, raw_id, where)
        file_name = _expect_key(path, entry, "file_name", "coco", f"{where} (image id {image_id})")
        if not isinstance(file_name, str) or not file_name:
            raise DataError(
                f"{path}: image id {image_id} has an empty or non-string 'file_name'; fix the images entry"
            )
        if image_id in files:
            raise DataError(
                f"{path}: image id {image_id} appears twice in 'images'; image ids must be unique, remove the duplicate"
            )
        files[image_id] = file_name
        sort_keys[image_id] = (0, raw_id, "") if isinstance(raw_id, int) else (1, 0, raw_id)
    captions: dict[str, list[str]] = {image_id: [] for image_id in files}
    for k, ann in enumerate(annotations):
        where = f"annotations entry #{k}"
        image_id = _image_id(path, _expect_key(path, ann, "image_id", "coco", where), where)
        if image_id not in captions:
            raise DataError(
                f"{path}: {where} refers to image id {image_id}, which is not in 'images'; "
                "the annotation file is inconsistent, re-download it"
            )
        raw = _expect_key(path, ann, "caption", "coco", f"{where} (image id {image_id})")
        captions[image_id].append(_caption(path, raw, image_id, where))
    records = []
    for image_id in sorted(files, key=sort_keys.__getitem__):
        if not captions[image_id]:
            raise DataError(
                f"{path}: image id {image_id} ({files[image_id]}) has no captions; "
                "add annotations for it or remove it from 'images'"
            )
        image_path = os.path.normpath(os.path.join(root, files[image_id]))
        records.append(CaptionRecord(image_id, image_path, tuple(captions[image_id]), split))
    return records


def _one_line(exc: BaseException) -> str:
    """Exception text squeezed onto one line, since the CLI prints errors as one line."""
    return " ".join(str(exc).split()) or type(exc).__name__
