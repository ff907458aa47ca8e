"""The sweep's trial scheduler by name: FIFO, Ray's per-trial ASHA, or seed-group ASHA.

Seed-group ASHA lives in :mod:`gapinit_ray.seedgroup` (the pure rung book, the shared state, the Tune
adapter, the trial side); this module only turns a spec's ``scheduler`` section into a scheduler.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from gapinit_ray.names import ASHA, FIFO, SCHEDULERS
from gapinit_ray.seedgroup.core import Schedule, asha_milestones

__all__ = ["SCHEDULER_KINDS", "asha_milestones", "make_scheduler"]

SCHEDULER_KINDS = SCHEDULERS


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
    group_of: Callable[[dict[str, Any]], str] | None = None,
) -> TrialScheduler:
    """Build the scheduler a sweep spec names.

    ``"fifo"`` runs every trial to the end; ``"asha"`` is Ray's per-trial ``AsyncHyperBandScheduler``
    (one bracket, so its rungs are the ones seed-group ASHA uses); ``"seed-group-asha"`` is
    :class:`~gapinit_ray.seedgroup.tune.SeedGroupASHA`. ``group_size``, ``seed_key``, ``state_path``
    and ``group_of`` only concern the latter and are ignored by the other two.
    """
    if kind not in SCHEDULER_KINDS:
        raise ValueError(f"unknown scheduler kind {kind!r}; known kinds: {', '.join(SCHEDULER_KINDS)}")
    # checks the schedule with errors for people (Ray's ASHA would only `assert`)
    Schedule(max_t, grace_period, reduction_factor, time_attr, metric, mode)
    if kind == FIFO:
        return FIFOScheduler()
    schedule = {"time_attr": time_attr, "metric": metric, "mode": mode, "max_t": max_t}
    schedule.update(grace_period=grace_period, reduction_factor=reduction_factor)
    if kind == ASHA:
        return AsyncHyperBandScheduler(**schedule, brackets=1)
    from gapinit_ray.seedgroup.tune import SeedGroupASHA

    return SeedGroupASHA(
        **schedule, group_size=group_size, seed_key=seed_key, state_path=state_path, group_of=group_of
    )
