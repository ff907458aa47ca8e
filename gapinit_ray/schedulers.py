"""Trial schedulers for sweeps: FIFO, Ray's per-trial ASHA, and seed-group ASHA.

Why seed groups
---------------
Per-trial ASHA treats every seed as a separate contestant. Over seeds that means it keeps the lucky
seeds of a configuration and kills the unlucky ones, so "mean ± std over seeds" of the survivors is
biased upward and its spread shrinks -- worst for the least stable baseline (paper: random init std
7.10 vs 1.44 for Gap-Init), which is exactly the comparison the sweeps exist for. :class:`SeedGroupASHA`
makes the configuration the contestant: trials whose configs differ only in the seed form a *group*, the
rung decision is taken on the group's mean once every member has reported at that rung, and a group is
promoted or stopped whole, never split.

How waiting works (Ray Tune 2.60)
---------------------------------
Rungs are ASHA's: milestones ``grace_period * reduction_factor**k`` below ``max_t``. When a member
reports ``time_attr >= milestone`` for the first rung it has not recorded yet, its metric is recorded
there. If other members of its group still have to report at that rung, the scheduler answers
``PAUSE``: Tune saves the trial (``pause_trial`` -> ``Trainable.save``), stops its actor and marks it
``PAUSED``, which frees its resources for the members still running. When the last member records, the
group mean is compared with the group means recorded at that rung so far, with the cutoff of Ray's
``_Bracket.cutoff`` (``nanpercentile`` at ``(1 - 1/η)·100`` of the earlier means, sign-flipped for
``mode="min"``; the first group at a rung has nothing to compare with and continues, a mean equal to the
cutoff continues, a NaN mean continues -- all exactly as Ray's ASHA):

- promoted: the reporting member gets ``CONTINUE``; its paused members are returned, one per call, by
  :meth:`SeedGroupASHA.choose_trial_to_run` (before any PENDING trial), and Tune resumes them from the
  checkpoint taken at the pause;
- stopped: the reporting member gets ``STOP`` and every other live member is stopped with
  ``tune_controller.stop_trial(trial)`` (what Ray's own HyperBand does with paused trials).

Members that error for good (``on_trial_error`` not followed by a retry ``on_trial_add``), are removed,
or complete early (e.g. a trainable that ends before ``max_t``) are no longer waited for; an errored
member's values do not enter the means still to be taken, so its group proceeds with the remaining
members' mean. A trial that reaches ``max_t`` gets ``STOP`` like in Ray's ASHA (``stop_last_trials``),
which Tune treats as a normal finish.

Tune 2.60 neither saves nor restores scheduler state on ``Tuner.restore`` (ray-project/ray#30838: ASHA's
rungs are lost), so :class:`SeedGroupASHA` keeps a JSON state keyed by group key and trial id (ids are
kept by a Tune resume) with :meth:`~SeedGroupASHA.save` / :meth:`~SeedGroupASHA.restore` and
:meth:`~SeedGroupASHA.state_dict` / :meth:`~SeedGroupASHA.load_state_dict`; given ``state_path`` it
writes that file after every change and reads it back on first use after a restore. A restore sets
PAUSED trials to PENDING and Tune starts them, so a member that was waiting at a rung trains one more
step, whose result is ignored, and is paused again (checked with a real ``Tuner.restore``).

Waiting inside the trainable (``wait="in_trial"``)
-------------------------------------------------
Pausing makes Tune kill the member's actor and start a new one later. A trainable that launches a Ray
Train job (Train inside Tune) loses its Train controller and placement group with it, and on Ray 2.60
that hand-over has been seen to stall with placement groups reserved but no Train workers. With
``wait="in_trial"`` the scheduler never pauses: a member whose group is undecided gets ``CONTINUE``,
and the trainable itself ends its Train run at the rung and waits, holding no CPU/GPU, until
:func:`member_plan` (which reads the ``state_path`` file, written after every change) says the group
was promoted or stopped. The reporting member also gets ``CONTINUE`` when its group is stopped or it
reached ``max_t``: its Train run is ending at that report, and its trainable returns by itself once it
has ended (Tune killing a trial whose Train run is still shutting down can leave that run's placement
group reserved). Waiting members of a stopped group, which hold no Train run, are stopped by Tune. The sweep driver uses this mode.

Checkpoints: a paused function trainable is resumed from its latest reported checkpoint; one that reports
none starts again from scratch on every resume (its re-reported rungs are not recorded twice), so the
trainable should report a checkpoint with each result and resume from ``tune.get_checkpoint()``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.result import DEFAULT_METRIC
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from gapinit_ray.atomic import write_atomic
from gapinit_ray.names import SCHEDULERS

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

__all__ = ["SCHEDULER_KINDS", "WAIT_MODES", "MemberPlan", "SeedGroupASHA", "make_scheduler", "member_plan"]

logger = logging.getLogger(__name__)

SCHEDULER_KINDS = SCHEDULERS
WAIT_MODES = ("pause", "in_trial")
STATE_VERSION = 1

# Member status. "active" members may still report and are waited for at a rung; the others are not.
_ACTIVE = "active"
_COMPLETED = "completed"  # finished by Tune (max_t, the trainable ended, a stopper)
_REMOVED = "removed"  # stopped by someone else while PENDING/PAUSED; its recorded values still count
_ERRORED = "errored"  # failed for good; values at rungs not yet decided are left out
_LOST = "lost"  # in the saved state but not in the restored experiment (e.g. restarted under a new id)
_STOPPED = "stopped"  # stopped with its group at a rung
_STATUSES = (_ACTIVE, _COMPLETED, _REMOVED, _ERRORED, _LOST, _STOPPED)
_EXCLUDED = (_ERRORED, _LOST)
_DECISIONS = (TrialScheduler.CONTINUE, TrialScheduler.STOP)


def _check_schedule(
    *, mode: str | None, max_t: float, grace_period: float, reduction_factor: float, time_attr: str
) -> None:
    """Raise ValueError for schedule arguments Ray's ASHA would only ``assert`` on."""
    if not isinstance(time_attr, str) or not time_attr:
        raise ValueError(f"time_attr must be a non-empty string, got {time_attr!r}")
    if mode not in (None, "min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    for name, value in (("max_t", max_t), ("grace_period", grace_period)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if grace_period > max_t:
        raise ValueError(f"grace_period ({grace_period}) must be <= max_t ({max_t})")
    if (
        isinstance(reduction_factor, bool)
        or not isinstance(reduction_factor, int | float)
        or not reduction_factor > 1
    ):
        raise ValueError(f"reduction_factor must be a number > 1, got {reduction_factor!r}")


def make_scheduler(
    kind: str,
    *,
    metric: str,
    mode: str,
    time_attr: str = "epoch",
    grace_period: float = 1,
    reduction_factor: float = 3,
    max_t: float,
    group_size: int | None = None,
    seed_key: str = "seed",
    state_path: str | os.PathLike[str] | None = None,
    wait: str = "pause",
) -> TrialScheduler:
    """Build the scheduler a sweep spec names.

    ``"fifo"`` runs every trial to the end; ``"asha"`` is Ray's per-trial ``AsyncHyperBandScheduler``
    (one bracket, so its rungs are the ones seed-group ASHA uses); ``"seed-group-asha"`` is
    :class:`SeedGroupASHA`. ``group_size``, ``seed_key``, ``state_path`` and ``wait`` only concern the latter and
    are ignored by the other two, so a caller can pass them unconditionally.
    """
    if kind not in SCHEDULER_KINDS:
        raise ValueError(f"unknown scheduler kind {kind!r}; known kinds: {', '.join(SCHEDULER_KINDS)}")
    _check_schedule(
        mode=mode,
        max_t=max_t,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        time_attr=time_attr,
    )
    if kind == "fifo":
        return FIFOScheduler()
    if kind == "asha":
        return AsyncHyperBandScheduler(
            time_attr=time_attr,
            metric=metric,
            mode=mode,
            max_t=max_t,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            brackets=1,
        )
    return SeedGroupASHA(
        time_attr=time_attr,
        metric=metric,
        mode=mode,
        max_t=max_t,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        group_size=group_size,
        seed_key=seed_key,
        state_path=state_path,
        wait=wait,
    )


def asha_milestones(grace_period: float, max_t: float, reduction_factor: float) -> list[float]:
    """The rung milestones of Ray's one-bracket ASHA that can ever decide anything.

    Ray builds ``int(log(max_t/grace)/log(η) + 1)`` rungs ``grace·η**k`` (same float arithmetic here);
    a rung at or above ``max_t`` never decides, because a result with ``time >= max_t`` is stopped
    before the rungs are looked at, so it is left out.
    """
    n = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return [
        grace_period * reduction_factor**k for k in range(n) if grace_period * reduction_factor**k < max_t
    ]


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{name}."))
        else:
            out[name] = v
    return out


def _jsonable(value: Any) -> Any:
    """Make config values JSON-able, stably, for the group key (numpy scalars, tuples, sets, objects)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set | frozenset):
        return sorted(value, key=repr) if isinstance(value, set | frozenset) else list(value)
    return repr(value)


@dataclass
class _Member:
    group: str
    status: str = _ACTIVE
    values: dict[int, float] = field(default_factory=dict)  # rung index -> raw metric value
    waiting: int | None = None  # rung index it is PAUSEd at, waiting for its group's decision


@dataclass
class _Group:
    members: list[str] = field(default_factory=list)
    decisions: dict[int, str] = field(default_factory=dict)  # rung index -> CONTINUE | STOP
    stopped_at: int | None = None  # rung index


class SeedGroupASHA(TrialScheduler):
    """Asynchronous successive halving over seed groups; see the module docstring for the why.

    Args:
        time_attr: monotone progress key in each result (the trainable reports ``epoch``).
        metric, mode: the objective; may instead come from ``tune.TuneConfig`` via
            :meth:`set_search_properties`, as with Ray's schedulers.
        max_t: trials are stopped (finish normally) once ``time_attr >= max_t``.
        grace_period, reduction_factor: ASHA's; rungs at ``grace_period·reduction_factor**k < max_t``.
        group_size: seeds per group. ``None``: a rung waits for the members known so far (those
            ``on_trial_add`` has seen). Set it when trials can be created after others already reached
            a rung (``max_concurrent_trials`` makes Tune create trials lazily), else a rung may be
            decided on the first seeds only; it is relaxed when the search algorithm is finished or
            nothing can run any more (see :meth:`choose_trial_to_run`).
        seed_key: the config key (dotted for nested configs) that holds the seed.
        state_path: optional JSON file written after every state change, and read back when the first
            trial added is one it knows, so a ``Tuner.restore`` (which unpickles the scheduler as it was
            when the run started, and never calls ``restore``) continues with the rungs of the
            interrupted run. Put it inside the experiment directory (a local or shared path).
        wait: ``"pause"``: a member that reaches a rung before the rest of its group is PAUSEd by
            Tune. ``"in_trial"``: it gets ``CONTINUE`` and its trainable waits by itself (see the
            module docstring and :func:`member_plan`); needs ``state_path``.
    """

    # Group decisions pause and stop other trials; buffered results would let a trial run past a rung.
    _supports_buffered_results = False

    def __init__(
        self,
        time_attr: str = "epoch",
        metric: str | None = None,
        mode: str | None = None,
        max_t: float = 100,
        grace_period: float = 1,
        reduction_factor: float = 3,
        group_size: int | None = None,
        seed_key: str = "seed",
        state_path: str | os.PathLike[str] | None = None,
        wait: str = "pause",
    ):
        _check_schedule(
            mode=mode,
            max_t=max_t,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            time_attr=time_attr,
        )
        if group_size is not None and (
            isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1
        ):
            raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
        if not isinstance(seed_key, str) or not seed_key:
            raise ValueError(f"seed_key must be a non-empty string, got {seed_key!r}")
        if wait not in WAIT_MODES:
            raise ValueError(f"wait must be one of {WAIT_MODES}, got {wait!r}")
        if wait == "in_trial" and state_path is None:
            raise ValueError('wait="in_trial" needs a state_path: the trainables read decisions there')
        super().__init__()
        self._wait = wait
        self._time_attr = time_attr
        self._metric = metric
        self._mode = mode
        self._max_t = max_t
        self._grace_period = grace_period
        self._reduction_factor = reduction_factor
        self._group_size = group_size
        self._seed_key = seed_key
        self._state_path = os.fspath(state_path) if state_path is not None else None
        self._milestones = asha_milestones(grace_period, max_t, reduction_factor)
        self._reset_state()
        # runtime-only flags (not part of the saved state)
        self._autoload_checked = False
        self._needs_reconcile = False
        self._flushing = False
        self._saved_version = -1
        self._version = 0
        self._warned_missing_seed = False

    def _reset_state(self) -> None:
        self._members: dict[str, _Member] = {}
        self._groups: dict[str, _Group] = {}
        self._rungs: list[dict[str, float]] = [{} for _ in self._milestones]  # group key -> raw mean
        self._num_stopped = 0

    # ------------------------------------------------------------------------------- Tune interface

    @property
    def _metric_op(self) -> float:
        return -1.0 if self._mode == "min" else 1.0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Take metric/mode from ``TuneConfig`` unless given to the constructor (as Ray's ASHA does)."""
        if (self._metric and metric) or (self._mode and mode):
            return False
        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        if self._metric is None and self._mode:
            self._metric = DEFAULT_METRIC
        return True

    def group_of(self, trial: Trial) -> str:
        """The group key: the trial's flattened config without the seed, as sorted compact JSON."""
        flat = _flatten(trial.config or {})
        if self._seed_key not in flat and not self._warned_missing_seed:
            self._warned_missing_seed = True
            logger.warning(
                "SeedGroupASHA: trial %s has no %r in its config; it is grouped by its whole config "
                "(pass seed_key= if the seed axis has another name)",
                trial.trial_id,
                self._seed_key,
            )
        flat.pop(self._seed_key, None)
        return json.dumps(flat, sort_keys=True, separators=(",", ":"), default=_jsonable)

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        self._maybe_autoload(trial.trial_id)
        if not self._metric or not self._mode:
            raise ValueError(
                f"SeedGroupASHA has no metric ({self._metric!r}) or mode ({self._mode!r}); pass them "
                "to the scheduler or to tune.TuneConfig"
            )
        tid = trial.trial_id
        member = self._members.get(tid)
        if member is not None:
            # Tune re-adds a trial after a recoverable error (on_trial_error, then on_trial_add) and
            # every trial on an experiment restore; the id is the same, so it keeps its record.
            group = self._groups[member.group]
            if group.stopped_at is not None:
                member.status = _STOPPED
            elif trial.status in (Trial.PENDING, Trial.RUNNING, Trial.PAUSED):
                member.status = _ACTIVE
            elif trial.status == Trial.ERROR and member.status == _ACTIVE:
                member.status = _ERRORED
            elif trial.status == Trial.TERMINATED and member.status == _ACTIVE:
                member.status = _COMPLETED
            self._changed()
            self._autosave()
            return
        key = self.group_of(trial)
        group = self._groups.setdefault(key, _Group())
        counted = [m for m in group.members if self._members[m].status not in _EXCLUDED]
        if self._group_size is not None and len(counted) >= self._group_size:
            if self._needs_reconcile:
                # mid-restore: members missing from the restored run are only marked lost later
                logger.warning("SeedGroupASHA: group %s has more than %d members", key, self._group_size)
            else:
                raise ValueError(
                    f"trial {tid} would be member {len(counted) + 1} of a group of group_size="
                    f"{self._group_size} seeds ({key}); set group_size to the number of seeds per "
                    f"configuration (or None), and check that seed_key={self._seed_key!r} is the seed"
                )
        if group.stopped_at is not None:
            status = _STOPPED  # joined a group that is already out: stopped at the next controller step
        elif trial.status == Trial.TERMINATED:
            status = _COMPLETED
        elif trial.status == Trial.ERROR:
            status = _ERRORED
        else:
            status = _ACTIVE
        self._members[tid] = _Member(group=key, status=status)
        group.members.append(tid)
        self._changed()
        self._autosave()

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        tid = trial.trial_id
        self._maybe_autoload(tid)
        if tid not in self._members:
            self.on_trial_add(tune_controller, trial)
        self._sync(tune_controller)
        partial = self._searcher_finished(tune_controller)
        self._settle(allow_partial=partial)
        decision = self._decide(tid, result, allow_partial=partial)
        self._flush_stops(tune_controller, exclude=tid)
        self._changed()
        self._autosave()
        return decision

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict) -> None:
        """A member finished (``max_t``, its trainable ended, a stopper, or our own STOP).

        Like Ray's ASHA, a result that passes a rung the member has not recorded yet is recorded (a
        class trainable's ``done=True`` result never reaches ``on_trial_result``). The member is no
        longer waited for; groups it blocked are decided at the next ``choose_trial_to_run``.
        """
        member = self._members.get(trial.trial_id)
        if member is None:
            return
        group = self._groups[member.group]
        if group.stopped_at is None and result:
            t, value = result.get(self._time_attr), result.get(self._metric)
            rung = self._next_rung(member, t) if t is not None else None
            if rung is not None and value is not None:
                member.values[rung] = float(value)
        member.waiting = None
        if group.stopped_at is not None:
            member.status = _STOPPED
        elif member.status == _ACTIVE:
            member.status = _COMPLETED
        self._changed()
        self._autosave()

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        """A PENDING/PAUSED member was stopped (by us for a stopped group, or by someone else)."""
        member = self._members.get(trial.trial_id)
        if member is None:
            return
        member.waiting = None
        if self._groups[member.group].stopped_at is not None:
            member.status = _STOPPED
        elif member.status == _ACTIVE:
            member.status = _REMOVED
        self._changed()
        self._autosave()

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        """A member failed. Its group is not decided here: Tune follows a recoverable error with
        ``on_trial_add`` of the same trial, which makes it active again; only a final error leaves it
        out, and then the group proceeds with the remaining members' mean at the next controller step.
        """
        member = self._members.get(trial.trial_id)
        if member is None:
            return
        # `waiting` is kept: a retried member is still waiting at its rung; it only counts for active ones
        if self._groups[member.group].stopped_at is not None:
            member.status, member.waiting = _STOPPED, None
        elif member.status == _ACTIVE:
            member.status = _ERRORED
        self._changed()
        self._autosave()

    def choose_trial_to_run(self, tune_controller: TuneController) -> Trial | None:
        """Promoted PAUSED members first (trial order), then PENDING trials FIFO, else None.

        Also the place where the controller's steps reach the scheduler without a result: groups that
        an error, removal or early completion unblocked are decided here, and members of stopped groups
        are stopped. Members waiting at a rung are never returned. With ``group_size``, a rung that
        waits only for members not created yet is decided with the members present once the search
        algorithm is finished, or when nothing is RUNNING or PENDING and nothing can be resumed (with
        ``max_concurrent_trials`` Tune's generator creates no trial while the paused ones are live).
        """
        self._maybe_autoload(None)
        self._sync(tune_controller)
        self._settle(allow_partial=self._searcher_finished(tune_controller))
        self._flush_stops(tune_controller)
        chosen = self._pick(tune_controller)
        if chosen is None and self._group_size is not None and self._stalled(tune_controller):
            before = self._version
            self._settle(allow_partial=True)
            if self._version != before:
                logger.warning(
                    "SeedGroupASHA: nothing could run while members waited for seeds that do not exist "
                    "yet; decided those rungs with the members present (raise max_concurrent_trials, or "
                    "order the search so that a configuration's seeds are created together)"
                )
            self._flush_stops(tune_controller)
            chosen = self._pick(tune_controller)
        self._autosave()
        return chosen

    def debug_string(self) -> str:
        counts = dict.fromkeys(("running", "waiting", "stopped", "finished"), 0)
        for key in self._groups:
            counts[self._group_decision(key)] += 1
        rungs = " | ".join(
            f"{self._time_attr} {m:g}: {len(self._rungs[i])} group(s), cutoff {self._raw_cutoff(i)}"
            for i, m in enumerate(self._milestones)
        )
        return (
            f"Using SeedGroupASHA: {len(self._groups)} group(s) "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f"; trials stopped: {self._num_stopped}\nRungs: {rungs or 'none'}"
        )

    # ------------------------------------------------------------------------------- introspection

    @property
    def milestones(self) -> list[float]:
        return list(self._milestones)

    def rung_state(self) -> dict[str, Any]:
        """A snapshot keyed by milestone: per rung the recorded group means and the current cutoff (in
        metric units); per group its members, their values per rung, the decisions, its state
        (running / waiting / stopped / finished) and the milestone it was stopped at."""
        ms = self._milestones
        return {
            "milestones": list(ms),
            "rungs": {
                ms[i]: {"group_means": dict(self._rungs[i]), "cutoff": self._raw_cutoff(i)}
                for i in range(len(ms))
            },
            "groups": {
                key: {
                    "members": list(g.members),
                    "member_status": {tid: self._members[tid].status for tid in g.members},
                    "values": {
                        tid: {ms[r]: v for r, v in sorted(self._members[tid].values.items())}
                        for tid in g.members
                    },
                    "decisions": {ms[r]: d for r, d in sorted(g.decisions.items())},
                    "decision": self._group_decision(key),
                    "stopped_at": ms[g.stopped_at] if g.stopped_at is not None else None,
                }
                for key, g in self._groups.items()
            },
        }

    # ------------------------------------------------------------------------------- persistence

    def _settings(self) -> dict[str, Any]:
        return {
            "time_attr": self._time_attr,
            "metric": self._metric,
            "mode": self._mode,
            "max_t": self._max_t,
            "grace_period": self._grace_period,
            "reduction_factor": self._reduction_factor,
            "group_size": self._group_size,
            "seed_key": self._seed_key,
            "milestones": list(self._milestones),
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state keyed by group key and trial id (no Trial objects: Tune's ids
        survive a resume, the objects do not). Metric values may be NaN, which ``json`` writes as NaN."""
        return {
            "version": STATE_VERSION,
            "settings": self._settings(),
            "rungs": [dict(r) for r in self._rungs],
            "groups": {
                key: {
                    "members": list(g.members),
                    "decisions": {str(r): d for r, d in g.decisions.items()},
                    "stopped_at": g.stopped_at,
                }
                for key, g in self._groups.items()
            },
            "trials": {
                tid: {
                    "group": m.group,
                    "status": m.status,
                    "values": {str(r): v for r, v in m.values.items()},
                    "waiting": m.waiting,
                }
                for tid, m in self._members.items()
            },
            "num_stopped": self._num_stopped,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this scheduler's state by ``state``; the schedule settings must match (metric/mode
        are adopted if this scheduler has none yet). Trials of the state that the restored experiment
        does not contain are marked lost at the next controller step."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"not a SeedGroupASHA state of version {STATE_VERSION} "
                f"(got version {state.get('version') if isinstance(state, Mapping) else type(state)!r})"
            )
        saved = state.get("settings") or {}
        mine = self._settings()
        for k in ("metric", "mode"):
            if mine[k] is None:
                mine[k] = saved.get(k)
        diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
        if diff:
            raise ValueError(
                "saved SeedGroupASHA state was made with other settings (saved, this scheduler): "
                + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in diff.items())
            )
        try:
            rungs = [{str(k): float(v) for k, v in r.items()} for r in state["rungs"]]
            groups = {
                str(key): _Group(
                    members=[str(t) for t in g["members"]],
                    decisions={int(r): str(d) for r, d in g["decisions"].items()},
                    stopped_at=None if g["stopped_at"] is None else int(g["stopped_at"]),
                )
                for key, g in state["groups"].items()
            }
            members = {
                str(tid): _Member(
                    group=str(m["group"]),
                    status=str(m["status"]),
                    values={int(r): float(v) for r, v in m["values"].items()},
                    waiting=None if m["waiting"] is None else int(m["waiting"]),
                )
                for tid, m in state["trials"].items()
            }
            num_stopped = int(state["num_stopped"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed SeedGroupASHA state: {e!r}") from None
        n = len(self._milestones)
        bad = (
            len(rungs) != n
            or any(m.group not in groups or m.status not in _STATUSES for m in members.values())
            or any(t not in members for g in groups.values() for t in g.members)
            or any(
                d not in _DECISIONS or not 0 <= r < n for g in groups.values() for r, d in g.decisions.items()
            )
        )
        if bad:
            raise ValueError("malformed SeedGroupASHA state: inconsistent rungs, groups or trials")
        self._metric, self._mode = mine["metric"], mine["mode"]
        self._rungs, self._groups, self._members, self._num_stopped = rungs, groups, members, num_stopped
        self._needs_reconcile = True
        self._autoload_checked = True
        self._changed()

    def save(self, checkpoint_path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` as JSON, atomically (a crash never leaves half a file)."""
        write_atomic(checkpoint_path, json.dumps(self.state_dict()))

    def restore(self, checkpoint_path: str | os.PathLike[str]) -> None:
        """Load a file written by :meth:`save`."""
        with open(os.fspath(checkpoint_path), encoding="utf-8") as f:
            try:
                state = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{os.fspath(checkpoint_path)}: not a SeedGroupASHA state: {e}") from None
        self.load_state_dict(state)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the scheduler into tuner.pkl; runtime flags start fresh in the copy.
        state = self.__dict__.copy()
        state["_autoload_checked"] = False
        state["_flushing"] = False
        state["_saved_version"] = -1
        return state

    # ------------------------------------------------------------------------------- internals

    def _changed(self) -> None:
        self._version += 1

    def _autosave(self) -> None:
        if self._state_path is not None and self._saved_version != self._version:
            self.save(self._state_path)
            self._saved_version = self._version

    def _maybe_autoload(self, trial_id: str | None) -> None:
        """On the first trial added, read ``state_path`` if it holds that trial (a restored sweep).

        A file that does not know the trial is another run's (same experiment name reused): loading it
        would put old rung means and stopped groups into a new sweep, so it is ignored and overwritten.
        """
        if self._autoload_checked or trial_id is None:
            return
        self._autoload_checked = True
        if self._state_path is None or self._members or not os.path.exists(self._state_path):
            return
        with open(self._state_path, encoding="utf-8") as f:
            try:
                state = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self._state_path}: not a SeedGroupASHA state: {e}") from None
        if trial_id not in (state.get("trials") or {}):
            logger.warning(
                "SeedGroupASHA: %s does not know trial %s; it is left from another run and is ignored",
                self._state_path,
                trial_id,
            )
            return
        logger.info("SeedGroupASHA: restoring rung state from %s", self._state_path)
        self.load_state_dict(state)

    def _next_rung(self, member: _Member, t: float) -> int | None:
        """Lowest rung the member has passed (``t >= milestone``) but not recorded yet.

        Rungs are recorded in order, one per result, so every member of a group is judged at every
        rung. (Ray's ASHA records the highest rung passed and fills lower ones on later results; with
        one result per time step, e.g. per epoch, the two coincide.)
        """
        for i, milestone in enumerate(self._milestones):
            if t < milestone:
                return None
            if i not in member.values:
                return i
        return None

    def _signed_cutoff(self, rung: int) -> float | None:
        """Ray's ``_Bracket.cutoff`` over the group means recorded at ``rung`` (sign-adjusted)."""
        recorded = [self._metric_op * v for v in self._rungs[rung].values()]
        if not recorded:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rung: nan, as in Ray
            return float(np.nanpercentile(recorded, (1 - 1 / self._reduction_factor) * 100))

    def _raw_cutoff(self, rung: int) -> float | None:
        c = self._signed_cutoff(rung)
        return None if c is None else self._metric_op * c

    def _try_decide(self, key: str, rung: int, *, allow_partial: bool) -> str | None:
        """Decide ``rung`` for group ``key`` if every member still expected there has recorded."""
        group = self._groups[key]
        if rung in group.decisions:
            return group.decisions[rung]
        members = [self._members[t] for t in group.members]
        if any(m.status == _ACTIVE and rung not in m.values for m in members):
            return None
        if self._group_size is not None and len(group.members) < self._group_size and not allow_partial:
            return None
        values = [m.values[rung] for m in members if m.status not in _EXCLUDED and rung in m.values]
        if not values:
            return None
        mean = float(np.mean(values))
        cutoff = self._signed_cutoff(rung)  # over the groups recorded before this one, as in Ray
        decision = (
            TrialScheduler.STOP
            if cutoff is not None and self._metric_op * mean < cutoff
            else TrialScheduler.CONTINUE
        )
        self._rungs[rung][key] = mean
        group.decisions[rung] = decision
        self._changed()
        for m in members:
            if m.waiting == rung:
                m.waiting = None
        if decision == TrialScheduler.STOP:
            group.stopped_at = rung
            for m in members:
                if m.status == _ACTIVE:
                    m.status = _STOPPED
                    self._num_stopped += 1
        logger.debug("SeedGroupASHA: %s at %s=%s: mean %s -> %s", key, self._time_attr, rung, mean, decision)
        return decision

    def _advance(self, key: str, *, allow_partial: bool) -> None:
        group = self._groups[key]
        while group.stopped_at is None:
            pending = sorted(
                {r for t in group.members for r in self._members[t].values} - set(group.decisions)
            )
            if not pending or self._try_decide(key, pending[0], allow_partial=allow_partial) is None:
                return

    def _settle(self, *, allow_partial: bool) -> None:
        """Decide every rung that has become decidable (errors, removals, early finishes)."""
        for key in list(self._groups):
            self._advance(key, allow_partial=allow_partial)

    def _decide(self, tid: str, result: Mapping[str, Any], *, allow_partial: bool) -> str:
        member = self._members[tid]
        group = self._groups[member.group]
        if group.stopped_at is not None:
            member.status, member.waiting = _STOPPED, None
            return TrialScheduler.STOP
        if member.status != _ACTIVE:
            member.status = _ACTIVE  # it reports, so it runs (e.g. re-added without our noticing)
        if member.waiting is not None:
            # still waiting for its group at that rung (e.g. Tune restarted it after a restore)
            return self._wait_answer
        t, value = result.get(self._time_attr), result.get(self._metric)
        if t is None or value is None:
            return TrialScheduler.CONTINUE  # Ray's ASHA: no decision without both
        if t >= self._max_t:
            member.status = _COMPLETED
            # Ray's stop_last_trials: a normal finish. in_trial: the trainable ends by itself once its
            # Train run has, rather than Tune killing it while the run shuts down
            return TrialScheduler.STOP if self._wait == "pause" else TrialScheduler.CONTINUE
        rung = self._next_rung(member, t)
        if rung is None:
            return TrialScheduler.CONTINUE
        member.values[rung] = float(value)
        decision = self._try_decide(member.group, rung, allow_partial=allow_partial)
        if decision is None:
            member.waiting = rung
            return self._wait_answer
        if self._wait == "in_trial":
            # the reporter's Train run ends at this rung anyway; its trainable reads the decision
            # (member_plan: "stop") and returns, so Tune never kills a trial with a live Train run
            return TrialScheduler.CONTINUE
        return decision

    @property
    def _wait_answer(self) -> str:
        return TrialScheduler.PAUSE if self._wait == "pause" else TrialScheduler.CONTINUE

    def _sync(self, controller: Any) -> None:
        """Mark saved members the restored experiment lacks as lost; catch finishes we were not told."""
        get_trials = getattr(controller, "get_trials", None)
        if get_trials is None:
            return
        trials = list(get_trials())
        if self._needs_reconcile:
            self._needs_reconcile = False
            present = {t.trial_id for t in trials}
            for tid, m in self._members.items():
                if tid not in present and m.status == _ACTIVE:
                    m.status, m.waiting = _LOST, None
                    self._changed()
        for t in trials:
            m = self._members.get(t.trial_id)
            if m is not None and m.status == _ACTIVE and t.status in (Trial.TERMINATED, Trial.ERROR):
                m.status = _COMPLETED if t.status == Trial.TERMINATED else _ERRORED
                self._changed()

    def _flush_stops(self, controller: Any, exclude: str | None = None) -> None:
        """Stop the live trials of stopped groups via ``controller.stop_trial`` (Ray's HyperBand does the
        same for paused trials). ``stop_trial`` calls back into ``on_trial_remove``/``on_trial_complete``,
        hence the re-entrancy guard."""
        if self._flushing or getattr(controller, "get_trials", None) is None:
            return
        self._flushing = True
        try:
            for trial in list(controller.get_trials()):
                m = self._members.get(trial.trial_id)
                if m is None or trial.trial_id == exclude:
                    continue
                if self._groups[m.group].stopped_at is None:
                    continue
                if trial.status in (Trial.TERMINATED, Trial.ERROR):
                    continue
                if self._wait == "in_trial" and trial.status == Trial.RUNNING:
                    # its trainable reads the stop (member_plan) and returns, ending a held Train run
                    # first: stopping it here would kill that run mid-hold or mid-shutdown
                    continue
                m.status, m.waiting = _STOPPED, None
                self._changed()
                controller.stop_trial(trial)
        finally:
            self._flushing = False

    def _pick(self, controller: Any) -> Trial | None:
        trials = list(controller.get_trials())
        for trial in trials:
            m = self._members.get(trial.trial_id)
            if (
                trial.status == Trial.PAUSED
                and m is not None
                and m.waiting is None
                and self._groups[m.group].stopped_at is None
            ):
                return trial
        for trial in trials:
            m = self._members.get(trial.trial_id)
            if trial.status == Trial.PENDING and (m is None or self._groups[m.group].stopped_at is None):
                return trial
        for trial in trials:  # PAUSED by someone else: FIFOScheduler resumes those too
            if trial.status == Trial.PAUSED and trial.trial_id not in self._members:
                return trial
        return None

    def _stalled(self, controller: Any) -> bool:
        trials = list(controller.get_trials())
        for t in trials:
            if t.status == Trial.PENDING:
                return False
            if t.status == Trial.RUNNING:
                m = self._members.get(t.trial_id)
                # in_trial: a RUNNING member waiting at a rung trains nothing until its group is decided
                if self._wait == "pause" or m is None or m.waiting is None:
                    return False
        return any(m.waiting is not None and m.status == _ACTIVE for m in self._members.values())

    @staticmethod
    def _searcher_finished(controller: Any) -> bool:
        search_alg = getattr(controller, "search_alg", None)
        is_finished = getattr(search_alg, "is_finished", None)
        try:
            return bool(is_finished()) if callable(is_finished) else False
        except Exception:  # a searcher that cannot tell is treated as still creating trials
            return False

    def _group_decision(self, key: str) -> str:
        group = self._groups[key]
        if group.stopped_at is not None:
            return "stopped"
        members = [self._members[t] for t in group.members]
        if any(m.waiting is not None and m.status == _ACTIVE for m in members):
            return "waiting"
        if members and all(m.status != _ACTIVE for m in members):
            return "finished"
        return "running"


