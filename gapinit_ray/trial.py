"""From a spec + one point of its search space to a running Ray Train job (the TorchTrainer).

The same path serves `gapinit run SPEC --trial init=gap,seed=42` (one trial, outside Tune, for
debugging) and every trial of a sweep (inside a Tune function trainable, with ``TuneReportCallback``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gapinit_ray.names import CAPTIONS_DIR, GAPS_DIR, TRAIN_DIR
from gapinit_ray.plan import trial_id, trial_spec
from gapinit_ray.spec import BackboneSpec, SweepSpec

if TYPE_CHECKING:
    from gapinit_ray.seedgroup.trial_side import MemberRun


def prepare_backbone(spec: SweepSpec, bspec: BackboneSpec, progress: bool = True) -> str | None:
    """Where the trial's weights come from: the pretrained tiny preset (built once, cached), or the
    spec's path / hub id."""
    if bspec.name.startswith("tiny-") and bspec.pretrain and bspec.path is None:
        from gapinit_ray.data.resolve import cache_dir
        from gapinit_ray.pretrain import ensure_pretrained

        return str(ensure_pretrained(bspec.name, cache_dir(spec.storage), progress=progress))
    return bspec.path


def prepare_artifact(
    spec: SweepSpec,
    bspec: BackboneSpec,
    backbone_path: str | None,
    progress: bool = True,
    use_ray: bool | None = None,
) -> str:
    """Compute (or find in the cache) the GapArtifact of this backbone + calibration settings. Every
    method gets it: the alignment cos(B[:,0], g) is recorded for all of them (paper Fig. 2).
    ``use_ray``: as :func:`~gapinit_ray.calibration_job.run_calibration` (None: when Ray is up)."""
    from gapinit_ray.calibration_job import run_calibration
    from gapinit_ray.data.resolve import cache_dir
    from gapinit_ray.init_stats import ensure_init_stats

    artifact, _ = run_calibration(
        spec, bspec, backbone_path=backbone_path, progress=progress, use_ray=use_ray
    )
    path = str(cache_dir(spec.storage) / GAPS_DIR / artifact.key)
    # peft's data-driven inits (EVA, CorDA, LoRA-GA): their statistics over the same D_cal, cached there
    ensure_init_stats(spec, bspec, backbone_path, path, [spec.lora.init], use_ray=use_ray, progress=progress)
    return path


def prepare_features(
    spec: SweepSpec, bspec: BackboneSpec, backbone_path: str | None, progress: bool = True
) -> str | None:
    """The frozen-prefix feature cache dir this trial's data loaders read (built now for the images of
    its train and validation splits that are not cached yet), or ``None`` when the cache is off for it
    (:func:`gapinit_ray.features.cache_plan`)."""
    import sys

    from gapinit_ray.data.resolve import split_records
    from gapinit_ray.evaluate import eval_records
    from gapinit_ray.features import build_feature_cache, cache_plan

    use, why = cache_plan(spec)
    if not use:
        if progress:
            print(f"feature cache off for {bspec.key}: {why}", file=sys.stderr)
        return None
    records = [
        *split_records(spec.data, spec.data.train, spec.storage),
        *eval_records(split_records(spec.data, spec.eval_ref(), spec.storage), spec.eval.subset),
    ]
    r = spec.resources
    report = build_feature_cache(
        spec.storage,
        bspec,
        records,
        backbone_path=backbone_path,
        workers=spec.calibration.workers,
        cpus_per_worker=r.cpus_per_worker,
        gpus_per_worker=r.gpus_per_worker,
        batch_size=spec.calibration.batch_size,
    )
    if progress:
        print(report.line(bspec.key), file=sys.stderr)
    return report.root


def sweep_dir(spec: SweepSpec) -> Path:
    return Path(spec.storage).expanduser().absolute() / spec.name


def build_trainer(
    spec: SweepSpec,
    params: dict[str, Any],
    *,
    callbacks: list | None = None,
    artifact_path: str | None = None,
    backbone_path: str | None = None,
    progress: bool = True,
    stop_at: float | None = None,
    feature_cache: str | bool | None = True,
    member: MemberRun | None = None,
    faults: list[str] | None = None,
):
    """The TorchTrainer of one trial. Pretraining and calibration run here (cached) if not given.

    ``feature_cache``: the feature cache dir the sweep prepared, ``None`` for none, ``True`` to prepare
    it here (when the spec allows it).

    ``stop_at``: end the run after its report at epoch >= ``stop_at``; a later TorchTrainer of the same
    trial (same name and storage) continues from that checkpoint (seed-group rungs). With ``member``
    (a seed-group member: the scheduler's state file, its Tune id, the sweep's Train-slot actor), the
    run goes on past ``stop_at`` when the trial's group is promoted there at once (it reported last),
    and holds at ``stop_at`` while the group's others are on their way.
    ``faults``: :mod:`gapinit_ray.faults` points (default: ``$GAPINIT_INJECT_FAULTS``)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    from gapinit_ray.faults import from_env
    from gapinit_ray.ray_private import lean_torch_trainer
    from gapinit_ray.train import TrialContext, train_loop_per_worker

    tspec, bspec = trial_spec(spec, params)
    if backbone_path is None:
        backbone_path = prepare_backbone(tspec, bspec, progress)
    if artifact_path is None:
        artifact_path = prepare_artifact(tspec, bspec, backbone_path, progress)
    if feature_cache is True:
        feature_cache = prepare_features(tspec, bspec, backbone_path, progress)
    from gapinit_ray.features import cache_plan

    if not cache_plan(tspec)[0]:  # the sweep's cache, but this trial's axis values turn it off
        feature_cache = None
    tid = trial_id(params)
    root = sweep_dir(spec)
    ctx = TrialContext(
        spec=tspec,
        backbone=bspec,
        backbone_path=backbone_path,
        artifact_path=artifact_path,
        trial_id=tid,
        out_dir=str(root / CAPTIONS_DIR / tid),
        stop_at=stop_at,
        feature_cache=feature_cache or None,
        member=member,
        faults=faults if faults is not None else (from_env() or None),
        # the sweep's trials write every report to the results store (its ResultsCallback): a report
        # lost with a killed driver is delivered again on restart (TrialWorker._redeliver_lost_report)
        results_store=any(type(c).__name__ == "ResultsCallback" for c in (callbacks or [])),
    )
    r = spec.resources
    use_gpu = r.gpus_per_worker > 0
    resources = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if use_gpu else {})}
    return lean_torch_trainer()(
        train_loop_per_worker,
        train_loop_config={"ctx": ctx},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=r.workers_per_trial, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=tid,
            storage_path=str(root / TRAIN_DIR),
            failure_config=FailureConfig(max_failures=r.worker_restarts),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or [],
            worker_runtime_env={"env_vars": _worker_env(use_gpu)},
        ),
    )


def _worker_env(use_gpu: bool) -> dict[str, str]:
    env = {"TOKENIZERS_PARALLELISM": "false", **({} if use_gpu else {"DS_ACCELERATOR": "cpu"})}
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DS_ACCELERATOR", "HF_HOME"):
        if var in os.environ:
            env[var] = os.environ[var]
    return env
