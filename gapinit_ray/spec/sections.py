"""The sections of a sweep spec: backbones, data, calibration, LoRA, training and evaluation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gapinit_ray.names import CAPTION_METRICS, INIT_METHODS
from gapinit_ray.spec.vocab import check_known


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------- backbones


class BackboneSpec(StrictModel):
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


class SourceSpec(StrictModel):
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


class SplitRef(StrictModel):
    """Which source and split a stage reads, optionally a fixed-size subset."""

    source: str
    split: Literal["train", "val", "test"] = "train"
    limit: int | None = Field(None, ge=1, description="use only the first N images (stable order)")


class CalibrationSourceRef(StrictModel):
    source: str
    split: Literal["train", "val", "test"] = "train"
    fraction: float = Field(1.0, gt=0.0, le=1.0)


class DataSpec(StrictModel):
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


class SpotSpec(StrictModel):
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


def _non_empty_targets(v: list[str] | None, default: str) -> list[str] | None:
    """An empty ``target_modules`` list would silently mean the defaults: say so instead."""
    if v is not None and not v:
        raise ValueError(f"empty list; omit the field for the defaults ({default}), or name the modules")
    return v


class CalibrationSpec(StrictModel):
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

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        return _non_empty_targets(v, "the LoRA targets")

    @model_validator(mode="after")
    def _fractions(self) -> CalibrationSpec:
        total = sum(s.fraction for s in self.sources)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"calibration.sources fractions sum to {total:g}; they must sum to 1")
        return self


# --------------------------------------------------------------------------------------------- lora


class LayerSelectionSpec(StrictModel):
    """Which LM layers get adapters: `naive` = the top-k layers, `gg-safe` = top-k by SPOT-Gap score."""

    selection: Literal["naive", "gg-safe", "all"] = "naive"
    top_k: int = Field(6, ge=1, description="paper: top-6 LM layers")


class InitOptions(StrictModel):
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


class LoraSpec(StrictModel):
    rank: int = Field(1, ge=1)
    alpha: float | None = Field(None, gt=0, description="None = 2 × rank (paper: r=1 α=2, r=8 α=16)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="default: the backbone family's defaults")
    adapt_vision: bool = Field(False, description="also adapt the vision tower (never the Q-Former)")
    layers: LayerSelectionSpec = LayerSelectionSpec()
    init: str = "gap"
    init_options: InitOptions = InitOptions()

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        return _non_empty_targets(v, "the backbone family's defaults")

    @field_validator("init")
    @classmethod
    def _init_known(cls, v: str) -> str:
        return check_known("init method", v, INIT_METHODS)

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


class ZeroSpec(StrictModel):
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


class TrainSpec(StrictModel):
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


class GenerationSpec(StrictModel):
    num_beams: int = Field(1, ge=1)
    max_new_tokens: int = Field(30, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    length_penalty: float = 1.0
    repetition_penalty: float = Field(1.0, gt=0)


class EvalSpec(StrictModel):
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
