"""Train slots: how many trials of a seed-group sweep run a Ray Train job at once, and which go first.

With seed-group ASHA, members that reach a rung wait there (inside their trainable, holding no CPU/GPU)
until the rest of their group gets there, so Tune keeps ``slots x group size`` trials alive
(``gapinit_ray.sweep.max_concurrent``). Without a gate every live trial would start its
TorchTrainer at once: a Train controller, its placement-group cleaner, its report queue, all importing
torch, for a worker group that then waits for CPUs another trial holds. On a small machine those idle
runs cost more memory than the training itself and their start-ups steal the CPUs the training needs.

:class:`TrainSlots` (one actor per sweep, no CPU) hands out ``slots`` permits; a trial's trainable holds
one for the duration of each TorchTrainer run (:func:`train_slot`). Waiting requests are served:

1. a member continuing after its group was promoted at a rung, before any first segment;
2. then members of the group that comes first in the sweep's grid (finish a group before starting the
   next one: its rung decision comes sooner, a stopped group's members are never trained, and a whole
   group training at once can hold at its rungs);
3. then in order of request.

A trial that dies holding a permit gets it taken back by the sweep driver (:func:`release_slot` on the
trial's error or completion), so a crashed trainable never leaks a slot.

The actor is named after the sweep (:func:`slots_name`) and found by that name through
:func:`slots_actor` only; the trial side passes the name around (it is what a Train worker's context
can carry).

The actor also tells which trials are training now and which are still starting
(:meth:`TrainSlots.holders`, by Tune trial id: they hold a permit, and their Train run has its
workers or not yet, as :meth:`TrainSlots.started` told it): a member at a rung whose group's other
members are all on their way there keeps its run (and its slot) instead of ending it (see
:meth:`gapinit_ray.seedgroup.trial_side.RungGate.may_hold`). A holder whose run has not started counts only for a
limited time: it may be waiting for CPUs/GPUs that the members holding at the rung would never free.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
from collections.abc import Iterator

import ray


@ray.remote(num_cpus=0, max_concurrency=1000)
class TrainSlots:
    def __init__(self, slots: int, expect: int = 0, window_s: float = 30.0) -> None:
        self._free = max(1, int(slots))
        # the first `expect` requests (the trials Tune starts at once) are served together, in order of
        # priority, not of arrival: else whichever trial actors start first take the slots, and a whole
        # group rarely trains at once (none of its members could hold at a rung); at most `window_s`
        self._open = expect <= 0
        if ray.get_runtime_context().was_current_actor_reconstructed:
            # restarted after its process died (start_slots): the trials starting together were served
            # long ago; serve at once. The permits the running trials held are not known to this
            # process: it grants up to `slots` more while they finish (Ray's resource scheduling still
            # keeps their workers off CPUs/GPUs that are taken), and their releases give back nothing
            self._open = True
        self._expect, self._window_s, self._requests, self._timer = expect, window_s, 0, None
        self._holders: dict[str, int] = {}  # trial id -> permits held (a retried trial may re-acquire)
        self._tune_ids: dict[str, str] = {}  # trial id -> Tune trial id, of holders that gave one
        self._started: set[str] = set()  # trial ids whose Train run has its workers (started())
        self._waiting: list[tuple[tuple, asyncio.Future, str]] = []  # heap of (priority, future, tid)
        self._group_order: dict[str, int] = {}
        self._seq = itertools.count()

    async def acquire(
        self,
        trial_id: str,
        group: str,
        continuing: bool,
        tune_id: str | None = None,
        group_rank: int | None = None,
    ) -> None:
        """Wait for a permit (see the module docstring for the order). ``group_rank``: the group's place
        in the sweep's grid (default: the order groups are first seen in)."""
        first_seen = len(self._group_order) if group_rank is None else group_rank
        rank = self._group_order.setdefault(group, first_seen)
        if tune_id is not None:
            self._tune_ids[trial_id] = tune_id
        self._requests += 1
        if not self._open:
            if self._requests >= self._expect:
                self._open = True
            elif self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._window_s, self._open_now)
        if self._open and self._free > 0 and not self._waiting:
            self._grant(trial_id)
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, ((0 if continuing else 1, rank, next(self._seq)), fut, trial_id))
        self._serve()
        await fut

    def _open_now(self) -> None:
        self._open = True
        self._serve()

    def started(self, tune_id: str) -> None:
        """The Train run of the holder with Tune id ``tune_id`` has its workers and is training."""
        self._started.update(t for t, u in self._tune_ids.items() if u == tune_id and t in self._holders)

    def holders(self) -> tuple[list[str], list[str]]:
        """Tune trial ids of the holders whose Train run has started, and of those still starting."""
        tune = [(self._tune_ids[t], t in self._started) for t in self._holders if t in self._tune_ids]
        return [u for u, up in tune if up], [u for u, up in tune if not up]

    def release(self, trial_id: str) -> None:
        """Give back every permit ``trial_id`` holds and drop its waiting requests (idempotent)."""
        self._free += self._holders.pop(trial_id, 0)
        self._tune_ids.pop(trial_id, None)
        self._started.discard(trial_id)
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
        while self._open and self._free > 0 and self._waiting:
            _, fut, tid = heapq.heappop(self._waiting)
            if fut.done():
                continue
            self._grant(tid)
            fut.set_result(None)


