"""Names the spec accepts that no registry owns (tasks, storage schemes, the paper's seeds); the
registries' names (init methods, schedulers, metrics) are in :mod:`gapinit_ray.names`."""

from __future__ import annotations

TASKS = ("coco_caption", "vqa", "pope")
# What each task trains on and evaluates on (a source's `kind`: caption, vqa or pope). POPE is an
# evaluation set: a pope sweep fine-tunes on VQA questions (or captions) and evaluates on POPE.
TASK_KINDS = {
    "coco_caption": {"train": ("caption",), "eval": ("caption",)},
    "vqa": {"train": ("vqa",), "eval": ("vqa",)},
    "pope": {"train": ("vqa", "caption"), "eval": ("pope",)},
}
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az")
PAPER_SEEDS = (42, 123, 2024, 999, 7)


def check_known(what: str, value: str, known: tuple[str, ...]) -> str:
    """``value`` when it is one of ``known``; else a ValueError naming what it should be."""
    if value not in known:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(known)}")
    return value
