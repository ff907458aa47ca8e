"""The sweep spec: one YAML file describes a whole sweep.

The spec is validated once, at the edge, into typed pydantic models. Unknown keys are errors; every bad
value is reported with the file, the field path (and YAML line) and what is allowed, all errors at once.
Stages receive the typed sub-models they need, never the raw YAML.

A sweep is the product of the ``search`` axes (grid lists, and ``choice`` / ``uniform`` /
``loguniform`` for tuned values) over the base values given in the other sections. An axis is named by
the dotted path of the field it sets (``train.lr``, ``lora.rank``); ``seed``, ``init`` and
``backbone`` are short names for ``seed``, ``lora.init`` and the backbone list.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gapinit_ray.errors import SpecError

# --------------------------------------------------------------------------------------------------
# Names that registries own. They are listed here (cheap, no heavy imports) so that `validate` can
# name the allowed values; the registries check that they agree (tests/test_spec.py).

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

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class _Loader(yaml.SafeLoader):
    """Safe YAML loading that also reads ``1e-4`` as a float (YAML 1.1 needs ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """YAML says mapping keys are unique, and PyYAML silently keeps the last one: in a spec a second
    ``lora:`` or ``name:`` is almost always a paste mistake that changes the experiment, so refuse it."""
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            seen = first.get(key)
        except TypeError:  # an unhashable key: the mapping constructor reports it
            continue
        if seen is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen + 1}); keys must be unique: merge the two, "
                "or remove one",
                key_node.start_mark,
            )
        first[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def yaml_load(text: str) -> Any:
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------- backbones


class BackboneSpec(_Strict):
    """One backbone of the sweep: a tiny preset, or a family loaded from a local path / hub id."""

    name: str = Field(description="preset (tiny-blip2, ...) or family (blip2, qwen2_vl, gemma3)")
    path: str | None = Field(None, description="local checkpoint dir or hub id (families need one)")
    revision: str | None = Field(None, description="hub revision / commit, recorded in cache keys")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    pretrain: bool = Field(
        True,
        description="tiny presets only: adapt the cached synthetic-caption pretraining of the preset "
        "(a random tiny model has no pretrained geometry for Gap-Init to find)",
    )

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from gapinit_ray.backbones import known_backbones

        if v not in known_backbones():
            raise ValueError(f"unknown backbone {v!r}; known: {', '.join(known_backbones())}")
        return v

    @model_validator(mode="after")
    def _family_needs_path(self) -> BackboneSpec:
        if not self.name.startswith("tiny-") and not self.path:
            raise ValueError(
                f"backbone family {self.name!r} needs `path`: a local checkpoint dir or a hub id "
                "available on the cluster (e.g. Salesforce/blip2-opt-2.7b)"
            )
        return self

    @property
    def key(self) -> str:
        """Short id used in trial names and result columns."""
        return self.name if not self.path else f"{self.name}:{Path(self.path).name}"


# --------------------------------------------------------------------------------------------- data


class SourceSpec(_Strict):
    """A data set: Karpathy json, COCO captions json + image dir, VQA questions + annotations json (VQAv2,
    OK-VQA), POPE json lines, or the synthetic generator (captions, or VQA / POPE questions about them)."""

    format: Literal["karpathy", "coco", "vqa", "pope", "synthetic"]
    annotations: str | None = Field(
        None, description="karpathy/coco: the annotation json; vqa: the annotations json; pope: the .jsonl"
    )
    questions: str | None = Field(None, description="vqa: the questions json")
    images: str | None = Field(None, description="karpathy/coco/vqa/pope: the image root directory")
    image_template: str = Field(
        "COCO_{data_subtype}_{image_id:012d}.jpg",
        description="vqa: image file name under `images` ({image_id}, {data_subtype} of the questions "
        "file, {split})",
    )
    split: str | None = Field(None, description="coco/vqa/pope formats: which split this file is")
    content: Literal["caption", "vqa", "pope"] = Field(
        "caption", description="synthetic only: captions, or VQA / POPE questions about the same images"
    )
    variant: Literal["pretrain", "restyle", "downstream"] = Field(
        "downstream",
        description="synthetic only: pretrain (what tiny presets are pretrained on), restyle (the same "
        "images in a new caption style), downstream (new colours, shapes, background and style)",
    )
    num_images: int = Field(512, ge=8, description="synthetic only")
    image_size: int = Field(32, ge=32, le=1024, description="synthetic only")
    seed: int = Field(0, description="synthetic only: generator seed")
    captions_per_image: int = Field(
        2, ge=1, le=100, description="synthetic only: captions per image (each one training sample)"
    )

    @model_validator(mode="after")
    def _paths(self) -> SourceSpec:
        if self.format != "synthetic":
            needed = (
                ("questions", "annotations", "images") if self.format == "vqa" else ("annotations", "images")
            )
            missing = [f for f in needed if not getattr(self, f)]
            if missing:
                raise ValueError(f"format {self.format!r} needs {' and '.join(missing)}")
        if self.format in ("coco", "vqa", "pope") and not self.split:
            raise ValueError(
                f"format {self.format!r} needs `split` (train/val/test): one annotation file is one split"
            )
        if self.format != "synthetic" and self.content != "caption":
            raise ValueError("`content` is for synthetic sources; the format says what a file holds")
        return self

    @property
    def kind(self) -> str:
        """What the source's records are: ``caption``, ``vqa`` or ``pope``."""
        if self.format == "synthetic":
            return self.content
        return {"karpathy": "caption", "coco": "caption"}.get(self.format, self.format)


class SplitRef(_Strict):
    """Which source and split a stage reads, optionally a fixed-size subset."""

    source: str
    split: Literal["train", "val", "test"] = "train"
    limit: int | None = Field(None, ge=1, description="use only the first N images (stable order)")


class CalibrationSourceRef(_Strict):
    source: str
    split: Literal["train", "val", "test"] = "train"
    fraction: float = Field(1.0, gt=0.0, le=1.0)


class DataSpec(_Strict):
    sources: dict[str, SourceSpec]
    train: SplitRef
    val: SplitRef
    test: SplitRef | None = None

    @model_validator(mode="after")
    def _refs(self) -> DataSpec:
        for stage in ("train", "val", "test"):
            ref = getattr(self, stage)
            if ref is not None and ref.source not in self.sources:
                raise ValueError(
                    f"data.{stage}.source {ref.source!r} is not in data.sources "
                    f"(defined: {', '.join(self.sources) or 'none'})"
                )
        return self


# -------------------------------------------------------------------------------------- calibration


class SpotSpec(_Strict):
    """SPOT-Gap (paper App. C). The paper gives no defaults for k, α_sem, α_geom; these are ours."""

    enabled: bool = True
    k: int = Field(10, ge=1, description="neighbourhood size of the kNN dispersion and smoothing")
    alpha_sem: float = Field(1.0, ge=0.0)
    alpha_geom: float = Field(1.0, ge=0.0)
    neighbor_space: Literal["gap", "vision"] = Field(
        "gap",
        description="space in which N_k(i) is found for smoothing: the per-sample gap vectors "
        "(default) or the paired vision features; the paper does not say",
    )


class CalibrationSpec(_Strict):
    sources: list[CalibrationSourceRef] = Field(min_length=1)
    num_samples: int = Field(256, ge=2, description="calibration pairs (paper: 256)")
    seed: int = 0
    target_modules: list[str] | None = Field(
        None, description="module names to hook; default: the LoRA targets / the backbone's defaults"
    )
    residual_stream: bool = Field(
        True, description="also record each layer's hidden state (what init_options.space 'layer' uses)"
    )
    passes: Literal["separate", "joint"] = Field(
        "separate",
        description="separate (the paper's, §4.2 / Alg. 1 lines 5-6): z_v from an image-only pass, z_t "
        "from a text-only pass; joint: both from one image+caption pass (caption tokens attend to the image)",
    )
    pooling: Literal["mean"] = "mean"
    spot: SpotSpec = SpotSpec()
    batch_size: int = Field(16, ge=1)
    workers: int = Field(1, ge=1, description="Ray workers that shard the forward passes")

    @model_validator(mode="after")
    def _fractions(self) -> CalibrationSpec:
        total = sum(s.fraction for s in self.sources)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"calibration.sources fractions sum to {total:g}; they must sum to 1")
        return self


