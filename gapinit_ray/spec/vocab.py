"""Names the spec accepts that registries own, listed here (cheap, no heavy imports) so that
`validate` can name the allowed values; the registries check that they agree (tests/test_spec.py)."""

from __future__ import annotations

INIT_METHODS = (
    "gap",
    "random",
    "gaussian",
    "pissa",
    "olora",
    "dora",
    "random-direction",
    "mica",
    "orthogonal",
    "eva",
    "corda",
    "lora_ga",
)
SCHEDULERS = ("fifo", "asha", "seed-group-asha")
TASKS = ("coco_caption", "vqa", "pope")
CAPTION_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "spice")
# Question answering reports all of its kind's metrics (gapinit_ray.qa_metrics computes them).
VQA_METRICS = ("vqa_acc", "vqa_acc_yes_no", "vqa_acc_number", "vqa_acc_other")
POPE_METRICS = ("pope_acc", "pope_precision", "pope_recall", "pope_f1", "pope_yes_ratio")
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
