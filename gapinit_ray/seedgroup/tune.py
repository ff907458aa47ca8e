"""Seed-group ASHA as a Ray Tune scheduler: a thin adapter over :class:`~.core.RungBook`.

The book decides; this class maps Tune's hooks onto it and writes the book's events to the shared
state (:mod:`~gapinit_ray.seedgroup.state`), where each member's trainable reads what to do next
(:mod:`~gapinit_ray.seedgroup.trial_side`): train to the group's next rung, wait there, go on, or end.

Members wait inside their trainable, never PAUSEd by Tune: pausing would kill the trial's actor, and a
trainable that runs a Ray Train job (Train inside Tune) loses its Train controller and placement group
with it (on Ray 2.60 that hand-over has been seen to stall with placement groups reserved but no Train
workers). So every result is answered ``CONTINUE``, even when the book stopped the member's group or
the member reached ``max_t``: the trainable's Train run is ending at that very report (or holding at
the rung) and the trainable returns by itself once it has ended; a ``STOP`` would make Tune kill the
trial while its Train run shuts down (which can leave the run's placement group reserved). For the
same reason running members of a stopped group are not stopped through Tune either: they read the
decision within a second and end gracefully. Only members that never started (PENDING) are stopped by
Tune (what Ray's HyperBand does with paused trials). The decision is recorded truthfully in the book,
and :meth:`SeedGroupASHA.stopped_at` gives the trial's stop reason.

Members that error for good, are removed, or complete early are no longer waited for; an errored
member's values do not enter the means still to be taken. Tune 2.60 neither saves nor restores
scheduler state on ``Tuner.restore`` (ray-project/ray#30838), so with ``state_path`` the state files
are also how a resumed sweep gets its rungs back: the first trial added that they know makes the
scheduler load them (a file that does not know it is another run's, and is started afresh).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.result import DEFAULT_METRIC
from ray.tune.schedulers import TrialScheduler

from gapinit_ray.seedgroup import state as st
from gapinit_ray.seedgroup.core import (
    ACTIVE,
    COMPLETED,
    ERRORED,
    LOST,
    REMOVED,
    STOPPED,
    RungBook,
    Schedule,
)
from gapinit_ray.seedgroup.ids import group_body, group_id

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

logger = logging.getLogger(__name__)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class SeedGroupASHA(TrialScheduler):
    """Asynchronous successive halving over seed groups (see :mod:`gapinit_ray.seedgroup.core`).

    Args:
        time_attr, metric, mode, max_t, grace_period, reduction_factor: ASHA's (metric/mode may come
            from ``tune.TuneConfig`` via :meth:`set_search_properties`, as with Ray's schedulers).
        group_size: seeds per group; ``None``: a rung waits for the members known so far. With it, a
            rung that waits only for members not created yet is decided with those present once the
            search algorithm is finished or nothing else can run.
        seed_key: the config key (dotted for nested configs) holding the seed.
        state_path: the shared state's snapshot file (:func:`~.state.state_path`); the trials read
            their plans there. ``None``: in memory only (tests).
        group_of: the trial config -> group id function; default :func:`~.ids.group_id` of the
            flattened config without ``seed_key``. The sweep passes one giving the results store's id.
    """

    # group decisions hold other trials; buffered results would let a trial run past a rung
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
        group_of: Callable[[dict[str, Any]], str] | None = None,
    ):
        schedule = Schedule(max_t, grace_period, reduction_factor, time_attr, metric, mode, group_size)
        if not isinstance(seed_key, str) or not seed_key:
            raise ValueError(f"seed_key must be a non-empty string, got {seed_key!r}")
        super().__init__()
        self._metric, self._mode = metric, mode
        self._seed_key = seed_key
        self._group_fn = group_of
        self._writer = st.StateWriter(state_path) if state_path is not None else None
        self._book = RungBook(schedule)
        self._started = False  # the state files were looked at (first trial added)
        self._needs_reconcile = False
        self._flushing = False
        self._warned_missing_seed = False

    # ----------------------------------------------------------------------------- settings

    @property
    def schedule(self) -> Schedule:
        return self._book.schedule

    @property
    def milestones(self) -> list[float]:
        return list(self._book.milestones)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Take metric/mode from ``TuneConfig`` unless given to the constructor (as Ray's ASHA does)."""
        if (self._metric and metric) or (self._mode and mode):
            return False
        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        if self._metric is None and self._mode:
            self._metric = DEFAULT_METRIC
        self.schedule.metric, self.schedule.mode = self._metric, self._mode
        return True

    def group_of(self, trial: Trial) -> str:
        """The trial's group id (see ``group_of`` in the class docstring)."""
        config = trial.config or {}
        if self._group_fn is not None:
            return self._group_fn(config)
        flat = _flatten(config)
        if self._seed_key not in flat and not self._warned_missing_seed:
            self._warned_missing_seed = True
            logger.warning(
                "SeedGroupASHA: trial %s has no %r in its config; it is grouped by its whole config "
                "(pass seed_key= if the seed axis has another name)",
                trial.trial_id,
                self._seed_key,
            )
        return group_id(flat, self._seed_key)

    # ----------------------------------------------------------------------------- Tune hooks

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        self._start(trial.trial_id)
        if not self._metric or not self._mode:
            raise ValueError(
                f"SeedGroupASHA has no metric ({self._metric!r}) or mode ({self._mode!r}); pass them "
                "to the scheduler or to tune.TuneConfig"
            )
        tid, book = trial.trial_id, self._book
        if tid in book.members:
            # Tune re-adds a trial after a recoverable error and every trial on a restore: same id
            status = book.members[tid].status
            if trial.status in (Trial.PENDING, Trial.RUNNING, Trial.PAUSED):
                book.set_status(tid, ACTIVE)
            elif status == ACTIVE and trial.status in (Trial.ERROR, Trial.TERMINATED):
                book.set_status(tid, ERRORED if trial.status == Trial.ERROR else COMPLETED)
        else:
            status = {Trial.TERMINATED: COMPLETED, Trial.ERROR: ERRORED}.get(trial.status, ACTIVE)
            label = group_body(_flatten(trial.config or {}), self._seed_key)
            book.add(tid, self.group_of(trial), status, label=label, strict_size=not self._needs_reconcile)
        self._flush()

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        tid = trial.trial_id
        self._start(tid)
        if tid not in self._book.members:
            self.on_trial_add(tune_controller, trial)
        self._sync(tune_controller)
        partial = self._searcher_finished(tune_controller)
        self._book.settle(allow_partial=partial)
        s = self.schedule
        self._book.report(tid, result.get(s.time_attr), result.get(s.metric or ""), allow_partial=partial)
        self._stop_pending(tune_controller)
        self._flush()
        # the book's answer (wait / stop / done) reaches the trainable through the state file; Tune is
        # told CONTINUE so that it never kills a trial whose Train run is ending (module docstring)
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict) -> None:
        """A member finished (``max_t``, its trainable ended, a stopper). A result passing a rung it has
        not recorded yet is recorded, as Ray's ASHA does."""
        if trial.trial_id in self._book.members:
            s = self.schedule
            result = result or {}
            self._book.complete(trial.trial_id, result.get(s.time_attr), result.get(s.metric or ""))
            self._flush()

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        """A PENDING/PAUSED member was stopped (by us for a stopped group, or by someone else)."""
        self._set_if_active(trial.trial_id, REMOVED)

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        """A member failed: left out, unless Tune retries it (``on_trial_add`` of the same trial)."""
        self._set_if_active(trial.trial_id, ERRORED)

    def choose_trial_to_run(self, tune_controller: TuneController) -> Trial | None:
        """PENDING trials FIFO, except members of stopped groups (those are stopped here), else None.

        Also where the controller's steps reach the scheduler without a result: groups that an error,
        removal or early completion unblocked are decided here. With ``group_size``, a rung waiting only
        for members not created yet is decided with those present once the search algorithm is
        finished, or when nothing is PENDING and every RUNNING member only waits at a rung.
        """
        self._start(None)
        self._sync(tune_controller)
        self._book.settle(allow_partial=self._searcher_finished(tune_controller))
        self._stop_pending(tune_controller)
        chosen = self._pick(tune_controller)
        if chosen is None and self.schedule.group_size is not None and self._stalled(tune_controller):
            before = self._book.version
            self._book.settle(allow_partial=True)
            if self._book.version != before:
                logger.warning(
                    "SeedGroupASHA: nothing could run while members waited for seeds that do not exist "
                    "yet; decided those rungs with the members present (raise max_concurrent_trials, or "
                    "order the search so that a configuration's seeds are created together)"
                )
            self._stop_pending(tune_controller)
            chosen = self._pick(tune_controller)
        self._flush()
        return chosen

    def debug_string(self) -> str:
        book = self._book
        counts = dict.fromkeys(("running", "waiting", "stopped", "finished"), 0)
        for key in book.groups:
            counts[book.group_state(key)] += 1
        rungs = " | ".join(
            f"{self.schedule.time_attr} {m:g}: {len(book.rungs[i])} group(s), cutoff {book.cutoff(i)}"
            for i, m in enumerate(book.milestones)
        )
        return (
            f"Using SeedGroupASHA: {len(book.groups)} group(s) "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f"; trials stopped: {book.num_stopped}\nRungs: {rungs or 'none'}"
        )

    # ----------------------------------------------------------------------------- views

    def rung_state(self) -> dict[str, Any]:
        """:meth:`RungBook.rung_state` (keyed by milestone)."""
        return self._book.rung_state()

    def stopped_at(self, trial: Trial) -> float | None:
        """The milestone at which the trial's group was stopped, or None."""
        member = self._book.members.get(trial.trial_id)
        at = self._book.groups[member.group].stopped_at if member is not None else None
        return None if at is None else self._book.milestones[at]

    def rungs_reached(self, trial: Trial) -> int | None:
        """How many rungs the trial recorded a value at (None: not a member)."""
        member = self._book.members.get(trial.trial_id)
        return None if member is None else len(member.values)

    # ----------------------------------------------------------------------------- persistence

    def save(self, checkpoint_path: str | os.PathLike[str]) -> None:
        """Write the book as a standalone snapshot (atomic)."""
        st.write_snapshot(checkpoint_path, self._book)

    def restore(self, checkpoint_path: str | os.PathLike[str]) -> None:
        """Load a snapshot written by :meth:`save`; the settings must match this scheduler's."""
        self._adopt(st.read_snapshot(checkpoint_path))

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the scheduler into tuner.pkl; on a restore the copy reads the state files again
        state = self.__dict__.copy()
        state["_started"] = False
        state["_flushing"] = False
        return state

    # ----------------------------------------------------------------------------- internals

    def _adopt(self, book: RungBook) -> None:
        mine, saved = self.schedule.to_dict(), book.schedule.to_dict()
        for k in ("metric", "mode"):
            mine[k] = mine[k] or saved[k]
        diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
        if diff:
            raise ValueError(
                "saved SeedGroupASHA state was made with other settings (saved, this scheduler): "
                + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in diff.items())
            )
        self._metric, self._mode = saved["metric"], saved["mode"]
        book.sink = self._book.sink
        self._book = book
        self._needs_reconcile = True
        self._started = True

    def _start(self, trial_id: str | None) -> None:
        """On the first trial added: load the state files if they know that trial (a resumed sweep),
        else start them afresh (a new sweep, or files another run left under the same name)."""
        if self._started or trial_id is None:
            return
        self._started = True
        if self._writer is None:
            return
        loaded = st.load_book(self._writer.path)
        if loaded is not None and trial_id in loaded[0].members:
            logger.info("SeedGroupASHA: restoring rung state from %s", self._writer.path)
            self._adopt(loaded[0])
            self._writer.resume(loaded[1])
        else:
            if loaded is not None:
                logger.warning(
                    "SeedGroupASHA: %s does not know trial %s; it is left from another run and is ignored",
                    self._writer.path,
                    trial_id,
                )
            self._writer.start(self._book)
        self._book.sink = self._writer.append

    def _flush(self) -> None:
        if self._writer is not None and self._started:
            self._writer.flush(self._book)

    def _set_if_active(self, tid: str, status: str) -> None:
        member = self._book.members.get(tid)
        if member is not None and member.status == ACTIVE:
            self._book.set_status(tid, status)
            self._flush()

    def _sync(self, controller: Any) -> None:
        """Mark saved members the restored experiment lacks as lost; catch finishes we were not told."""
        get_trials = getattr(controller, "get_trials", None)
        if get_trials is None:
            return
        trials = list(get_trials())
        book = self._book
        if self._needs_reconcile:
            self._needs_reconcile = False
            present = {t.trial_id for t in trials}
            for tid, m in list(book.members.items()):
                if tid not in present and m.status == ACTIVE:
                    book.set_status(tid, LOST)
        for t in trials:
            m = book.members.get(t.trial_id)
            if m is not None and m.status == ACTIVE and t.status in (Trial.TERMINATED, Trial.ERROR):
                book.set_status(t.trial_id, COMPLETED if t.status == Trial.TERMINATED else ERRORED)

    def _stop_pending(self, controller: Any) -> None:
        """Stop the members of stopped groups that never started (PENDING/PAUSED) through Tune;
        ``stop_trial`` calls back into ``on_trial_remove``, hence the re-entrancy guard."""
        if self._flushing or getattr(controller, "get_trials", None) is None:
            return
        self._flushing = True
        try:
            for trial in list(controller.get_trials()):
                m = self._book.members.get(trial.trial_id)
                if m is None or self._book.groups[m.group].stopped_at is None:
                    continue
                if trial.status in (Trial.PENDING, Trial.PAUSED):
                    self._book.set_status(trial.trial_id, STOPPED)
                    controller.stop_trial(trial)
        finally:
            self._flushing = False

    def _pick(self, controller: Any) -> Trial | None:
        trials = list(controller.get_trials())
        for trial in trials:
            m = self._book.members.get(trial.trial_id)
            if trial.status == Trial.PENDING and (m is None or self._book.groups[m.group].stopped_at is None):
                return trial
        for trial in trials:  # PAUSED by someone else: FIFOScheduler resumes those too
            if trial.status == Trial.PAUSED and trial.trial_id not in self._book.members:
                return trial
        return None

    def _stalled(self, controller: Any) -> bool:
        """Nothing PENDING, and every RUNNING member only waits at a rung."""
        waiting = False
        for t in controller.get_trials():
            if t.status == Trial.PENDING:
                return False
            if t.status == Trial.RUNNING:
                if t.trial_id not in self._book.members or self._book.waiting(t.trial_id) is None:
                    return False
                waiting = True
        return waiting

    @staticmethod
    def _searcher_finished(controller: Any) -> bool:
        search_alg = getattr(controller, "search_alg", None)
        is_finished = getattr(search_alg, "is_finished", None)
        try:
            return bool(is_finished()) if callable(is_finished) else False
        except Exception:  # a searcher that cannot tell is treated as still creating trials
            return False