# --------------------------------------------------------------------------------------------- lora


class LayerSelectionSpec(_Strict):
    """Which LM layers get adapters: `naive` = the top-k layers, `gg-safe` = top-k by SPOT-Gap score."""

    selection: Literal["naive", "gg-safe", "all"] = "naive"
    top_k: int = Field(6, ge=1, description="paper: top-6 LM layers")


class InitOptions(_Strict):
    gap_source: Literal["mean", "spot"] = Field("spot", description="which gap sets B[:,0] (gap init)")
    noise_eps: float = Field(0.0, ge=0.0, description="g' = normalize(g + ε·η), paper App. E")
    space: Literal["layer", "module", "residual"] = Field(
        "layer",
        description="layer (the paper's recipe, §4.2 / Alg. 1): each module gets its decoder layer's "
        "hidden-state gap g^(l) where its output is in the hidden space (d_out = d_model), else its own "
        "output gap (recorded per module in the init report); module: every module its own output gap; "
        "residual: the layer gap only, refusing modules with d_out != d_model",
    )
    norm: float | Literal["match-default"] | None = Field(
        None,
        description="scale of B[:,0] for gap/random-direction: None = unit (paper), a number c, or "
        "'match-default' = the Frobenius norm of peft's default A",
    )
    eva_rho: float = Field(
        1.0,
        ge=1.0,
        description="eva: peft EvaConfig.rho; 1 = rank r on every module (the same budget as every other "
        "arm), > 1 = peft's redistribution of the r·modules budget by explained variance (peft default 2)",
    )
    corda_method: Literal["ipm", "kpm"] = Field(
        "ipm", description="corda: instruction-previewed (top-r, peft's default) or knowledge-preserved"
    )
    loraga_direction: Literal["ArBr", "A2rBr", "ArB2r", "random"] = Field(
        "ArB2r", description="lora_ga: peft LoraGAConfig.direction (default ArB2r)"
    )
    loraga_scale: Literal["stable", "weight_svd", "gd_scale", "unit"] = Field(
        "stable", description="lora_ga: peft LoraGAConfig.scale (default stable)"
    )


