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
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from gapinit_ray.atomic import write_atomic
from gapinit_ray.errors import GapinitError
from gapinit_ray.names import FIFO, SEED_GROUP_ASHA, SPEC_FILE
from gapinit_ray.plan import (
    SEED_KEY,
    grid_points,
    param_space,
    params_of,
    result_config,
    trial_id,
    trial_spec,
)
from gapinit_ray.progress import ProgressView, SweepStatus, rung_summary
from gapinit_ray.seedgroup.ids import group_id
from gapinit_ray.spec import SweepSpec, grid_size
from gapinit_ray.trial import (
    prepare_artifact,
    prepare_backbone,
    prepare_features,
    sweep_dir,
)

# ------------------------------------------------------------------------------------ the trial


class ResultsCallback:
    """Ray Train callback (runs in the trial's Train controller): every report becomes a Parquet row."""

    def __new__(cls, storage: str, sweep: str, tid: str, params: dict):
        from ray.train.v2.api.callback import UserCallback

        from gapinit_ray.results import ResultsStore

        class _Writer(UserCallback):
            def after_report(self, run_context, metrics, checkpoint):
                row = dict(metrics[0])  # rank 0's report names the node it ran on
                ResultsStore(storage, sweep).write_report(
                    tid, params, row, host=str(row.get("worker_host") or socket.gethostname())
                )

        return _Writer()


def trainable(
    config: dict[str, Any],
    spec_dict: dict,
    backbone_paths: dict[str, str | None],
    artifact_paths: dict[str, str] | None = None,
    state_path: str | None = None,
    feature_caches: dict[str, str | None] | None = None,
    slots: str | None = None,
) -> None:
    """Tune function trainable: one trial = one TorchTrainer run (restored by name when restarted).

    With seed-group ASHA (``state_path`` given) the trial runs one TorchTrainer per rung segment: it
    trains up to the next rung and asks the scheduler state for its group's decision there. When the
    group is decided at once (this member reported last) and promoted, the same Train run goes on;
    otherwise the run ends (freeing its workers), the trial waits for the group's decision and, when
    promoted, starts the next segment from the checkpoint; but while the group's other members still to
    report are all running, the run holds at the rung instead of ending (no restart when the cluster
    fits a whole group). ``slots`` names the sweep's :class:`~gapinit_ray.seedgroup.slots.TrainSlots`
    actor: each Train run holds one of its permits.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from gapinit_ray.seedgroup.slots import train_slot
    from gapinit_ray.trial import build_trainer

    spec = SweepSpec.model_validate(spec_dict)
    params = params_of(config, spec)
    tid = trial_id(params)
    columns = result_config(spec, params)
    group = group_id(columns)
    rank = _group_rank(spec, group)
    tspec, bspec = trial_spec(spec, params)
    # the driver calibrated every key of the grid; a sampled axis may reach one it did not: then this
    # process computes it (no Ray actors: the trial's placement group has no room for them), cached
    artifact_path = (artifact_paths or {}).get(calibration_key(tspec, bspec))
    if artifact_path is None:
        artifact_path = prepare_artifact(
            tspec, bspec, backbone_paths[bspec.key], progress=False, use_ray=False
        )

    def fit(stop_at: float | None, continuing: bool = False) -> float:
        """One Train run; returns the epoch of its last report (where it actually ended)."""
        # the row is on disk before Tune (and its scheduler) sees the report
        callbacks = [
            ResultsCallback(spec.storage, spec.name, tid, columns),
            TuneReportCallback(),
        ]
        tune_id = tune.get_context().get_trial_id() if state_path else None
        with train_slot(slots, tid, group, continuing, tune_id, rank):
            trainer = build_trainer(
                spec,
                params,
                callbacks=callbacks,
                backbone_path=backbone_paths[bspec.key],
                artifact_path=artifact_path,
                progress=False,
                feature_cache=(feature_caches or {}).get(bspec.key),
                stop_at=stop_at,
                rung_state=state_path,
                tune_trial_id=tune_id,
                slots=slots,
            )
            result = trainer.fit()
        if result.error is not None:
            raise result.error
        last = (result.metrics or {}).get("epoch")
        return float(last) if last is not None else float(stop_at if stop_at is not None else spec.max_t)

    if state_path is None:
        last = finished_report(spec, tid)
        if last is not None:
            # the trial finished before the driver stopped, but Tune's saved state (written every few
            # seconds) did not see it end: hand Tune its last report instead of an empty result
            tune.report(last)
            return
        fit(None)
        return
    from gapinit_ray.seedgroup.trial_side import RungGate, run_segments

    run_segments(fit, RungGate(state_path, tune.get_context().get_trial_id()), float(spec.max_t))


def trial_group(spec: SweepSpec, config: dict[str, Any]) -> str:
    """The seed group id of the trial with Tune config ``config``: :func:`~gapinit_ray.seedgroup.ids.group_id`
    of its result columns, the id the results store and the trackers give it too."""
    return group_id(result_config(spec, params_of(config, spec)))


def _group_rank(spec: SweepSpec, group: str) -> int | None:
    """The place of a seed group in the sweep's grid (None: not a grid point, e.g. a sampled axis)."""
    ranks: dict[str, int] = {}
    for point in grid_points(spec):
        ranks.setdefault(group_id(result_config(spec, point)), len(ranks))
    return ranks.get(group)