def slots_name(sweep_root: str | os.PathLike[str]) -> str:
    """The slot actor's name for the sweep at ``sweep_root`` (one actor per sweep)."""
    return f"gapinit-slots:{os.fspath(sweep_root)}"


def slots_actor(name: str):
    """The sweep's slot actor by its :func:`slots_name`; ValueError when it is gone (the sweep ended)."""
    return ray.get_actor(name)


def start_slots(name: str, slots: int, expect: int = 0):
    """The sweep's slot actor (named, in the driver's namespace; it ends with the driver). ``expect``:
    how many trials start at once (their requests are served together, see ``TrainSlots``).

    Ray restarts it when its process dies (any number of times), and calls that were in flight,
    a trial waiting for a permit among them, are retried on the new one: a killed slot actor costs
    the sweep nothing but its bookkeeping of the permits held at that moment (see ``TrainSlots``)."""
    return TrainSlots.options(name=name, get_if_exists=True, max_restarts=-1, max_task_retries=-1).remote(
        slots, expect
    )


def release_slot(name: str | None, trial_id: str) -> None:
    """Give back what ``trial_id`` holds (the driver, when a trial ends or dies); no actor: nothing."""
    if name is not None:
        with contextlib.suppress(ValueError):
            slots_actor(name).release.remote(trial_id)


def tell_started(name: str | None, tune_id: str | None) -> None:
    """The Train run of the member with Tune id ``tune_id`` has its workers (see ``TrainSlots.started``)."""
    if name is not None and tune_id is not None:
        with contextlib.suppress(ValueError):  # no slot actor (the sweep is ending): nobody holds
            slots_actor(name).started.remote(tune_id)


def slot_holders(name: str | None, timeout_s: float = 30) -> tuple[list[str], list[str]] | None:
    """(training, starting) Tune ids of the slot holders, or None when the actor cannot tell (gone or
    busy: a member then ends its run at the rung, as without holding)."""
    if name is None:
        return None
    try:
        return ray.get(slots_actor(name).holders.remote(), timeout=timeout_s)
    except Exception:
        return None


@contextlib.contextmanager
def train_slot(
    name: str | None,
    trial_id: str,
    group: str,
    continuing: bool,
    tune_id: str | None = None,
    group_rank: int | None = None,
) -> Iterator[None]:
    """Hold one of the sweep's Train slots (``name``: its actor; ``None``: no gate) for the block."""
    if name is None:
        yield
        return
    gate = slots_actor(name)
    ray.get(gate.acquire.remote(trial_id, group, continuing, tune_id, group_rank))
    try:
        yield
    finally:
        ray.get(gate.release.remote(trial_id))
