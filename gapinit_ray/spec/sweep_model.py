"""The whole sweep spec (:class:`SweepSpec`) and its search, scheduler, resources and logger sections."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from gapinit_ray.names import (
    DEFAULT_METRIC,
    POPE_METRICS,
    SEED_GROUP_ASHA,
    VQA_METRICS,
    SchedulerType,
    metric_of_val,
    split_metric,
    val_metric,
)
from gapinit_ray.spec.sections import (
    BackboneSpec,
    CalibrationSpec,
    DataSpec,
    EvalSpec,
    LoraSpec,
    SplitRef,
    StrictModel,
    TrainSpec,
)
from gapinit_ray.spec.sequential import SequentialSpec, check_sequential
from gapinit_ray.spec.vocab import STORAGE_SCHEMES, TASK_KINDS, TASKS, check_known

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: Largest trial seed. torch.manual_seed takes 0 <= s < 2**64 (and negatives, remapped), but a trial
#: derives its dropout seeds as seed * 1000 + rank + 7919 * epoch + step (gapinit_ray/train.py) and its
#: sampler's as seed + epoch, which must stay below 2**64 too: 32 bits leave them ample room.
SEED_MAX = 2**32 - 1


# ------------------------------------------------------------------------------------ search space


class Choice(StrictModel):
    choice: list[Any] = Field(min_length=1)


class Uniform(StrictModel):
    uniform: tuple[float, float]


class LogUniform(StrictModel):
    loguniform: tuple[float, float]


Axis = list[Any] | Choice | Uniform | LogUniform
_SAMPLERS = {"choice": Choice, "uniform": Uniform, "loguniform": LogUniform}
AXIS_ALIASES = {"init": "lora.init", "seed": "seed", "backbone": "backbone"}
AXIS_HELP = (
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
    raise ValueError(f"axis {name!r}: {AXIS_HELP}; got {value!r}")


class SearchSpec(StrictModel):
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


class SchedulerSpec(StrictModel):
    type: SchedulerType = SEED_GROUP_ASHA
    metric: str = DEFAULT_METRIC
    mode: Literal["max", "min"] = "max"
    time_attr: Literal["epoch"] = "epoch"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="default: train.epochs")


class ResourcesSpec(StrictModel):
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


class LoggerSpec(StrictModel):
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
        from gapinit_ray.trackers.common import missing_package

        hint = missing_package(self.type)
        if hint:
            raise ValueError(f"logger {self.type!r} needs its package: {hint}")
        return self


# ---------------------------------------------------------------------------------------- the sweep


class SweepSpec(StrictModel):
    name: str
    storage: str = Field(description="results root: a local dir or a pyarrow filesystem URI (s3://...)")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="trial seed, 0 to 2**32-1; usually a search axis")
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
    sequential: SequentialSpec | None = Field(
        None, description="seeds until each comparison is decided (anytime-valid), within a budget"
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
        return check_known("task", v, TASKS)

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
        if metric not in self.reported_metrics() and metric_of_val(metric) in self.eval.final_metrics:
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
        if self.scheduler.grace_period > self.max_t:
            last = "scheduler.max_t" if self.scheduler.max_t is not None else "train.epochs"
            raise ValueError(
                f"scheduler.grace_period {self.scheduler.grace_period} exceeds {last} {self.max_t}: the "
                f"first rung would come after the last epoch; set it to at most {self.max_t}"
            )
        return self

    @model_validator(mode="after")
    def _sequential(self) -> SweepSpec:
        check_sequential(self)
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
        out = ["train_loss", val_metric("loss"), *(val_metric(m) for m in self.metrics_of_kind(val_kind))]
        for name, ref in self.eval.transfer.items():
            if ref.source in self.data.sources:
                out += [
                    split_metric(name, m) for m in self.metrics_of_kind(self.data.sources[ref.source].kind)
                ]
        return out

    @property
    def max_t(self) -> int:
        return self.scheduler.max_t or self.train.epochs