def finished_report(spec: SweepSpec, tid: str) -> dict[str, Any] | None:
    """The last report (epoch and metrics) of a trial the results store records as TERMINATED, or None
    when it has not finished."""
    from gapinit_ray.results import ResultsStore
    from gapinit_ray.results.store import METRICS

    store = ResultsStore(spec.storage, spec.name)
    trials = store.trials().to_pylist()
    if not any(t["trial_id"] == tid and t["status"] == "TERMINATED" for t in trials):
        return None
    rows = store.metrics(filter={"trial_id": tid}).to_pylist()
    if not rows:
        return None
    last = max(rows, key=lambda r: r["epoch"])
    return {k: last[k] for k in ("epoch", *METRICS) if last.get(k) is not None}


# -------------------------------------------------------------------------- driver-side callback


class SweepProgress:
    """Tune callback: trial rows (status, stop reason, rung), scheduler state, a live progress line."""

    def __new__(cls, spec: SweepSpec, scheduler, quiet: bool = False, slots: str | None = None):
        from ray.tune import Callback
        from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

        from gapinit_ray.results import ResultsStore

        store = ResultsStore(spec.storage, spec.name)
        metric, mode = spec.scheduler.metric, spec.scheduler.mode
        trackers = None
        if spec.loggers:
            from gapinit_ray.trackers import Trackers

            trackers = Trackers(spec, sweep_dir(spec))

        view = ProgressView(quiet=quiet)

        class _Progress(Callback):
            def __init__(self) -> None:
                self.best: tuple[float, str] | None = None

            def _params(self, trial) -> tuple[str, dict]:
                params = params_of(trial.config, spec)
                return trial_id(params), result_config(spec, params)

            def _line(self, trials) -> None:
                status = SweepStatus(Counter(t.status for t in trials), metric=metric, best=self.best)
                if hasattr(scheduler, "rung_state"):
                    status.groups, status.rungs = rung_summary(scheduler.rung_state())
                view.update(status)

            def on_experiment_end(self, trials, **info):
                self._line(trials)
                view.close()
                if trackers is not None:
                    for tid, what in trackers.close().items():  # the trials a tracker did not log
                        kept = store.trial(tid)
                        if kept:
                            config = json.loads(kept["config_json"])
                            store.write_trial(tid, config, status=kept["status"], logger_errors=what)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                tid, params = self._params(trial)
                store.write_trial(
                    tid,
                    params,
                    status="RUNNING",
                    last_epoch=float(result.get("epoch", 0) or 0),
                    checkpoint_path=result.get(CHECKPOINT_PATH_KEY),
                    init_checks=result.get("init_checks") or None,
                )
                if trackers is not None:
                    trackers.result(tid, group_id(params), params, result)
                value = result.get(metric)
                if isinstance(value, int | float) and value == value:
                    better = self.best is None or (
                        value > self.best[0] if mode == "max" else value < self.best[0]
                    )
                    if better:
                        self.best = (float(value), self._params(trial)[0])
                self._line(trials)

            def _release(self, tid: str) -> None:
                # a trial that ended (or died) holding a Train slot gives it back
                from gapinit_ray.seedgroup.slots import release_slot

                release_slot(slots, tid)

            def on_trial_complete(self, iteration, trials, trial, **info):
                tid, params = self._params(trial)
                self._release(tid)
                stopped = _stop_reason(spec, scheduler, trial)
                last = trial.last_result or {}
                status = "STOPPED" if stopped else "TERMINATED"
                store.write_trial(
                    tid,
                    params,
                    status=status,
                    stop_reason=stopped,
                    rung_reached=_rung_reached(scheduler, trial),
                    last_epoch=float(last.get("epoch", 0) or 0),
                )
                if trackers is not None:
                    trackers.end(tid, status, stopped, last.get(CHECKPOINT_PATH_KEY))
                self._line(trials)

            def on_trial_error(self, iteration, trials, trial, **info):
                tid, params = self._params(trial)
                self._release(tid)
                error, reason, text = _trial_error(trial, spec.resources.max_failures)
                with contextlib.suppress(OSError, GapinitError):  # a full disk must not hide the failure
                    write_atomic(error_file(spec, tid), text)
                store.write_trial(tid, params, status="ERROR", stop_reason=reason, error=error)
                if trackers is not None:
                    trackers.end(tid, "ERROR", reason, None)
                self._line(trials)

        return _Progress()