# ----------------------------------------------------------------------------- waiting in the trial


@dataclass(frozen=True)
class MemberPlan:
    """What a member's trainable does next under ``wait="in_trial"`` (see :func:`member_plan`).

    ``action``: ``"train"`` (until epoch ``stop_at``, the milestone of rung ``rung``; ``stop_at`` None:
    to the end), ``"wait"`` (its value at ``rung`` is recorded, the group is not decided yet),
    ``"stop"`` (its group was stopped) or ``"unknown"`` (the state does not know the trial yet).
    """

    action: str
    rung: int | None = None
    stop_at: float | None = None


def member_plan(state_path: str | os.PathLike[str], trial_id: str) -> MemberPlan:
    """Read the scheduler's state file and tell trial ``trial_id`` whether to train, wait or stop.

    Rungs are walked in order: the first rung its group has not decided is the one that matters. If
    the member already recorded a value there it waits; else it trains up to that rung's milestone.
    Past the last rung it trains to the end. The file is written atomically, so a read never sees half
    a state; a missing or unreadable file reads as ``"unknown"``.
    """
    try:
        with open(os.fspath(state_path), encoding="utf-8") as f:
            state = json.load(f)
        member = state["trials"][trial_id]
        group = state["groups"][member["group"]]
        milestones = [float(m) for m in state["settings"]["milestones"]]
        decisions = {int(r): d for r, d in group["decisions"].items()}
        recorded = {int(r) for r in member["values"]}
    except (OSError, ValueError, KeyError, TypeError):
        return MemberPlan("unknown")
    if group.get("stopped_at") is not None or member.get("status") == _STOPPED:
        return MemberPlan("stop", group.get("stopped_at"))
    rung = 0
    while rung in decisions:
        if decisions[rung] == TrialScheduler.STOP:
            return MemberPlan("stop", rung)
        rung += 1
    if rung >= len(milestones):
        return MemberPlan("train", None, None)
    if rung in recorded:
        return MemberPlan("wait", rung, milestones[rung])
    return MemberPlan("train", rung, milestones[rung])


