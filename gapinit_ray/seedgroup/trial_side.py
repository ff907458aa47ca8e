"""The trial side of seed-group ASHA: a member's segment loop and its decisions at a rung.

A member trains up to its group's next rung, then learns from the shared state
(:class:`~gapinit_ray.seedgroup.state.StateReader`; the scheduler is its only writer) whether its group
was promoted there (go on), stopped (end) or is still undecided (wait). :class:`RungGate` is that view,
one per process that asks (the trainable; rank 0 of the member's Train run); every question starts from
the book's first undecided rung (:meth:`~gapinit_ray.seedgroup.core.RungBook.plan`).

:func:`run_segments` is the trainable's loop: one Train run per segment (``fit``, injected) from rung
to rung, waiting outside a Train run while the group is undecided. Inside a Train run, the worker asks
:meth:`RungGate.after_rung` right after a rung's report: when its group was promoted at once (it
reported last) the run goes on; while the group is undecided the run may *hold* at the rung instead of
ending -- the one injected hook, ``hold(held_s)``, says whether the siblings still to report are on
their way (the Train-slot actor knows who trains, :mod:`~gapinit_ray.seedgroup.slots`) -- else it ends
and frees its workers for them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gapinit_ray.errors import GapinitError
from gapinit_ray.seedgroup.core import STOP_PLAN, TRAIN, UNKNOWN, WAIT_PLAN, MemberPlan
from gapinit_ray.seedgroup.state import StateReader

#: How often a member waiting at a rung reads the state, and how long a rung report may take to be
#: recorded by the scheduler before the trial gives up with an error.
RUNG_POLL_S = 1.0
RUNG_RECORD_TIMEOUT_S = 900.0
#: :meth:`RungGate.after_rung`'s answer while a member holds its run at a rung (ask again later).
HOLD = "hold"


@dataclass(frozen=True)
class MemberRun:
    """What the Train run of a seed-group member needs at its rungs (see :meth:`RungGate.after_rung`).

    Attributes:
        state_path: the scheduler's state file (:mod:`~gapinit_ray.seedgroup.state`).
        tune_id: the member's Tune trial id, its key in the state.
        slots: the name of the sweep's Train-slot actor (:mod:`~gapinit_ray.seedgroup.slots`), who
            trains now; ``None``: the run never holds at a rung, it ends there.
    """

    state_path: str
    tune_id: str
    slots: str | None = None


class RungGate:
    """What the shared state says to one member (by its Tune trial id)."""

    def __init__(self, state_path: str | os.PathLike[str], tune_id: str) -> None:
        self.reader = StateReader(state_path)
        self.tune_id = tune_id

    def plan(self) -> MemberPlan:
        book = self.reader.book()
        return book.plan(self.tune_id) if book is not None else MemberPlan(UNKNOWN)

    def recorded(self, epoch: float) -> bool:
        """Whether the scheduler has recorded this member's report at rung epoch ``epoch``."""
        plan = self.plan()
        return plan.action in (WAIT_PLAN, STOP_PLAN) or (
            plan.action == TRAIN and (plan.stop_at is None or plan.stop_at > epoch)
        )

    def may_hold(
        self, running: Iterable[str], starting: Iterable[str], held_s: float, grace_s: float
    ) -> bool:
        """Whether the member, undecided at its rung, may keep its Train run there: yes when the
        group's other members still to report all train now (``running``, Tune ids); those whose run
        is still starting (``starting``: they hold a Train slot, their workers are not up) count only
        for the first ``grace_s`` of the hold -- one the cluster fits starts within that, one waiting
        for the very CPUs/GPUs this member holds never would."""
        book = self.reader.book()
        if book is None:
            return False
        running = list(running)
        if book.on_its_way(self.tune_id, running):
            return True
        return held_s < grace_s and book.on_its_way(self.tune_id, [*running, *starting])

    def after_rung(
        self,
        reached: float,
        hold: Callable[[], bool] | None = None,
        timeout_s: float = 20.0,
        poll_s: float = 0.2,
    ) -> MemberPlan | str | None:
        """Right after the member's report at rung epoch ``reached``: wait until the scheduler recorded
        it (at most ``timeout_s``), then the plan when its group was promoted (the run goes on to
        ``plan.stop_at``; None: to the end), :data:`HOLD` while the group is undecided and ``hold()``
        says the others are on their way (ask again a little later), else None: the run ends there
        (stopped, undecided without holding, or not recorded in time)."""
        deadline = time.monotonic() + timeout_s
        while True:
            plan = self.plan()
            if plan.action == TRAIN and (plan.stop_at is None or plan.stop_at > reached):
                return plan
            if plan.action == STOP_PLAN:
                return None
            if plan.action == WAIT_PLAN:
                return HOLD if hold is not None and hold() else None
            if time.monotonic() > deadline:
                return None
            time.sleep(poll_s)  # "unknown", or "train" up to `reached`: the report is not recorded yet


def run_segments(
    fit: Callable[[float | None, bool], float],
    gate: RungGate,
    max_t: float,
    poll_s: float = RUNG_POLL_S,
    record_timeout_s: float = RUNG_RECORD_TIMEOUT_S,
) -> None:
    """The trainable's loop: ``fit(stop_at, continuing)`` runs one Train segment up to epoch
    ``stop_at`` (None: to the end) and returns the epoch of its last report; between segments the
    member waits (holding no CPU/GPU) until its group is decided, and ends when it is stopped."""
    reached = -1.0  # epoch of the last segment's last report (-1: no segment yet)
    since = time.monotonic()
    while True:
        plan = gate.plan()
        if plan.action == STOP_PLAN:
            return
        if plan.action == TRAIN and (plan.stop_at is None or plan.stop_at > reached):
            # a later segment (resumed from a checkpoint) goes before any trial's first one
            reached = fit(plan.stop_at, reached >= 0 or bool(plan.rung))
            if plan.stop_at is None or reached >= max_t:
                return
            since = time.monotonic()
            continue
        # "wait" (group undecided), "unknown", or the last segment's rung report not recorded yet
        if plan.action != WAIT_PLAN and time.monotonic() - since > record_timeout_s:
            raise GapinitError(
                f"trial {gate.tune_id}: the scheduler has not recorded its result at epoch {reached:g} "
                f"after {record_timeout_s:g} s ({gate.reader.path}); is the metric reported?"
            )
        time.sleep(poll_s)
