"""Names that several modules and processes must spell the same way, defined once (no imports).

The spec (:mod:`gapinit_ray.spec.vocab`) accepts these names; the registries that implement them
(:mod:`gapinit_ray.inits.registry`, :mod:`gapinit_ray.schedulers`) are checked against them in the tests;
the results store, the sweep and the readers find files by them. Stop reasons have their own module
(:mod:`gapinit_ray.results.stop_reason`: the written form and its parser).
"""

from __future__ import annotations

from typing import Literal, get_args

# ------------------------------------------------------------------------------------------ metrics

CAPTION_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "spice")
# Question answering reports all of its kind's metrics (gapinit_ray.qa_metrics computes them).
VQA_METRICS = ("vqa_acc", "vqa_acc_yes_no", "vqa_acc_number", "vqa_acc_other")
POPE_METRICS = ("pope_acc", "pope_precision", "pope_recall", "pope_f1", "pope_yes_ratio")

#: The prefix of the in-task evaluation's metrics; a transfer set's metrics take its name instead.
VAL = "val"


def split_metric(split: str, metric: str) -> str:
    """The reported name of ``metric`` scored on ``split`` (``val`` or a transfer set): ``val_cider``."""
    return f"{split}_{metric}"


def val_metric(metric: str) -> str:
    """``cider`` -> ``val_cider``: the in-task evaluation's name of a metric."""
    return split_metric(VAL, metric)


def metric_of_val(name: str) -> str:
    """``val_cider`` -> ``cider`` (other names are returned as they are)."""
    return name.removeprefix(f"{VAL}_")


#: The metric the scheduler, reports and tables rank by unless told otherwise.
DEFAULT_METRIC = val_metric("cider")

# ------------------------------------------------------------------------------------ init methods

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

# -------------------------------------------------------------------------------------- schedulers

SchedulerType = Literal["fifo", "asha", "seed-group-asha"]
FIFO, ASHA, SEED_GROUP_ASHA = get_args(SchedulerType)
SCHEDULERS: tuple[str, ...] = get_args(SchedulerType)

# ------------------------------------------------------------------------------ storage layout
# Under ``<storage>/<sweep name>/`` (see gapinit_ray.sweep and the README's storage layout).

SPEC_FILE = "spec.json"  # the validated spec the sweep ran
SCHEDULER_STATE_FILE = "scheduler_state.json"  # seed-group ASHA's snapshot (gapinit_ray.seedgroup.state)
SCHEDULER_LOG_FILE = "scheduler_state.jsonl"  # seed-group ASHA's append-only event log after the snapshot
RESULTS_DIR = "results"  # the Parquet results store
TRAIN_DIR = "train"  # Ray Train runs, one per trial: checkpoints with the peft adapter
ADAPTER_DIR = "adapter"  # inside a checkpoint: the LoRA adapter in peft format
CAPTIONS_DIR = "captions"  # generated captions per trial and epoch
# Under ``<storage>/``: caches shared by the sweeps there.
CACHE_DIR = "_cache"
GAPS_DIR = "gaps"  # under CACHE_DIR: GapArtifacts by key
RAY_OUTPUT_FILE = (
    "ray_output.log"  # what Ray prints on the driver's stdout while a sweep runs, kept off the terminal
)
SEQUENTIAL_FILE = (
    "sequential.json"  # the sequential phase's rounds, looks and verdicts (gapinit_ray.sequential)
)
SEQUENTIAL_TUNE_PREFIX = "tune-seeds-"  # under the sweep dir: one Tune experiment per sequential round