def group_on_its_way(state_path: str | os.PathLike[str], trial_id: str, running: Iterable[str]) -> bool:
    """Whether every other member of ``trial_id``'s group that has yet to report at the group's current
    rung is running a Train job now (its Tune id in ``running``), and the group is whole (all
    ``group_size`` members created). Then the rung's decision is on its way -- those members hold their
    CPUs/GPUs and will get there -- and a member waiting there can keep its run instead of ending it
    and starting another from the checkpoint. False whenever the state cannot tell."""
    try:
        with open(os.fspath(state_path), encoding="utf-8") as f:
            state = json.load(f)
        member = state["trials"][trial_id]
        group = state["groups"][member["group"]]
        decided = {int(r) for r in group["decisions"]}
        size = int(state["settings"]["group_size"])
        rung = 0
        while rung in decided:
            rung += 1
        others = [state["trials"][t] | {"id": t} for t in group["members"] if t != trial_id]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if len(others) + 1 < size:
        return False
    running = set(running)
    return all(
        o["id"] in running
        for o in others
        if o.get("status") == _ACTIVE and str(rung) not in (o.get("values") or {})
    )


def may_hold(
    state_path: str | os.PathLike[str],
    trial_id: str,
    running: Iterable[str],
    starting: Iterable[str],
    held_s: float,
    starting_grace_s: float,
) -> bool:
    """Whether a member at its group's undecided rung may keep (hold) its Train run there.

    Yes when the group's other members still to report are all running (:func:`group_on_its_way`).
    Members whose Train run is still starting (``starting``: they hold a Train slot but their workers
    are not up yet, e.g. waiting for a placement group) count too, but only for the first
    ``starting_grace_s`` seconds of the hold (``held_s`` so far): a sibling that the cluster's CPUs/GPUs
    fit starts within that; one that waits for the resources this member holds never would, so the
    member then ends its run and frees them.
    """
    running = list(running)
    if group_on_its_way(state_path, trial_id, running):
        return True
    return held_s < starting_grace_s and group_on_its_way(state_path, trial_id, [*running, *starting])