class LoraSpec(_Strict):
    rank: int = Field(1, ge=1)
    alpha: float | None = Field(None, gt=0, description="None = 2 × rank (paper: r=1 α=2, r=8 α=16)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="default: the backbone family's defaults")
    adapt_vision: bool = Field(False, description="also adapt the vision tower (never the Q-Former)")
    layers: LayerSelectionSpec = LayerSelectionSpec()
    init: str = "gap"
    init_options: InitOptions = InitOptions()

    @field_validator("init")
    @classmethod
    def _init_known(cls, v: str) -> str:
        if v not in INIT_METHODS:
            raise ValueError(f"unknown init method {v!r}; known: {', '.join(INIT_METHODS)}")
        return v

    @model_validator(mode="after")
    def _orthogonal_rank(self) -> LoraSpec:
        if self.init == "orthogonal" and self.rank % 2:
            raise ValueError(
                f"lora.init 'orthogonal' needs an even lora.rank (peft splits the rows of one r×r orthogonal "
                f"matrix between A and B); got rank {self.rank}: use rank 2, or another init at rank 1"
            )
        return self

    @property
    def effective_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank


# -------------------------------------------------------------------------------------------- train


class ZeroSpec(_Strict):
    stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: Literal["none", "cpu"] = "none"
    offload_param: Literal["none", "cpu"] = "none"

    @model_validator(mode="after")
    def _offload(self) -> ZeroSpec:
        if self.offload_param != "none" and self.stage != 3:
            raise ValueError("offload_param needs ZeRO stage 3")
        if self.offload_optimizer != "none" and self.stage == 0:
            raise ValueError("offload_optimizer needs ZeRO stage 1, 2 or 3")
        return self


class TrainSpec(_Strict):
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(32, ge=1, description="per-worker micro batch")
    grad_accum: int = Field(2, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPU, fp32 on CPU"
    )
    zero: ZeroSpec = ZeroSpec()
    report_every: Literal["epoch"] | Annotated[int, Field(ge=1)] = Field(
        "epoch", description="'epoch' or every N optimizer steps"
    )
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap for smoke runs")
    prompt: str | None = Field(None, description="text between image and caption; default: the family's")
    question_prompt: str | None = Field(
        None,
        description="vqa/pope: prompt template with {question}, between image and answer; default: the "
        "family's (BLIP-2: 'Question: {question} Short answer:')",
    )
    augment: list[Literal["hflip", "crop"]] = Field(
        [],
        description="random training-image augmentation: hflip (p=0.5), crop (random 80-100% area crop); "
        "seeded by the trial seed. Turns the feature cache off (the images differ every epoch)",
    )
    feature_cache: bool = Field(
        True,
        description="compute the frozen vision prefix's outputs once per sweep and train from them; "
        "off by itself with lora.adapt_vision or augment",
    )

    @field_validator("augment")
    @classmethod
    def _unique_augment(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"augment {v} lists a transform twice")
        return v

    @field_validator("question_prompt")
    @classmethod
    def _has_question(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                text = v.format(question="Q")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(
                    f"question_prompt {v!r}: only the field {{question}} is allowed ({e})"
                ) from None
            if "Q" not in text:
                raise ValueError(f"question_prompt {v!r} must contain {{question}}")
        return v


# ----------------------------------------------------------------------------------------- evaluate


class GenerationSpec(_Strict):
    num_beams: int = Field(1, ge=1)
    max_new_tokens: int = Field(30, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    length_penalty: float = 1.0
    repetition_penalty: float = Field(1.0, gt=0)


class EvalSpec(_Strict):
    metrics: list[str] = Field(["bleu4", "meteor", "rouge_l", "cider"], min_length=1)
    final_metrics: list[str] = Field(
        default_factory=list,
        description="caption metrics computed only at a trial's last report, not at every epoch (METEOR "
        "and SPICE each start a Java process per evaluation); trials stopped early have none",
    )
    java_max_concurrent: int | None = Field(
        None,
        ge=1,
        description="at most this many METEOR / SPICE scorings at once per machine, across all trials "
        "(each runs a JVM of ~1 GiB; an evaluation waits for a free slot); none: no limit",
    )
    split: Literal["val", "test"] = "val"
    subset: int | None = Field(None, ge=1, description="evaluate a fixed subset of N images")
    batch_size: int = Field(16, ge=1)
    generation: GenerationSpec = GenerationSpec()
    transfer: dict[str, SplitRef] = Field(
        default_factory=dict,
        description="zero-shot evaluations on other data, never trained on: name -> {source, split, limit}; "
        "metrics reported as <name>_<metric> (e.g. flickr30k_cider)",
    )

    @field_validator("transfer")
    @classmethod
    def _transfer_names(cls, v: dict[str, SplitRef]) -> dict[str, SplitRef]:
        for name in v:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", name) or name in ("train", "val"):
                raise ValueError(
                    f"eval.transfer name {name!r}: use lower-case letters, digits and '_' (not 'train' or "
                    "'val'); it prefixes the metric names"
                )
        return v

    @field_validator("metrics", "final_metrics")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in CAPTION_METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {', '.join(bad)}; known: {', '.join(CAPTION_METRICS)}")
        return v


# ------------------------------------------------------------------------------------ search space


class Choice(_Strict):
    choice: list[Any] = Field(min_length=1)


class Uniform(_Strict):
    uniform: tuple[float, float]


class LogUniform(_Strict):
    loguniform: tuple[float, float]


Axis = list[Any] | Choice | Uniform | LogUniform
_SAMPLERS = {"choice": Choice, "uniform": Uniform, "loguniform": LogUniform}
AXIS_ALIASES = {"init": "lora.init", "seed": "seed", "backbone": "backbone"}
_AXIS_HELP = (
    "an axis is a list of values (grid) or one of {choice: [...]}, {uniform: [lo, hi]}, "
    "{loguniform: [lo, hi]}"
)


def _parse_axis(name: str, value: Any) -> Axis:
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _SAMPLERS:
        kind = next(iter(value))
        try:
            return _SAMPLERS[kind].model_validate(value)
        except ValidationError as e:
            raise ValueError(f"axis {name!r}: {kind} {e.errors()[0]['msg']}") from None
    raise ValueError(f"axis {name!r}: {_AXIS_HELP}; got {value!r}")


class SearchSpec(_Strict):
    """The search space. Every key other than `num_samples` / `sample_seed` is an axis named by the
    dotted field it sets (`train.lr`, `lora.rank`; short names `seed`, `init`, `backbone`): a list is
    a grid axis, `choice` / `uniform` / `loguniform` are sampled `num_samples` times."""

    axes: dict[str, Axis] = Field(default_factory=dict)
    cases: list[dict[str, Any]] = Field(
        default_factory=list,
        description="explicit configurations (axis -> value) crossed with the grid, for sweeps that are "
        "not a full grid, e.g. paper Table 2: [{init: random, lora.rank: 8}, {init: gap}]",
    )
    num_samples: int = Field(1, ge=1, description="draws of the sampled (non-grid) axes")
    sample_seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _collect_axes(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        own = {"num_samples", "sample_seed", "cases"}
        axes: dict[str, Any] = {}

        def flatten(prefix: str, node: dict) -> None:
            # `train: {lr: [...]}` and `train.lr: [...]` name the same axis
            for k, v in node.items():
                name = f"{prefix}{k}"
                if isinstance(v, dict) and not (len(v) == 1 and next(iter(v)) in _SAMPLERS):
                    flatten(f"{name}.", v)
                else:
                    axes[name] = v

        flatten("", dict(data.get("axes") or {}))
        flatten("", {k: v for k, v in data.items() if k not in own | {"axes"}})
        return {**{k: v for k, v in data.items() if k in own}, "axes": axes}

    @field_validator("axes", mode="before")
    @classmethod
    def _axes(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        return {str(k): _parse_axis(str(k), a) for k, a in v.items()}


# ----------------------------------------------------------------------------------------- schedule


class SchedulerSpec(_Strict):
    type: Literal["fifo", "asha", "seed-group-asha"] = "seed-group-asha"
    metric: str = "val_cider"
    mode: Literal["max", "min"] = "max"
    time_attr: Literal["epoch"] = "epoch"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="default: train.epochs")


class ResourcesSpec(_Strict):
    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(
        1, ge=0, description="Tune retries of a trial that failed (an error, or a Train run that gave up)"
    )
    worker_restarts: int = Field(
        3,
        ge=0,
        description="Ray Train restarts of a trial's worker group from its latest checkpoint (a worker "
        "died or raised) within one Train run, before the run gives up; they use no Tune retry",
    )


class LoggerSpec(_Strict):
    """One experiment tracker the sweep driver feeds (gapinit_ray/trackers.py); a bare name in the
    ``loggers`` list is ``{type: name}``."""

    type: Literal["mlflow", "tensorboard", "wandb"]
    tracking_uri: str | None = Field(
        None, description="mlflow: default MLFLOW_TRACKING_URI, else a SQLite store under the sweep dir"
    )
    experiment: str | None = Field(
        None, description="mlflow experiment / wandb project (default: sweep name)"
    )
    mode: Literal["offline", "online"] = Field("offline", description="wandb: offline unless online")

    @model_validator(mode="after")
    def _installed(self) -> LoggerSpec:
        from gapinit_ray.trackers import missing_package

        hint = missing_package(self.type)
        if hint:
            raise ValueError(f"logger {self.type!r} needs its package: {hint}")
        return self


# ---------------------------------------------------------------------------------------- the sweep


class SweepSpec(_Strict):
    name: str
    storage: str = Field(description="results root: a local dir or a pyarrow filesystem URI (s3://...)")
    seed: int = Field(42, description="trial seed; usually a search axis")
    backbones: list[BackboneSpec] = Field(min_length=1)
    task: str = "coco_caption"
    data: DataSpec
    calibration: CalibrationSpec
    lora: LoraSpec = LoraSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: ResourcesSpec = ResourcesSpec()
    loggers: list[LoggerSpec] = Field(
        default_factory=list, description="experiment trackers: mlflow, tensorboard, wandb (none by default)"
    )

    @field_validator("loggers", mode="before")
    @classmethod
    def _logger_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"type": x} if isinstance(x, str) else x for x in v]
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if ".." in v or "/" in v or "\\" in v or not _NAME_RE.match(v):
            raise ValueError(
                "sweep name must be 1-100 characters of letters, digits, '.', '_', '-' "
                "(no path separators or '..'), starting with a letter or digit"
            )
        return v

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        if v not in TASKS:
            raise ValueError(f"unknown task {v!r}; known: {', '.join(TASKS)}")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        if "://" in v:
            scheme = v.split("://", 1)[0].lower()
            if scheme not in STORAGE_SCHEMES:
                raise ValueError(
                    f"unknown storage URI scheme {scheme!r}; use a local path or one of "
                    f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}"
                )
        elif not v.strip():
            raise ValueError("storage must be a local directory or a URI")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> SweepSpec:
        for i, ref in enumerate(self.calibration.sources):
            if ref.source not in self.data.sources:
                raise ValueError(
                    f"calibration.sources[{i}].source {ref.source!r} is not in data.sources "
                    f"(defined: {', '.join(self.data.sources)})"
                )
        if len({b.key for b in self.backbones}) != len(self.backbones):
            raise ValueError("backbones: the same backbone is listed twice")
        if self.lora.init_options.space != "module" and not self.calibration.residual_stream:
            raise ValueError(
                f"lora.init_options.space {self.lora.init_options.space!r} uses each layer's hidden-state "
                "gap: set calibration.residual_stream: true, or use space: module"
            )
        self._check_task_data()
        metric = self.scheduler.metric
        if metric not in self.reported_metrics() and metric.removeprefix("val_") in self.eval.final_metrics:
            raise ValueError(
                f"scheduler.metric {metric!r} is computed only at the last report (eval.final_metrics); "
                "rungs need it at every report: move it to eval.metrics"
            )
        if metric not in self.reported_metrics():
            raise ValueError(
                f"scheduler.metric {metric!r} is never reported by this spec; reported: "
                f"{', '.join(self.reported_metrics())} (add the metric to eval.metrics?)"
            )
        if self.scheduler.max_t is not None and self.scheduler.max_t > self.train.epochs:
            raise ValueError(
                f"scheduler.max_t {self.scheduler.max_t} exceeds train.epochs {self.train.epochs}"
            )
        return self

    def _check_task_data(self) -> None:
        """Each stage reads the kind of data the task needs; transfer and calibration sources exist."""
        kinds = TASK_KINDS[self.task]
        for stage in ("train", "val", "test"):
            ref = getattr(self.data, stage)
            allowed = kinds["train" if stage == "train" else "eval"]
            if ref is not None and self.data.sources[ref.source].kind not in allowed:
                raise ValueError(
                    f"data.{stage}.source {ref.source!r} holds {self.data.sources[ref.source].kind} data, "
                    f"but task {self.task!r} {'trains' if stage == 'train' else 'evaluates'} on "
                    f"{' or '.join(allowed)} data"
                )
        for name, ref in self.eval.transfer.items():
            if ref.source not in self.data.sources:
                raise ValueError(
                    f"eval.transfer.{name}.source {ref.source!r} is not in data.sources "
                    f"(defined: {', '.join(self.data.sources)})"
                )
        for i, ref in enumerate(self.calibration.sources):
            if self.data.sources[ref.source].kind == "pope":
                raise ValueError(
                    f"calibration.sources[{i}].source {ref.source!r} is a POPE set; calibrate on captions "
                    "or VQA questions (question + answer text)"
                )

    def eval_ref(self) -> SplitRef:
        """The split the in-task evaluation (``val_*`` metrics) reads."""
        return self.data.test if self.eval.split == "test" and self.data.test else self.data.val

    def metrics_of_kind(self, kind: str) -> list[str]:
        """Metric names an evaluation of ``kind`` data reports (captions: ``eval.metrics``)."""
        if kind == "vqa":
            return list(VQA_METRICS)
        if kind == "pope":
            return list(POPE_METRICS)
        return list(self.eval.metrics)

    def reported_metrics(self) -> list[str]:
        """Metric names each trial report carries (the scheduler may only use these)."""
        val_kind = self.data.sources[self.eval_ref().source].kind
        out = ["train_loss", "val_loss", *(f"val_{m}" for m in self.metrics_of_kind(val_kind))]
        for name, ref in self.eval.transfer.items():
            if ref.source in self.data.sources:
                out += [f"{name}_{m}" for m in self.metrics_of_kind(self.data.sources[ref.source].kind)]
        return out

    @property
    def max_t(self) -> int:
        return self.scheduler.max_t or self.train.epochs


# --------------------------------------------------------------------------------------- loading


def _line_map(text: str) -> dict[tuple, int]:
    """Map field paths to 1-based YAML line numbers so errors can point at the line."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value
                lines[(*path, key)] = k.start_mark.line + 1
                walk(v, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, i))

    if root is not None:
        walk(root, ())
    return lines


def _allowed_hint(err: dict) -> str:
    ctx = err.get("ctx") or {}
    if err["type"] == "literal_error" and "expected" in ctx:
        return f" (allowed: {ctx['expected']})"
    return ""


def _format_errors(exc: ValidationError, source: str, lines: dict[tuple, int]) -> list[str]:
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic tags union members (`list[any]`, `Choice`...) in loc; drop them for people.
        loc = tuple(p for p in loc if not (isinstance(p, str) and (p[:1].isupper() or "[" in p)))
        field = ".".join(str(p) for p in loc) or "<top level>"
        msg = err["msg"].removeprefix("Value error, ")
        head = msg.split(" ", 1)[0].rstrip(":")
        if not loc and head.split(".")[0].split("[")[0] in SweepSpec.model_fields:
            # a cross-field check names its field first ("scheduler.metric 'x' is never reported"):
            # point at that field and its line, not at the top level
            loc = tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", head) if p)
            field, msg = head, msg[len(head) :].lstrip(" :")
        line = None
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        where = f"{source}:{line}" if line else source
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `gapinit validate --help` for the schema)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        out.append(f"{where}: {field}: {msg}{_allowed_hint(err)}")
    return list(dict.fromkeys(out))


def _parse_value(text: str) -> Any:
    try:
        return yaml_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply dotted `a.b.c=value` overrides (values parsed as YAML: `search.seed=[1,2]`)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise SpecError(f"override {item!r}: empty field name in {key!r}")
        # an axis name is itself dotted: `search.train.lr=[1e-4,2e-4]` sets axis `train.lr`
        if parts[0] == "search" and len(parts) > 2:
            parts = ["search", ".".join(parts[1:])]
        node = raw
        for p in parts[:-1]:
            nxt = node.get(p) if isinstance(node, dict) else None
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise SpecError(f"override {item!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(value)
    return raw


def load_spec(
    path: str | Path, overrides: list[str] | None = None, *, resolve_paths: bool = True
) -> SweepSpec:
    """Read, override and validate a spec file; raise SpecError listing every problem.

    ``env:VAR`` reads the spec's text from environment variable ``VAR`` (how `gapinit submit` hands a
    validated spec to its job without uploading files).

    ``resolve_paths``: make every relative local path the spec names absolute, relative to the
    directory the command runs in (:func:`absolute_paths`). Only ``submit`` turns it off: the cluster's
    filesystem is not the user's, so it refuses relative paths instead."""
    if str(path).startswith("env:"):
        var = str(path)[4:]
        if var not in os.environ:
            raise SpecError(f"{path}: environment variable {var} is not set")
        raw = yaml_load(os.environ[var])
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: the spec must be a YAML mapping")
        spec = spec_from_dict(raw, source=f"${var}", overrides=overrides)
        return absolute_paths(spec) if resolve_paths else spec
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except UnicodeDecodeError as e:
        raise SpecError(
            f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason}); a spec is YAML text, see sweeps/"
        ) from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read spec file ({e.strerror})") from None
    try:
        raw = yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{where}: invalid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the spec must be a YAML mapping (name: ..., storage: ..., ...)")
    spec = spec_from_dict(raw, source=str(path), overrides=overrides, lines=_line_map(text))
    return absolute_paths(spec) if resolve_paths else spec