def _trial_error(trial, max_failures: int) -> tuple[str, str, str]:
    """(error, stop reason, full text) of a trial Tune gave up on: the last line of its latest failure,
    from the error file Tune appends every failure to (``Failure # N ...`` then the error), e.g.
    ``LoraInitError: lora.target_modules ... match nothing ...``, how many attempts failed, and the
    whole file."""
    import re

    from gapinit_ray.results.stop_reason import error_stop

    text = ""
    with contextlib.suppress(OSError, TypeError):  # no error file: the trial never got a directory
        text = Path(trial.error_file).read_text(errors="replace")
    latest = text.rpartition("Failure # ")[2].splitlines()[1:]
    lines = [line.strip() for line in latest if line.strip()]
    # `gapinit_ray.lora_init.LoraInitError: ...` -> `LoraInitError: ...`
    error = re.sub(r"^(?:[A-Za-z_]\w*\.)+(?=\w+: )", "", lines[-1]) if lines else "error (no message)"
    n = int(getattr(trial, "num_failures", 0) or 0)
    return error, error_stop(n, max_failures).text(), text or error


def failed_trials(spec: SweepSpec) -> list[str]:
    """One line per trial of the sweep that failed after its retries: its id, attempts, the last line
    of its error and the file holding the whole error text."""
    from gapinit_ray.results import ResultsStore
    from gapinit_ray.results.stop_reason import parse

    lines = []
    for row in ResultsStore(spec.storage, spec.name).trials().to_pylist():
        if row.get("status") != "ERROR":
            continue
        reason = parse(row.get("stop_reason"))
        attempts = reason.attempts if reason is not None and reason.attempts else 1
        path = error_file(spec, row["trial_id"])
        where = f" (full error: {path})" if path.exists() else ""
        lines.append(
            f"trial {row['trial_id']} failed after {attempts} attempt{'s' if attempts != 1 else ''}: "
            f"{row.get('error') or 'no error message'}{where}"
        )
    return lines


def error_file(spec: SweepSpec, tid: str) -> Path:
    """Where a failed trial's full error text is kept: ``<sweep>/errors/<trial id>.txt``."""
    return sweep_dir(spec) / "errors" / f"{tid}.txt"