#: :func:`promoted_plan`'s answer while a member holds its run at a rung (ask again later).
HOLD = "hold"


def promoted_plan(
    state_path: str | os.PathLike[str],
    trial_id: str,
    reached: float,
    timeout_s: float = 20.0,
    poll_s: float = 0.2,
    hold: Callable[[], bool] | None = None,
) -> MemberPlan | str | None:
    """A member's Train run right after its report at epoch ``reached`` (a rung's milestone): wait until
    the scheduler has recorded that report (at most ``timeout_s``), then return the plan when its group
    was promoted there -- the run goes on to ``plan.stop_at`` (``None``: to the end) -- or ``None``
    when it was not (``stop``), or not recorded in time: the run ends there and the trainable waits for
    the group (:func:`member_plan`).

    While the group is undecided (``wait``: others still to report): :data:`HOLD` when ``hold()`` says
    the others are on their way (:func:`group_on_its_way`; the caller asks again a little later), else
    ``None``: the run ends and frees its slot."""
    deadline = time.monotonic() + timeout_s
    while True:
        plan = member_plan(state_path, trial_id)
        if plan.action == "train" and (plan.stop_at is None or plan.stop_at > reached):
            return plan
        if plan.action == "stop":
            return None
        if plan.action == "wait":
            return HOLD if hold is not None and hold() else None
        if time.monotonic() > deadline:
            return None
        time.sleep(poll_s)  # "unknown", or "train" up to `reached`: the report is not recorded yet
