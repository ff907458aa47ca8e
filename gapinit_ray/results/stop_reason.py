"""Why a trial ended before ``max_t``: one typed value, written by the sweep and parsed by the readers.

The trial row's ``stop_reason`` column holds :meth:`StopReason.text`; :func:`parse` reads it back. Both
directions live here so the writer (:mod:`gapinit_ray.sweep`) and the readers
(:mod:`gapinit_ray.results.aggregate`, reports) can never disagree on the form. Rungs are numbered from
1 (rung 1 is the first milestone, ``grace_period``) in text; ``epoch`` is the report the decision was
taken on.

Forms::

    seed-group asha rung 1 (epoch 1)       the member's seed group was stopped whole at rung 1
    asha rung 2 (epoch 3)                  per-trial ASHA stopped the trial at rung 2
    error after 2 attempts (resources.max_failures=1)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

Kind = Literal["seed-group asha", "asha", "error"]
SEED_GROUP, ASHA, ERROR = get_args(Kind)

_RUNG_RE = re.compile(
    rf"^({re.escape(SEED_GROUP)}|{re.escape(ASHA)}) rung (\d+)(?: \(epoch ([0-9.eE+-]+)\))?$"
)
_ERROR_RE = re.compile(r"^error after (\d+) attempts? \(resources\.max_failures=(\d+)\)$")


@dataclass(frozen=True)
class StopReason:
    """``kind``: who ended the trial; ``rung``: 1-based rung of a scheduler stop; ``epoch``: the epoch
    of the report it was decided on; ``attempts`` / ``max_failures``: of an error."""

    kind: Kind
    rung: int | None = None
    epoch: float | None = None
    attempts: int | None = None
    max_failures: int | None = None

    @property
    def seed_group(self) -> bool:
        return self.kind == SEED_GROUP

    @property
    def scheduler_stop(self) -> bool:
        return self.kind in (SEED_GROUP, ASHA)

    def text(self) -> str:
        if self.kind == ERROR:
            n = self.attempts or 1
            return (
                f"error after {n} attempt{'s' if n != 1 else ''} (resources.max_failures={self.max_failures})"
            )
        epoch = f" (epoch {self.epoch:g})" if self.epoch is not None else ""
        return f"{self.kind} rung {self.rung}{epoch}"

    def __str__(self) -> str:
        return self.text()


def seed_group_stop(rung_index: int, epoch: float | None) -> StopReason:
    """The seed group was stopped at the scheduler's rung ``rung_index`` (0-based, as it keeps them)."""
    return StopReason(SEED_GROUP, rung=rung_index + 1, epoch=epoch)


def asha_stop(epoch: float, milestones: list[float]) -> StopReason:
    """Per-trial ASHA stopped a trial whose last report was at ``epoch``: the rung is the highest
    milestone it reached."""
    rung = sum(1 for m in milestones if epoch >= m)
    return StopReason(ASHA, rung=max(rung, 1), epoch=epoch)


def error_stop(attempts: int, max_failures: int) -> StopReason:
    return StopReason(ERROR, attempts=max(attempts, 1), max_failures=max_failures)


def parse(text: str | None) -> StopReason | None:
    """The :class:`StopReason` a trial row's ``stop_reason`` holds (None: none, or not one of ours)."""
    if not text:
        return None
    m = _RUNG_RE.match(text.strip())
    if m:
        return StopReason(m.group(1), rung=int(m.group(2)), epoch=float(m.group(3)) if m.group(3) else None)  # type: ignore[arg-type]
    m = _ERROR_RE.match(text.strip())
    if m:
        return StopReason(ERROR, attempts=int(m.group(1)), max_failures=int(m.group(2)))
    return None