def _stop_reason(spec: SweepSpec, scheduler, trial) -> str | None:
    """Why the scheduler stopped a trial before max_t (None when it ran to the end), as
    :class:`~gapinit_ray.results.stop_reason.StopReason` text."""
    from gapinit_ray.results.stop_reason import asha_stop, seed_group_stop
    from gapinit_ray.seedgroup.core import asha_milestones
    from gapinit_ray.seedgroup.tune import SeedGroupASHA

    last = (trial.last_result or {}).get("epoch")
    s = spec.scheduler
    milestones = asha_milestones(s.grace_period, spec.max_t, s.reduction_factor)
    if isinstance(scheduler, SeedGroupASHA):
        at = scheduler.stopped_at(trial)  # the milestone (epoch) of the rung
        if at is None:
            return None
        index = milestones.index(at) if at in milestones else sum(1 for m in milestones if m < at)
        return seed_group_stop(index, at).text()
    if s.type == "asha" and last is not None and last < spec.max_t:
        return asha_stop(float(last), milestones).text()
    return None


def _rung_reached(scheduler, trial) -> int | None:
    """How many rungs the trial passed (seed-group ASHA only)."""
    from gapinit_ray.seedgroup.tune import SeedGroupASHA

    if not isinstance(scheduler, SeedGroupASHA):
        return None
    return scheduler.rungs_reached(trial) or 0


# ---------------------------------------------------------------------------------------- driver


def _max_concurrent(spec: SweepSpec, per_group: bool = True) -> int:
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


def calibration_key(tspec: SweepSpec, bspec) -> str:
    """What a trial's GapArtifact depends on beyond the data (its backbone and calibration settings):
    trials with the same key share one artifact, computed once by :func:`prepare`."""
    return json.dumps(
        [bspec.key, tspec.calibration.model_dump(mode="json"), tspec.train.prompt], sort_keys=True
    )


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

    preflight(spec)
    problem = check_resources(spec)  # before anything is written or scheduled: a request no node can grant
    with resource_watch(spec, problem):  # on an autoscaling cluster: what it waits for, every minute
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
        starting = min(grid_size(spec), _max_concurrent(spec))
        if tune.Tuner.can_restore(str(root / "tune")):
            starting = 0
        gate = start_slots(slots, _max_concurrent(spec, per_group=False), expect=starting)
    fn = tune.with_resources(
        tune.with_parameters(
            trainable,
            spec_dict=spec.model_dump(mode="json"),
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
                max_concurrent_trials=_max_concurrent(spec),
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
        _compact(spec)
        return grid
    except RuntimeError as e:
        # Tune builds its ResultGrid from every trial's dir; a trial stopped by the scheduler before it
        # ever started has none ("Should not access `trial_fs_path`..."). The sweep itself finished and
        # its results are in our store, which is what gets reported.
        if "trial_fs_path" not in str(e):
            raise
        _compact(spec)
        return None
    finally:
        if gate is not None:
            import ray

            ray.kill(gate)


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


def _check_same_sweep(spec: SweepSpec, root: Path) -> None:
    """A sweep dir belongs to one spec: running another spec into it would mix trials."""
    path = root / SPEC_FILE
    current = spec.model_dump(mode="json")
    identity = {k: v for k, v in current.items() if k != "loggers"}  # trackers do not change results
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (ValueError, OSError) as e:
            raise GapinitError(
                f"{path}: cannot read this sweep dir's spec ({type(e).__name__}); it is not a gapinit "
                "sweep's spec.json: use another name or storage, or remove the directory"
            ) from None
        saved = {k: v for k, v in saved.items() if k != "loggers"}
        if saved != identity:
            diff = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
            raise GapinitError(
                f"{root} already holds sweep {spec.name!r} run with a different spec (differs in: "
                f"{', '.join(diff)}); use another name or storage, or the original spec to resume"
            )
    else:
        write_atomic(path, json.dumps(current, indent=1, sort_keys=True))
