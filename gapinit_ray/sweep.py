"""A sweep on Ray Tune: the spec's search space becomes trials, each a Ray Train job (Train inside Tune).

Flow of :func:`run_sweep`:
1. validate the data, pretrain tiny presets (cached) and calibrate every (backbone, calibration
   settings) key the grid needs, once, on the Ray workers (cached GapArtifacts);
2. run a Tune function trainable per trial; it launches the trial's TorchTrainer with Ray's
   ``TuneReportCallback`` (the Ray 2.60 way: not the deprecated ``Tuner(trainer)``) and a results
   callback that writes every report to the Parquet store (one writer per trial, idempotent per epoch);
3. the scheduler (FIFO, ASHA, seed-group ASHA) decides at rungs; its state is saved after every
   decision next to the sweep, so a resumed sweep keeps it (Tune's own restore loses it:
   ray-project/ray#30838);
4. at the end, print the aggregate table (mean ± std over seeds per group).

Storage layout under ``<storage>/<sweep name>/`` (stable; documented in the README):
``spec.json`` (the validated spec), ``tune/`` (Tune experiment state, used by resume), ``train/<trial>/``
(Ray Train runs: checkpoints with the peft adapter), ``results/`` (Parquet metric and trial rows),
``captions/<trial>/epoch_N/captions.json``, ``scheduler_state.json`` + ``.jsonl`` (seed-group rungs,
:mod:`gapinit_ray.seedgroup.state`); shared caches in
``<storage>/_cache/`` (synthetic data, pretrained tiny backbones, GapArtifacts).

This module is the driver (:func:`prepare`, :func:`run_sweep`, :func:`preflight`); the trial side (the
trainable and its results callback) is :mod:`gapinit_ray.sweep_trainable`, the Tune callback and the
failed-trial reporting :mod:`gapinit_ray.sweep_callback`. Their names stay importable from here.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from gapinit_ray.atomic import write_atomic
from gapinit_ray.errors import GapinitError
from gapinit_ray.names import FIFO, RAY_OUTPUT_FILE, SEED_GROUP_ASHA, SPEC_FILE
from gapinit_ray.plan import SEED_KEY, grid_points, param_space, plan, trial_spec
from gapinit_ray.spec import SweepSpec, grid_size
from gapinit_ray.sweep_callback import SweepProgress, error_file, failed_trials
from gapinit_ray.sweep_trainable import (
    ResultsCallback,
    calibration_key,
    finished_report,
    trainable,
    trial_group,
)
from gapinit_ray.trial import prepare_artifact, prepare_backbone, prepare_features, sweep_dir

__all__ = [  # the trial-side and callback names stay importable from here, where callers have always found them
    "ResultsCallback",
    "SweepProgress",
    "calibration_key",
    "error_file",
    "failed_trials",
    "finished_report",
    "preflight",
    "prepare",
    "run_sweep",
    "trainable",
    "trial_group",
]

# ---------------------------------------------------------------------------------------- driver


def max_concurrent(spec: SweepSpec, per_group: bool = True) -> int:
    """Trials Tune keeps alive at once: the spec's limit, else what the cluster's CPUs (or GPUs) fit.

    With seed groups, members that reach a rung first wait there (inside their trainable, holding no
    CPU/GPU) until the last one gets there, and Tune counts them against this limit; so the limit is
    the slots times the group size, or a group's last members would never be created; ``per_group=False``
    gives the slots alone (how many Train jobs run at once, :mod:`gapinit_ray.seedgroup.slots`)."""
    import ray

    seeds = spec.search.axes.get("seed")
    group = len(seeds) if isinstance(seeds, list) and spec.scheduler.type == SEED_GROUP_ASHA else 1
    if not per_group:
        group = 1
    if spec.resources.max_concurrent_trials:
        return spec.resources.max_concurrent_trials * group
    r = spec.resources
    fits = ray.cluster_resources().get("CPU", 1) // max(r.workers_per_trial * r.cpus_per_worker, 1e-9)
    if r.gpus_per_worker:
        fits = min(fits, ray.cluster_resources().get("GPU", 0) // (r.workers_per_trial * r.gpus_per_worker))
    return max(1, int(fits)) * group


def prepare(spec: SweepSpec, progress: bool = True) -> tuple[dict[str, str | None], dict[str, str]]:
    """Before any trial starts: pretrain tiny presets and calibrate every key the grid needs, once.
    Returns each backbone's weights path and each :func:`calibration_key`'s GapArtifact dir: trials
    are handed these paths and never derive or compute an artifact themselves (see
    :func:`prepare_feature_caches` for the feature caches)."""
    from gapinit_ray.data.resolve import check_spec_data
    from gapinit_ray.init_stats import ensure_init_stats

    for line in check_spec_data(spec):
        if progress:
            print(line, file=sys.stderr)
    backbone_paths: dict[str, str | None] = {}
    for b in spec.backbones:
        backbone_paths[b.key] = prepare_backbone(spec, b, progress)
    artifacts: dict[str, str] = {}
    for point in grid_points(spec):
        tspec, bspec = trial_spec(spec, point)
        key = calibration_key(tspec, bspec)
        if key not in artifacts:
            artifacts[key] = prepare_artifact(tspec, bspec, backbone_paths[bspec.key], progress)
        else:  # the key's artifact exists: the init statistics this point's init needs (EVA, ...), cached
            ensure_init_stats(
                tspec, bspec, backbone_paths[bspec.key], artifacts[key], [tspec.lora.init], progress=progress
            )
    return backbone_paths, artifacts


def prepare_feature_caches(
    spec: SweepSpec, backbone_paths: dict[str, str | None], progress: bool = True
) -> dict[str, str | None]:
    """Build the frozen-prefix feature cache of every backbone whose trials can use it (once per
    backbone and data; trials whose axis values turn the cache off ignore it)."""
    from gapinit_ray.features import cache_plan

    caches: dict[str, str | None] = {}
    reasons_said: set[str] = set()  # "cache off because ..." lines printed
    built: set[str] = set()  # (backbone, data) builds done
    for point in grid_points(spec):
        tspec, bspec = trial_spec(spec, point)
        use, why = cache_plan(tspec)
        if not use:
            if progress and why not in reasons_said:
                reasons_said.add(why)
                print(f"feature cache off for trials with {why}", file=sys.stderr)
            continue
        # one build per backbone and data the trials read (the dir is the backbone's; images are keyed
        # by content, so overlapping data is computed once)
        key = json.dumps([bspec.key, tspec.data.model_dump(mode="json"), tspec.eval.subset], sort_keys=True)
        if key not in built:
            built.add(key)
            caches[bspec.key] = prepare_features(tspec, bspec, backbone_paths[bspec.key], progress)
    return caches


def make_scheduler(spec: SweepSpec):
    """The spec's scheduler. Seed-group ASHA knows the group size (the number of seeds), names groups
    with :func:`trial_group` and keeps its rung state in the sweep dir
    (:mod:`gapinit_ray.seedgroup.state`), so a resumed sweep keeps it."""
    import functools

    from gapinit_ray.schedulers import make_scheduler as _make
    from gapinit_ray.seedgroup.state import state_path

    s = spec.scheduler
    seeds = spec.search.axes.get("seed")
    return _make(
        s.type,
        metric=s.metric,
        mode=s.mode,
        time_attr=s.time_attr,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        max_t=spec.max_t,
        group_size=len(seeds) if isinstance(seeds, list) else 1,
        seed_key=SEED_KEY,
        state_path=state_path(sweep_dir(spec)),
        group_of=functools.partial(trial_group, spec),
    )


#: ``<sweep>/artifacts.json``: calibration key -> GapArtifact dir of the sweep's trials
ARTIFACTS_FILE = "artifacts.json"


def run_sweep(spec: SweepSpec, *, quiet: bool = False):
    """Run (or resume, when the sweep's Tune state exists) a whole sweep; needs ``ray.init`` done."""
    from gapinit_ray.cluster import check_resources, resource_watch
    from gapinit_ray.placement_reaper import placement_reaper

    preflight(spec)
    problem = check_resources(spec)  # before anything is written or scheduled: a request no node can grant
    # on an autoscaling cluster: what it waits for, every minute; on any cluster: placement groups a
    # stopped job left reserved are given back (placement_reaper says why)
    with resource_watch(spec, problem), placement_reaper(), ray_output(spec, quiet):
        return _run(spec, quiet)


def _run(spec: SweepSpec, quiet: bool):
    from ray import tune

    from gapinit_ray.seedgroup.state import state_path

    root = sweep_dir(spec)
    root.mkdir(parents=True, exist_ok=True)
    _check_same_sweep(spec, root)
    backbone_paths, artifact_paths = prepare(spec, progress=not quiet)
    # which GapArtifacts the sweep's trials use (their calibration cost is part of the sweep's cost)
    write_atomic(root / ARTIFACTS_FILE, json.dumps(artifact_paths, indent=1, sort_keys=True))
    feature_caches = prepare_feature_caches(spec, backbone_paths, progress=not quiet)
    # The trial function only waits on its TorchTrainer. A fractional CPU for it would leave, e.g., 2 CPUs
    # able to hold one 1-CPU Train worker group and the trial functions but never a second group
    # (2 - 1 - 0.03 < 1), so it asks for a sliver of memory (a logical resource every node has) instead.
    seed_groups = spec.scheduler.type == SEED_GROUP_ASHA
    slots = gate = None
    if seed_groups:
        # Tune keeps slots x group size trials alive (members wait at rungs); only `slots` of them run
        # a Train job at a time, the rest wait for a permit before starting one (seedgroup.slots)
        from gapinit_ray.seedgroup.slots import slots_name, start_slots

        slots = slots_name(root)
        # the handle keeps the actor alive until this function returns (it is not detached)
        # the trials Tune starts at once ask for a slot together: served by group, not by arrival
        # (a resumed sweep restarts only its unfinished trials: served as they come)
        starting = min(grid_size(spec), max_concurrent(spec))
        if tune.Tuner.can_restore(str(root / "tune")):
            starting = 0
        gate = start_slots(slots, max_concurrent(spec, per_group=False), expect=starting)
    fn = tune.with_resources(
        tune.with_parameters(
            trainable,
            spec=spec,
            planned=plan(spec),
            backbone_paths=backbone_paths,
            artifact_paths=artifact_paths,
            feature_caches=feature_caches,
            state_path=str(state_path(root)) if seed_groups else None,
            slots=slots,
        ),
        {"CPU": 0, "memory": 2**20},
    )
    tune_dir = root / "tune"
    if tune.Tuner.can_restore(str(tune_dir)):
        # finished trials stay finished; unfinished ones restart and their TorchTrainer (same name,
        # same storage) continues from its last checkpoint; the scheduler reloads its saved state
        tuner = tune.Tuner.restore(str(tune_dir), trainable=fn, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = make_scheduler(spec)
        tuner = tune.Tuner(
            fn,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                scheduler=scheduler,
                num_samples=spec.search.num_samples,
                max_concurrent_trials=max_concurrent(spec),
                # ASHA / seed-group ASHA carry metric and mode themselves; Tune refuses both
                **(
                    {"metric": spec.scheduler.metric, "mode": spec.scheduler.mode}
                    if spec.scheduler.type == FIFO
                    else {}
                ),
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(root),
                callbacks=[SweepProgress(spec, scheduler, quiet, slots)],
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                verbose=0,
            ),
        )
    try:
        grid = tuner.fit()
    except RuntimeError as e:
        # Tune builds its ResultGrid from every trial's dir; a trial stopped by the scheduler before it
        # ever started has none ("Should not access `trial_fs_path`..."). The sweep itself finished and
        # its results are in our store, which is what gets reported.
        if "trial_fs_path" not in str(e):
            raise
        grid = None
    finally:
        if gate is not None:
            import ray

            ray.kill(gate)
    if spec.sequential is not None:
        # seeds until each comparison is decided: rounds of extra seeds for the open ones
        from gapinit_ray.sequential.driver import run_rounds

        run_rounds(
            spec,
            quiet=quiet,
            fn_kwargs={
                "backbone_paths": backbone_paths,
                "artifact_paths": artifact_paths,
                "feature_caches": feature_caches,
            },
            concurrency=max_concurrent(spec, per_group=False),
        )
    _compact(spec)
    return grid


@contextlib.contextmanager
def ray_output(spec: SweepSpec, quiet: bool = False):
    """What Ray prints on the driver's stdout while the sweep runs (Tune's experiment box and
    TensorBoard hint, the raylet's warnings such as "N PYTHON worker processes have been started")
    goes to ``<sweep>/ray_output.log`` (appended), named once on stderr. The sweep's own lines are on
    stderr (progress, warnings, errors) and its final table comes after: neither is touched."""
    path = sweep_dir(spec) / RAY_OUTPUT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    said = path.exists()
    with open(path, "a", buffering=1) as log:
        if not quiet and not said:
            print(
                f"gapinit: Ray's own output (Tune's tables, raylet warnings) goes to {path}", file=sys.stderr
            )
        with contextlib.redirect_stdout(log):
            yield


def _compact(spec: SweepSpec) -> None:
    """Fold each finished trial's per-report files into one, then every row into the sweep-level
    ``metrics/_sweep.parquet`` (a query then reads one file, plus whatever changed after)."""
    from gapinit_ray.results import ResultsStore

    ResultsStore(spec.storage, spec.name).compact()


def preflight(spec: SweepSpec) -> None:
    """What a run can refuse before Ray starts or anything is written: a storage root that cannot be
    written, or a sweep dir that holds another spec's sweep."""
    from gapinit_ray.data.resolve import check_storage

    check_storage(spec.storage)
    root = sweep_dir(spec)
    if (root / SPEC_FILE).is_file():
        _check_same_sweep(spec, root)
    if spec.sequential is not None:
        from gapinit_ray.sequential.driver import check_cost_available

        check_cost_available(spec)  # a budget over stored reports that carry no cost


def _check_same_sweep(spec: SweepSpec, root: Path) -> None:
    """A sweep dir belongs to one spec: running another spec into it would mix trials."""
    path = root / SPEC_FILE
    current = spec.model_dump(mode="json")
    # trackers do not change results, and storage is where the dir is, not what the sweep is (a sweep dir
    # moved or copied elsewhere is resumed there: `gapinit resume DIR`)
    identity = {k: v for k, v in current.items() if k not in ("loggers", "storage")}
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (ValueError, OSError) as e:
            raise GapinitError(
                f"{path}: cannot read this sweep dir's spec ({type(e).__name__}); it is not a gapinit "
                "sweep's spec.json: use another name or storage, or remove the directory"
            ) from None
        saved = {k: v for k, v in saved.items() if k not in ("loggers", "storage")}
        # a field added since the sweep was written (absent there) counts as its default, None
        diff = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        if diff:
            raise GapinitError(
                f"{root} already holds sweep {spec.name!r} run with a different spec (differs in: "
                f"{', '.join(diff)}); use another name or storage, or the original spec to resume"
            )
    else:
        write_atomic(path, json.dumps(current, indent=1, sort_keys=True))
