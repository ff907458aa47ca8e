"""The trial side of a sweep: the Tune function trainable that runs one trial's Ray Train job (in
segments at seed-group rungs), the Train callback that writes every report to the results store, and
the trial's seed group (:mod:`gapinit_ray.sweep` drives Tune with them).
"""

from __future__ import annotations

import json
import socket
from typing import Any

from ray.train import UserCallback  # Ray Train v2 (the default in Ray 2.60)

from gapinit_ray.plan import PlannedTrial, params_of, plan_trial, remember
from gapinit_ray.spec import SweepSpec
from gapinit_ray.trial import prepare_artifact


class ResultsCallback(UserCallback):
    """Ray Train callback (runs in the trial's Train controller): every report becomes a Parquet row."""

    def __init__(self, storage: str, sweep: str, tid: str, params: dict) -> None:
        self.storage, self.sweep, self.tid, self.params = storage, sweep, tid, params

    def after_report(self, run_context, metrics, checkpoint):
        from gapinit_ray.results import ResultsStore

        row = dict(metrics[0])  # rank 0's report names the node it ran on
        ResultsStore(self.storage, self.sweep).write_report(
            self.tid, self.params, row, host=str(row.get("worker_host") or socket.gethostname())
        )


def trainable(
    config: dict[str, Any],
    spec: SweepSpec,
    planned: list[PlannedTrial],
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

    ``spec`` (validated) and ``planned`` (its grid trials, validated) come from the driver: no trial
    validates a spec again (a trial of a sampled axis, not in ``planned``, validates its own once).
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from gapinit_ray.seedgroup.slots import train_slot
    from gapinit_ray.seedgroup.trial_side import MemberRun
    from gapinit_ray.trial import build_trainer

    remember(spec, planned)
    trial = plan_trial(spec, params_of(config, spec))
    params, tid, columns, group = trial.params, trial.trial_id, trial.config, trial.group_id
    rank = _group_rank(planned, group)
    tspec, bspec = trial.spec, trial.backbone
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
                member=MemberRun(state_path, tune_id, slots) if state_path and tune_id else None,
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
    return plan_trial(spec, params_of(config, spec)).group_id


def _group_rank(planned: list[PlannedTrial], group: str) -> int | None:
    """The place of a seed group in the sweep's grid (``planned``, in grid order; None: not a grid
    point, e.g. a sampled axis)."""
    ranks: dict[str, int] = {}
    for trial in planned:
        ranks.setdefault(trial.group_id, len(ranks))
    return ranks.get(group)


def finished_report(spec: SweepSpec, tid: str) -> dict[str, Any] | None:
    """The last report of a trial the results store records as TERMINATED (its epoch and every metric
    it reported, the sweep's own ones such as ``val_vqa_acc`` or a transfer split's included), or None
    when it has not finished. The scheduler's metric is always there (NaN where the row has none:
    a metric that came out NaN is stored as null), since Tune refuses a result without it."""
    import math

    from gapinit_ray.results import ResultsStore
    from gapinit_ray.results.aggregate import metric_columns

    store = ResultsStore(spec.storage, spec.name)
    trials = store.trials().to_pylist()
    if not any(t["trial_id"] == tid and t["status"] == "TERMINATED" for t in trials):
        return None
    table = store.metrics(filter={"trial_id": tid})
    if not table.num_rows:
        return None
    last = max(table.to_pylist(), key=lambda r: r["epoch"])
    report = {k: last[k] for k in ("epoch", *metric_columns(table)) if last.get(k) is not None}
    report.setdefault(spec.scheduler.metric, math.nan)
    return report


def calibration_key(tspec: SweepSpec, bspec) -> str:
    """What a trial's GapArtifact depends on beyond the data (its backbone and calibration settings):
    trials with the same key share one artifact, computed once by :func:`gapinit_ray.sweep.prepare`."""
    return json.dumps(
        [bspec.key, tspec.calibration.model_dump(mode="json"), tspec.train.prompt], sort_keys=True
    )