def _is_uri(value: str) -> bool:
    return "://" in value


def _absolute(value: str, base: Path) -> str:
    """``value`` as an absolute, normalized local path (``~`` expanded; ``file://`` kept as a prefix)."""
    prefix = "file://" if value.startswith("file://") else ""
    path = os.path.expanduser(value.removeprefix(prefix))
    return prefix + os.path.normpath(os.path.join(base, path))


def _looks_local(path: str, base: Path) -> bool:
    """A backbone ``path`` is a local checkpoint dir (not a hub id) when it is written as one (``/``,
    ``~``, ``./``, ``../``) or exists relative to ``base`` (transformers loads an existing dir first)."""
    return path.startswith(("/", "~", "./", "../")) or path in (".", "..") or (base / path).exists()


def relative_paths(spec: SweepSpec) -> list[tuple[str, str]]:
    """(field, value) of every local path in ``spec`` that is relative (hub ids and URIs are not)."""
    out: list[tuple[str, str]] = []
    if not _is_uri(spec.storage) and not os.path.isabs(os.path.expanduser(spec.storage)):
        out.append(("storage", spec.storage))
    for name, src in spec.data.sources.items():
        for f in ("annotations", "questions", "images"):
            v = getattr(src, f)
            if v and not _is_uri(v) and not os.path.isabs(os.path.expanduser(v)):
                out.append((f"data.sources.{name}.{f}", v))
    for i, b in enumerate(spec.backbones):
        if b.path and _looks_local(b.path, Path.cwd()) and not os.path.isabs(os.path.expanduser(b.path)):
            out.append((f"backbones[{i}].path", b.path))
    return out


