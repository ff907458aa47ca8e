"""The sweep spec: one YAML file describes a whole sweep.

The spec is validated once, at the edge, into typed pydantic models. Unknown keys are errors; every bad
value is reported with the file, the field path (and YAML line) and what is allowed, all errors at once.
Stages receive the typed sub-models they need, never the raw YAML.

A sweep is the product of the ``search`` axes (grid lists, and ``choice`` / ``uniform`` /
``loguniform`` for tuned values) over the base values given in the other sections. An axis is named by
the dotted path of the field it sets (``train.lr``, ``lora.rank``); ``seed``, ``init`` and
``backbone`` are short names for ``seed``, ``lora.init`` and the backbone list.

Modules: :mod:`~gapinit_ray.spec.vocab` (accepted names), :mod:`~gapinit_ray.spec.yamlio` (strict YAML,
line map), :mod:`~gapinit_ray.spec.sections` and :mod:`~gapinit_ray.spec.sweep_model` (the models),
:mod:`~gapinit_ray.spec.messages` (errors for people), :mod:`~gapinit_ray.spec.overrides`,
:mod:`~gapinit_ray.spec.paths`, :mod:`~gapinit_ray.spec.search` (search checks) and
:mod:`~gapinit_ray.spec.load` (file -> validated spec).
"""

from __future__ import annotations

from gapinit_ray.names import CAPTION_METRICS, INIT_METHODS, POPE_METRICS, SCHEDULERS, VQA_METRICS
from gapinit_ray.spec.load import load_spec, saved_spec, spec_from_dict
from gapinit_ray.spec.messages import format_errors
from gapinit_ray.spec.overrides import apply_overrides, set_dotted
from gapinit_ray.spec.paths import absolute_paths, relative_paths
from gapinit_ray.spec.search import describe, grid_size, validate_search
from gapinit_ray.spec.sections import (
    BackboneSpec,
    CalibrationSourceRef,
    CalibrationSpec,
    DataSpec,
    EvalSpec,
    GenerationSpec,
    InitOptions,
    LayerSelectionSpec,
    LoraSpec,
    SourceSpec,
    SplitRef,
    SpotSpec,
    StrictModel,
    TrainSpec,
    ZeroSpec,
)
from gapinit_ray.spec.sweep_model import (
    AXIS_ALIASES,
    Axis,
    Choice,
    LoggerSpec,
    LogUniform,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
    SweepSpec,
    Uniform,
)
from gapinit_ray.spec.vocab import PAPER_SEEDS, STORAGE_SCHEMES, TASK_KINDS, TASKS
from gapinit_ray.spec.yamlio import line_map, yaml_load

__all__ = [
    "AXIS_ALIASES",
    "CAPTION_METRICS",
    "INIT_METHODS",
    "PAPER_SEEDS",
    "POPE_METRICS",
    "SCHEDULERS",
    "STORAGE_SCHEMES",
    "TASKS",
    "TASK_KINDS",
    "VQA_METRICS",
    "Axis",
    "BackboneSpec",
    "CalibrationSourceRef",
    "CalibrationSpec",
    "Choice",
    "DataSpec",
    "EvalSpec",
    "GenerationSpec",
    "InitOptions",
    "LayerSelectionSpec",
    "LogUniform",
    "LoggerSpec",
    "LoraSpec",
    "ResourcesSpec",
    "SchedulerSpec",
    "SearchSpec",
    "SourceSpec",
    "SplitRef",
    "SpotSpec",
    "StrictModel",
    "SweepSpec",
    "TrainSpec",
    "Uniform",
    "ZeroSpec",
    "absolute_paths",
    "apply_overrides",
    "describe",
    "format_errors",
    "grid_size",
    "line_map",
    "load_spec",
    "relative_paths",
    "saved_spec",
    "set_dotted",
    "spec_from_dict",
    "validate_search",
    "yaml_load",
]
