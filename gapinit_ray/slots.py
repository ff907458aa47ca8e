"""Train slots: how many trials of a seed-group sweep run a Ray Train job at once, and which go first.

With seed-group ASHA, members that reach a rung wait there (inside their trainable, holding no CPU/GPU)
until the rest of their group gets there, so Tune keeps ``slots x group size`` trials alive
(:func:`gapinit_ray.sweep._max_concurrent`). Without a gate every live trial would start its
TorchTrainer at once: a Train controller, its placement-group cleaner, its report queue, all importing
torch, for a worker group that then waits for CPUs another trial holds. On a small machine those idle
runs cost more memory than the training itself and their start-ups steal the CPUs the training needs.

:class:`TrainSlots` (one actor per sweep, no CPU) hands out ``slots`` permits; a trial's trainable holds
one for the duration of each TorchTrainer run (:func:`train_slot`). Waiting requests are served:

1. a member continuing after its group was promoted at a rung, before any first segment;
2. then members of the group seen first (finish a group before starting the next one: its rung
   decision comes sooner, and a stopped group's members are never trained);
3. then in order of request.

A trial that dies holding a permit gets it taken back by the sweep driver (``release`` on the trial's
error or completion), so a crashed trainable never leaks a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Iterator

import ray


@ray.remote(num_cpus=0, max_concurrency=1000)
class TrainSlots:
    def __init__(self, slots: int) -> None:
        self._free = max(1, int(slots))
        self._holders: dict[str, int] = {}  # trial id -> permits held (a retried trial may re-acquire)
        self._waiting: list[tuple[tuple, asyncio.Future, str]] = []  # heap of (priority, future, tid)
        self._group_order: dict[str, int] = {}
        self._seq = itertools.count()

    async def acquire(self, trial_id: str, group: str, continuing: bool) -> None:
        """Wait for a permit (see the module docstring for the order)."""
        rank = self._group_order.setdefault(group, len(self._group_order))
        if self._free > 0 and not self._waiting:
            self._grant(trial_id)
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, ((0 if continuing else 1, rank, next(self._seq)), fut, trial_id))
        self._serve()
        await fut

    def release(self, trial_id: str) -> None:
        """Give back every permit ``trial_id`` holds and drop its waiting requests (idempotent)."""
        self._free += self._holders.pop(trial_id, 0)
        for _, fut, tid in self._waiting:
            if tid == trial_id and not fut.done():
                fut.cancel()
        self._waiting = [w for w in self._waiting if not w[1].done()]
        heapq.heapify(self._waiting)
        self._serve()

    def state(self) -> dict:
        return {
            "free": self._free,
            "holders": dict(self._holders),
            "waiting": [w[2] for w in sorted(self._waiting)],
        }

    def _grant(self, trial_id: str) -> None:
        self._free -= 1
        self._holders[trial_id] = self._holders.get(trial_id, 0) + 1

    def _serve(self) -> None:
        while self._free > 0 and self._waiting:
            _, fut, tid = heapq.heappop(self._waiting)
            if fut.done():
                continue
            self._grant(tid)
            fut.set_result(None)


def start_slots(name: str, slots: int):
    """The sweep's slot actor (named, in the driver's namespace; it ends with the driver)."""
    return TrainSlots.options(name=name, get_if_exists=True).remote(slots)


@contextlib.contextmanager
def train_slot(name: str | None, trial_id: str, group: str, continuing: bool) -> Iterator[None]:
    """Hold one of the sweep's Train slots (``name``: its actor; ``None``: no gate) for the block."""
    if name is None:
        yield
        return
    gate = ray.get_actor(name)
    ray.get(gate.acquire.remote(trial_id, group, continuing))
    try:
        yield
    finally:
        ray.get(gate.release.remote(trial_id))