def absolute_paths(spec: SweepSpec, base: str | Path | None = None) -> SweepSpec:
    """The spec with every relative local path made absolute against ``base`` (default: the current
    directory): ``storage``, the data sources' ``annotations`` / ``questions`` / ``images``, and
    backbone ``path``s that name a local dir (hub ids stay as they are).

    Paths are resolved once, here, at the edge: Ray Tune runs each trainable in its own working
    directory and Ray workers start wherever their node puts them, so nothing downstream may depend on
    the cwd. ``spec.json`` stores the resolved values. URIs (``s3://``...) are left alone."""
    base = Path(base) if base is not None else Path.cwd()
    raw = spec.model_dump(mode="json")
    if not _is_uri(raw["storage"]) or raw["storage"].startswith("file://"):
        raw["storage"] = _absolute(raw["storage"], base)
    for src in raw["data"]["sources"].values():
        for f in ("annotations", "questions", "images"):
            v = src.get(f)
            if v and (not _is_uri(v) or v.startswith("file://")):
                src[f] = _absolute(v, base)
    for b in raw["backbones"]:
        if b.get("path") and _looks_local(b["path"], base):
            b["path"] = _absolute(b["path"], base)
    return SweepSpec.model_validate(raw)


def spec_from_dict(
    raw: dict, source: str = "<spec>", overrides: list[str] | None = None, lines: dict | None = None
) -> SweepSpec:
    raw = apply_overrides(raw, overrides or [])
    lines = lines or {}
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError("\n".join(_format_errors(e, source, lines))) from None
    problems = validate_search(spec, source, lines)
    if problems:
        raise SpecError("\n".join(problems))
    return spec


