"""Names the spec accepts. Those that registries own come from :mod:`gapinit_ray.names` (cheap, no heavy
imports) so that `validate` can name the allowed values; the registries check that they agree
(tests/test_spec.py)."""

from __future__ import annotations

from gapinit_ray.names import CAPTION_METRICS, INIT_METHODS, POPE_METRICS, SCHEDULERS, VQA_METRICS

__all__ = [
    "CAPTION_METRICS",
    "INIT_METHODS",
    "PAPER_SEEDS",
    "POPE_METRICS",
    "SCHEDULERS",
    "STORAGE_SCHEMES",
    "TASKS",
    "TASK_KINDS",
    "VQA_METRICS",
    "check_known",
]

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
