"""The driver side of a sweep while Tune runs: the Tune callback that records trial rows (status,
stop reason, rung), saves the scheduler state and shows a live progress line, and the reporting of
failed trials (:mod:`gapinit_ray.sweep` installs it).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path

from ray.tune import Callback
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from gapinit_ray.atomic import write_atomic
from gapinit_ray.errors import GapinitError
from gapinit_ray.plan import params_of, result_config, trial_id
from gapinit_ray.progress import ProgressView, SweepStatus, rung_summary
from gapinit_ray.seedgroup.ids import group_id
from gapinit_ray.spec import SweepSpec
from gapinit_ray.trial import sweep_dir


class SweepProgress(Callback):
    """Tune callback: trial rows (status, stop reason, rung), scheduler state, a live progress line,
    and the trackers' feed. Tune pickles it with the experiment state (a restored sweep gets it back)."""

    def __init__(self, spec: SweepSpec, scheduler, quiet: bool = False, slots: str | None = None) -> None:
        from gapinit_ray.results import ResultsStore

        self.spec, self.scheduler, self.slots = spec, scheduler, slots
        self.store = ResultsStore(spec.storage, spec.name)
        self.trackers = None
        if spec.loggers:
            from gapinit_ray.trackers import Trackers

            self.trackers = Trackers(spec, sweep_dir(spec))
            self.trackers.start()  # its one-time set-up overlaps Tune's start-up (see setup)
        self.view = ProgressView(quiet=quiet)
        self.best: tuple[float, str] | None = None

    def setup(self, **info):
        # before the first trial starts (a restored sweep's callback too): the trackers' one-time
        # set-up (imports, MLflow's store; seconds of CPU) never runs during training steps
        if self.trackers is not None:
            self.trackers.wait_ready()

    def _params(self, trial) -> tuple[str, dict]:
        params = params_of(trial.config, self.spec)
        return trial_id(params), result_config(self.spec, params)

    def _line(self, trials) -> None:
        status = SweepStatus(
            Counter(t.status for t in trials), metric=self.spec.scheduler.metric, best=self.best
        )
        if hasattr(self.scheduler, "rung_state"):
            status.groups, status.rungs = rung_summary(self.scheduler.rung_state())
        self.view.update(status)

    def on_experiment_end(self, trials, **info):
        self._line(trials)
        self.view.close()
        if self.trackers is not None:
            for tid, what in self.trackers.close().items():  # the trials a tracker did not log
                kept = self.store.trial(tid)
                if kept:
                    config = json.loads(kept["config_json"])
                    self.store.write_trial(tid, config, status=kept["status"], logger_errors=what)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid, params = self._params(trial)
        self.store.write_trial(
            tid,
            params,
            status="RUNNING",
            last_epoch=float(result.get("epoch", 0) or 0),
            checkpoint_path=result.get(CHECKPOINT_PATH_KEY),
            init_checks=result.get("init_checks") or None,
        )
        if self.trackers is not None:
            self.trackers.result(tid, group_id(params), params, result)
        value = result.get(self.spec.scheduler.metric)
        if isinstance(value, int | float) and value == value:
            better = self.best is None or (
                value > self.best[0] if self.spec.scheduler.mode == "max" else value < self.best[0]
            )
            if better:
                self.best = (float(value), tid)
        self._line(trials)

    def _release(self, tid: str) -> None:
        # a trial that ended (or died) holding a Train slot gives it back
        from gapinit_ray.seedgroup.slots import release_slot

        release_slot(self.slots, tid)

    def on_trial_complete(self, iteration, trials, trial, **info):
        tid, params = self._params(trial)
        self._release(tid)
        stopped = _stop_reason(self.spec, self.scheduler, trial)
        last = trial.last_result or {}
        status = "STOPPED" if stopped else "TERMINATED"
        self.store.write_trial(
            tid,
            params,
            status=status,
            stop_reason=stopped,
            rung_reached=_rung_reached(self.scheduler, trial),
            last_epoch=float(last.get("epoch", 0) or 0),
        )
        if self.trackers is not None:
            self.trackers.end(tid, status, stopped, last.get(CHECKPOINT_PATH_KEY))
        self._line(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        tid, params = self._params(trial)
        self._release(tid)
        error, reason, text = _trial_error(trial, self.spec.resources.max_failures)
        with contextlib.suppress(OSError, GapinitError):  # a full disk must not hide the failure
            write_atomic(error_file(self.spec, tid), text)
        self.store.write_trial(tid, params, status="ERROR", stop_reason=reason, error=error)
        if self.trackers is not None:
            self.trackers.end(tid, "ERROR", reason, None)
        self._line(trials)


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
    # `gapinit_ray.inits.registry.LoraInitError: ...` -> `LoraInitError: ...`
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