# ---------------------------------------------------------------------------------- search checks


def _axis_target(name: str) -> str:
    return AXIS_ALIASES.get(name, name)


def _grid_values(axis: Axis) -> list[Any] | None:
    return axis if isinstance(axis, list) else None


def validate_search(spec: SweepSpec, source: str = "<spec>", lines: dict | None = None) -> list[str]:
    """Check every search axis names a real field and every value is valid for that field."""
    problems: list[str] = []
    base = spec.model_dump(mode="python")
    for name, axis in spec.search.axes.items():
        line = (lines or {}).get(("search", name))
        field = f"{source}:{line}: search.{name}" if line else f"{source}: search.{name}"
        grid = _grid_values(axis)
        if grid is not None and not grid:
            problems.append(f"{field}: empty axis; give at least one value")
            continue
        if grid is not None and len({repr(v) for v in grid}) != len(grid):
            dup = sorted({repr(v) for v in grid if sum(repr(w) == repr(v) for w in grid) > 1})
            problems.append(f"{field}: duplicate values {', '.join(dup)} (each grid value must be distinct)")
            continue
        target = _axis_target(name)
        if target == "backbone":
            known = {b.key for b in spec.backbones}
            values = grid if grid is not None else (axis.choice if isinstance(axis, Choice) else [])
            bad = [v for v in values if v not in known]
            if bad or isinstance(axis, Uniform | LogUniform):
                problems.append(
                    f"{field}: values must be backbone keys from `backbones` ({', '.join(known)})"
                )
            continue
        if isinstance(axis, Uniform | LogUniform):
            lo, hi = axis.uniform if isinstance(axis, Uniform) else axis.loguniform
            if lo >= hi:
                problems.append(f"{field}: lower bound {lo} must be below upper bound {hi}")
                continue
            if isinstance(axis, LogUniform) and lo <= 0:
                problems.append(f"{field}: loguniform bounds must be > 0")
                continue
            candidates = [lo, hi]
        else:
            candidates = grid if grid is not None else axis.choice
        if target.split(".")[0] in ("search", "name", "storage", "backbones", "data"):
            problems.append(f"{field}: {target!r} cannot be searched over")
            continue
        for value in candidates:
            trial = copy.deepcopy(base)
            try:
                set_dotted(trial, target, value)
            except KeyError:
                problems.append(
                    f"{field}: {target!r} is not a spec field (e.g. train.lr, lora.rank, seed, init); "
                    + _AXIS_HELP
                )
                break
            try:
                SweepSpec.model_validate(trial)
            except ValidationError as e:
                msgs = _format_errors(e, "", {})
                problems.append(f"{field}: value {value!r} is invalid: {msgs[0].lstrip(': ')}")
                break
    for i, case in enumerate(spec.search.cases):
        field = f"{source}: search.cases[{i}]"
        clash = sorted(set(case) & set(spec.search.axes))
        if clash:
            problems.append(f"{field}: {', '.join(clash)} is also a search axis; set it in one place")
            continue
        trial = copy.deepcopy(base)
        try:
            for name, value in case.items():
                if _axis_target(name) == "backbone":
                    if value not in {b.key for b in spec.backbones}:
                        raise ValueError(f"backbone {value!r} is not in `backbones`")
                    continue
                set_dotted(trial, _axis_target(name), value)
            SweepSpec.model_validate(trial)
        except KeyError as e:
            problems.append(
                f"{field}: {e.args[0]!r} is not a spec field (e.g. train.lr, lora.rank, seed, init)"
            )
        except ValueError as e:
            msg = _format_errors(e, "", {})[0].lstrip(": ") if isinstance(e, ValidationError) else str(e)
            problems.append(f"{field}: {msg}")
    return problems


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict; KeyError when a section along the way does not exist."""
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        if not isinstance(node, dict) or p not in node or not isinstance(node[p], dict):
            raise KeyError(dotted)
        node = node[p]
    if not isinstance(node, dict) or (parts[-1] not in node):
        raise KeyError(dotted)
    node[parts[-1]] = value


def grid_size(spec: SweepSpec) -> int:
    """Number of trials the spec expands to (grid product × num_samples × backbones)."""
    n = 1
    for axis in spec.search.axes.values():
        if isinstance(axis, list):
            n *= len(axis)
    if "backbone" not in spec.search.axes:
        n *= len(spec.backbones)
    sampled = any(not isinstance(a, list) for a in spec.search.axes.values())
    return n * max(1, len(spec.search.cases)) * (spec.search.num_samples if sampled else 1)


def describe(spec: SweepSpec) -> str:
    """One paragraph a person can check before launching: what the sweep will run."""
    axes = (
        ", ".join(f"{k}={v if isinstance(v, list) else v.model_dump()}" for k, v in spec.search.axes.items())
        or "none"
    )
    return (
        f"sweep {spec.name!r}: {grid_size(spec)} trial(s) over {len(spec.backbones)} backbone(s) "
        f"[{', '.join(b.key for b in spec.backbones)}]; axes: {axes}; scheduler {spec.scheduler.type} on "
        f"{spec.scheduler.metric} ({spec.scheduler.mode}); {spec.train.epochs} epoch(s); storage {spec.storage}"
    )
