"""Seed-group ASHA's rung book: members, groups, rungs, cutoffs and decisions, with no Ray in it.

Per-trial ASHA over seeds keeps a configuration's lucky seeds and kills its unlucky ones, so "mean ± std
over seeds" of the survivors is biased upward (paper: random init std 7.10 vs 1.44 for Gap-Init). Here
the configuration is the contestant: trials whose configs differ only in the seed form a *group*, a rung
is decided on the group's mean once every member still expected there has recorded a value, and the
group is promoted or stopped whole, never split.

Rungs are those of Ray Tune's one-bracket ASHA (``async_hyperband._Bracket``): milestones
``grace_period·η**k`` below ``max_t``; the cutoff at a rung is ``nanpercentile`` at ``(1 - 1/η)·100`` of
the group means recorded there before (sign-flipped for ``mode="min"``); the first group at a rung
continues, a mean equal to the cutoff continues, a NaN mean continues -- exactly Ray's rule, so with
one seed per group the decisions are Ray's (``tests/seedgroup/test_core.py`` feeds both the same
reports).

:class:`RungBook` is the whole state. Every change goes through :meth:`RungBook.apply` of one small
event (a member's status, a value at a rung, a group's decision), and the book hands each event to an
optional ``sink``: the scheduler's state writer appends it to the shared log and the trial side replays
the same events into its own book (:mod:`gapinit_ray.seedgroup.state`), so the writer and the readers
derive plans from one code path. :meth:`RungBook.plan` (train / wait / stop) and
:meth:`RungBook.on_its_way` (may a member hold its Train run at the rung) both start from
:meth:`RungBook.current_rung`, the group's first undecided rung.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Decisions, spelled as Ray Tune's ``TrialScheduler.CONTINUE`` / ``STOP`` so the adapter passes them on.
CONTINUE, STOP = "CONTINUE", "STOP"
#: What :meth:`RungBook.report` answers besides a decision: the member waits for its group at the
#: rung, or it reached ``max_t`` (a normal finish, Ray's ``stop_last_trials``).
WAIT, DONE = "WAIT", "DONE"
DECISIONS = (CONTINUE, STOP)

# Member status. ACTIVE members may still report and are waited for at a rung; the others are not.
ACTIVE = "active"
COMPLETED = "completed"  # finished (max_t, the trainable ended, a stopper)
REMOVED = "removed"  # stopped by someone else before it ran; its recorded values still count
ERRORED = "errored"  # failed for good; its values at rungs not decided yet are left out
LOST = "lost"  # in a saved state but not in the restored experiment
STOPPED = "stopped"  # stopped with its group at a rung
STATUSES = (ACTIVE, COMPLETED, REMOVED, ERRORED, LOST, STOPPED)
EXCLUDED = (ERRORED, LOST)

# MemberPlan actions
TRAIN, STOP_PLAN, WAIT_PLAN, UNKNOWN = "train", "stop", "wait", "unknown"


def asha_milestones(grace_period: float, max_t: float, reduction_factor: float) -> list[float]:
    """The rung milestones of Ray's one-bracket ASHA that can ever decide anything.

    Ray builds ``int(log(max_t/grace)/log(η) + 1)`` rungs ``grace·η**k`` (same float arithmetic here);
    a rung at or above ``max_t`` never decides (a result with ``time >= max_t`` is stopped before the
    rungs are looked at), so it is left out.
    """
    n = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return [
        grace_period * reduction_factor**k for k in range(n) if grace_period * reduction_factor**k < max_t
    ]


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass
class Schedule:
    """ASHA's schedule plus the group size. ``metric``/``mode`` may be set later (Tune's
    ``set_search_properties``). ``group_size`` None: a rung waits for the members known so far."""

    max_t: float
    grace_period: float = 1
    reduction_factor: float = 3
    time_attr: str = "epoch"
    metric: str | None = None
    mode: str | None = None
    group_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.time_attr, str) or not self.time_attr:
            raise ValueError(f"time_attr must be a non-empty string, got {self.time_attr!r}")
        if self.mode not in (None, "min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        _positive("max_t", self.max_t)
        _positive("grace_period", self.grace_period)
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) must be <= max_t ({self.max_t})")
        eta = self.reduction_factor
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not eta > 1:
            raise ValueError(f"reduction_factor must be a number > 1, got {eta!r}")
        size = self.group_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"group_size must be a positive int or None, got {size!r}")

    @property
    def milestones(self) -> list[float]:
        return asha_milestones(self.grace_period, self.max_t, self.reduction_factor)

    @property
    def sign(self) -> float:
        """+1 for ``mode="max"``, -1 for ``"min"``: signed values are always "higher is better"."""
        return -1.0 if self.mode == "min" else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "milestones": self.milestones}


@dataclass(frozen=True)
class MemberPlan:
    """What a member's trainable does next.

    ``action``: ``"train"`` (until epoch ``stop_at``, the milestone of rung ``rung``; ``stop_at`` None:
    to the end), ``"wait"`` (its value at ``rung`` is recorded, the group is not decided yet),
    ``"stop"`` (its group was stopped at ``rung``) or ``"unknown"`` (the state does not know it yet).
    """

    action: str
    rung: int | None = None
    stop_at: float | None = None


@dataclass
class Member:
    group: str
    status: str = ACTIVE
    values: dict[int, float] = field(default_factory=dict)  # rung index -> raw metric value


@dataclass
class Group:
    members: list[str] = field(default_factory=list)
    decisions: dict[int, str] = field(default_factory=dict)  # rung index -> CONTINUE | STOP
    means: dict[int, float] = field(default_factory=dict)  # rung index -> raw mean it was judged on
    stopped_at: int | None = None  # rung index


class RungBook:
    """The rung state of one seed-group sweep; see the module docstring.

    Events (plain dicts, JSON-able, the unit of the shared state log):
    ``{"k": "member", "trial", "group", "status"}``, ``{"k": "value", "trial", "rung", "value"}``,
    ``{"k": "decision", "group", "rung", "decision", "mean"}``.
    """

    def __init__(self, schedule: Schedule, sink: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.schedule = schedule
        self.milestones = schedule.milestones
        self.sink = sink
        self.members: dict[str, Member] = {}
        self.groups: dict[str, Group] = {}
        self.rungs: list[dict[str, float]] = [{} for _ in self.milestones]  # group -> raw mean
        # the same means as arrays (grown by doubling), so a cutoff costs one numpy call, not a loop
        self._means = [np.empty(16) for _ in self.milestones]
        self.labels: dict[str, str] = {}  # group id -> readable config without the seed (optional)
        self.num_stopped = 0
        self.version = 0  # bumped by every event
        # what settle() looks at: groups changed since it last ran, and groups blocked at a rung (a
        # recorded value, no decision: only a partial decision can unblock them without a change)
        self._dirty: set[str] = set()
        self._open: set[str] = set()

    # ----------------------------------------------------------------------------- the one mutator

    def apply(self, event: dict[str, Any]) -> None:
        """Apply one event (from this book or replayed from the log) and hand it to the sink."""
        kind = event["k"]
        if kind == "member":
            tid, key, status = event["trial"], event["group"], event["status"]
            member = self.members.get(tid)
            if member is None:
                self.members[tid] = Member(group=key, status=status)
                self.groups.setdefault(key, Group()).members.append(tid)
                if "label" in event:
                    self.labels[key] = str(event["label"])
            else:
                if status == STOPPED and member.status != STOPPED:
                    self.num_stopped += 1
                member.status = status
            self._dirty.add(key)
        elif kind == "value":
            member = self.members[event["trial"]]
            member.values[int(event["rung"])] = float(event["value"])
            self._dirty.add(member.group)
        elif kind == "decision":
            key, rung, decision = event["group"], int(event["rung"]), event["decision"]
            group = self.groups[key]
            mean = float(event["mean"])
            group.decisions[rung] = decision
            group.means[rung] = mean
            n = len(self.rungs[rung])
            self.rungs[rung][key] = mean
            if n == len(self._means[rung]):
                self._means[rung] = np.concatenate([self._means[rung], np.empty(n)])
            self._means[rung][n] = mean
            if decision == STOP:
                group.stopped_at = rung
        else:
            raise ValueError(f"unknown seed-group state event {kind!r}")
        self.version += 1
        if self.sink is not None:
            self.sink(event)

    # ----------------------------------------------------------------------------- members

    def add(
        self,
        tid: str,
        group: str,
        status: str = ACTIVE,
        *,
        label: str | None = None,
        strict_size: bool = True,
    ) -> None:
        """A new member of ``group`` (``label``: the group's readable config, kept once per group).
        Raises ValueError past ``group_size`` (``strict_size``), else warns."""
        existing = self.groups.get(group)
        counted = [t for t in existing.members if self.members[t].status not in EXCLUDED] if existing else []
        size = self.schedule.group_size
        if size is not None and len(counted) >= size:
            if strict_size:
                raise ValueError(
                    f"trial {tid} would be member {len(counted) + 1} of a group of group_size={size} "
                    f"seeds ({group}); set group_size to the number of seeds per configuration (or None)"
                )
            logger.warning("seed group %s has more than %d members", group, size)
        if existing is not None and existing.stopped_at is not None:
            status = STOPPED  # joined a group that is already out
        event = {"k": "member", "trial": tid, "group": group, "status": status}
        if label is not None and group not in self.labels:
            event["label"] = label
        self.apply(event)

    def set_status(self, tid: str, status: str) -> None:
        member = self.members[tid]
        if self.groups[member.group].stopped_at is not None:
            status = STOPPED
        if member.status != status:
            self.apply({"k": "member", "trial": tid, "group": member.group, "status": status})

    # ----------------------------------------------------------------------------- reports

    def next_rung(self, tid: str, t: float) -> int | None:
        """Lowest rung the member has passed (``t >= milestone``) but not recorded yet.

        Rungs are recorded in order, one per result, so every member is judged at every rung (Ray
        records the highest rung passed; with one result per time step the two coincide)."""
        values = self.members[tid].values
        for i, milestone in enumerate(self.milestones):
            if t < milestone:
                return None
            if i not in values:
                return i
        return None

    def record(self, tid: str, t: float | None, value: float | None) -> int | None:
        """Record a result's value at the rung it passes, if any; returns that rung."""
        if t is None or value is None:
            return None
        rung = self.next_rung(tid, t)
        if rung is not None:
            self.apply({"k": "value", "trial": tid, "rung": rung, "value": float(value)})
        return rung

    def report(self, tid: str, t: float | None, value: float | None, *, allow_partial: bool = False) -> str:
        """A result of member ``tid``: :data:`CONTINUE`, :data:`STOP` (its group is stopped), :data:`WAIT`
        (its value is recorded at a rung its group has not decided) or :data:`DONE` (``t >= max_t``).
        No decision without both ``t`` and ``value`` (Ray's ASHA)."""
        member = self.members[tid]
        group = self.groups[member.group]
        if group.stopped_at is not None:
            self.set_status(tid, STOPPED)
            return STOP
        if member.status != ACTIVE:
            self.set_status(tid, ACTIVE)  # it reports, so it runs (e.g. re-added unnoticed)
        if self.waiting(tid) is not None:
            return WAIT  # still waiting at its rung (a restarted member reporting again)
        if t is None or value is None:
            return CONTINUE
        if t >= self.schedule.max_t:
            self.set_status(tid, COMPLETED)
            return DONE
        rung = self.record(tid, t, value)
        if rung is None:
            return CONTINUE
        decision = self.try_decide(member.group, rung, allow_partial=allow_partial)
        return WAIT if decision is None else decision

    def complete(self, tid: str, t: float | None = None, value: float | None = None) -> None:
        """Member ``tid`` finished; a result passing a rung it has not recorded is recorded (Ray's ASHA)."""
        member = self.members[tid]
        if self.groups[member.group].stopped_at is None:
            self.record(tid, t, value)
        if member.status == ACTIVE:
            self.set_status(tid, COMPLETED)

    # ----------------------------------------------------------------------------- decisions

    def cutoff(self, rung: int) -> float | None:
        """Ray's ``_Bracket.cutoff`` over the group means recorded at ``rung``, in metric units."""
        n = len(self.rungs[rung])
        if not n:
            return None
        sign = self.schedule.sign
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rung: nan, as in Ray
            q = (1 - 1 / self.schedule.reduction_factor) * 100
            return sign * float(np.nanpercentile(sign * self._means[rung][:n], q))

    def try_decide(self, key: str, rung: int, *, allow_partial: bool = False) -> str | None:
        """Decide ``rung`` for group ``key`` if every member still expected there has recorded."""
        group = self.groups[key]
        if rung in group.decisions:
            return group.decisions[rung]
        members = [self.members[t] for t in group.members]
        if any(m.status == ACTIVE and rung not in m.values for m in members):
            return None
        size = self.schedule.group_size
        if size is not None and len(group.members) < size and not allow_partial:
            return None
        values = [m.values[rung] for m in members if m.status not in EXCLUDED and rung in m.values]
        if not values:
            return None
        mean = float(np.mean(values))
        cutoff = self.cutoff(rung)  # over the groups recorded before this one, as in Ray
        sign = self.schedule.sign
        decision = STOP if cutoff is not None and sign * mean < sign * cutoff else CONTINUE
        self.apply({"k": "decision", "group": key, "rung": rung, "decision": decision, "mean": mean})
        if decision == STOP:
            for tid in group.members:
                if self.members[tid].status == ACTIVE:
                    self.set_status(tid, STOPPED)
        logger.debug("seed group %s rung %d: mean %s -> %s", key, rung, mean, decision)
        return decision

    def settle(self, *, allow_partial: bool = False) -> None:
        """Decide every rung that has become decidable (errors, removals, early finishes). Only groups
        touched since the last call are looked at (and, with ``allow_partial``, those blocked at a rung),
        so a call costs O(groups changed), not O(groups)."""
        keys = self._dirty | self._open if allow_partial else self._dirty
        self._dirty = set()
        for key in sorted(keys):
            group = self.groups[key]
            while group.stopped_at is None:
                rung = self.current_rung(key)
                recorded = any(rung in self.members[t].values for t in group.members)
                if not recorded or self.try_decide(key, rung, allow_partial=allow_partial) is None:
                    break
            if group.stopped_at is None and self._has_pending(key):
                self._open.add(key)
            else:
                self._open.discard(key)
        self._dirty.clear()  # what this call's own decisions touched is settled too

    def _has_pending(self, key: str) -> bool:
        rung = self.current_rung(key)
        return any(rung in self.members[t].values for t in self.groups[key].members)

    # ----------------------------------------------------------------------------- what members do

    def current_rung(self, key: str) -> int:
        """The group's first undecided rung (``len(milestones)``: past the last one)."""
        decisions = self.groups[key].decisions
        rung = 0
        while rung in decisions:
            rung += 1
        return rung

    def waiting(self, tid: str) -> int | None:
        """The rung an active member waits at (its value is recorded, its group undecided), or None."""
        member = self.members[tid]
        if member.status != ACTIVE or self.groups[member.group].stopped_at is not None:
            return None
        rung = self.current_rung(member.group)
        return rung if rung in member.values else None

    def plan(self, tid: str) -> MemberPlan:
        """Train to the group's first undecided rung, wait there (value recorded), or stop."""
        member = self.members.get(tid)
        if member is None:
            return MemberPlan(UNKNOWN)
        group = self.groups[member.group]
        if group.stopped_at is not None or member.status == STOPPED:
            return MemberPlan(STOP_PLAN, group.stopped_at)
        rung = self.current_rung(member.group)
        if rung >= len(self.milestones):
            return MemberPlan(TRAIN, None, None)
        if rung in member.values:
            return MemberPlan(WAIT_PLAN, rung, self.milestones[rung])
        return MemberPlan(TRAIN, rung, self.milestones[rung])

    def on_its_way(self, tid: str, running: Iterable[str]) -> bool:
        """Whether every other active member of ``tid``'s group still to report at the group's current
        rung is in ``running`` (it holds CPUs/GPUs and will get there), and the group is whole: then a
        member waiting at the rung may keep its Train run instead of ending it."""
        member = self.members.get(tid)
        if member is None:
            return False
        group = self.groups[member.group]
        size = self.schedule.group_size or 1
        if len(group.members) < size:
            return False
        rung = self.current_rung(member.group)
        running = set(running)
        return all(
            t in running
            for t in group.members
            if t != tid and self.members[t].status == ACTIVE and rung not in self.members[t].values
        )

    def group_state(self, key: str) -> str:
        """``"stopped"``, ``"waiting"`` (a member waits at a rung), ``"finished"`` or ``"running"``."""
        group = self.groups[key]
        if group.stopped_at is not None:
            return "stopped"
        if any(self.waiting(t) is not None for t in group.members):
            return "waiting"
        if group.members and all(self.members[t].status != ACTIVE for t in group.members):
            return "finished"
        return "running"

    # ----------------------------------------------------------------------------- views

    def rung_state(self) -> dict[str, Any]:
        """A snapshot keyed by milestone: per rung the group means and the cutoff (metric units); per
        group its members, their status and values per rung, its decisions, its state and the
        milestone it was stopped at."""
        ms = self.milestones
        return {
            "milestones": list(ms),
            "rungs": {
                ms[i]: {"group_means": dict(self.rungs[i]), "cutoff": self.cutoff(i)} for i in range(len(ms))
            },
            "groups": {
                key: {
                    "members": list(g.members),
                    "member_status": {t: self.members[t].status for t in g.members},
                    "values": {
                        t: {ms[r]: v for r, v in sorted(self.members[t].values.items())} for t in g.members
                    },
                    "decisions": {ms[r]: d for r, d in sorted(g.decisions.items())},
                    "decision": self.group_state(key),
                    "stopped_at": ms[g.stopped_at] if g.stopped_at is not None else None,
                }
                for key, g in self.groups.items()
            },
        }

    def events(self) -> list[dict[str, Any]]:
        """Events that rebuild this book from empty (a compacted log), in an order :meth:`apply` takes."""
        out: list[dict[str, Any]] = []
        for tid, m in self.members.items():
            event = {"k": "member", "trial": tid, "group": m.group, "status": ACTIVE}
            if m.group in self.labels and self.groups[m.group].members[0] == tid:
                event["label"] = self.labels[m.group]
            out.append(event)
        for tid, m in self.members.items():
            out.extend(
                {"k": "value", "trial": tid, "rung": r, "value": v} for r, v in sorted(m.values.items())
            )
        for key, g in self.groups.items():
            out.extend(
                {"k": "decision", "group": key, "rung": r, "decision": d, "mean": g.means[r]}
                for r, d in sorted(g.decisions.items())
            )
        for tid, m in self.members.items():
            if m.status != ACTIVE:
                out.append({"k": "member", "trial": tid, "group": m.group, "status": m.status})
        return out


__all__ = [
    "ACTIVE",
    "COMPLETED",
    "CONTINUE",
    "DONE",
    "ERRORED",
    "LOST",
    "REMOVED",
    "STOP",
    "STOPPED",
    "WAIT",
    "MemberPlan",
    "RungBook",
    "Schedule",
    "asha_milestones",
]
