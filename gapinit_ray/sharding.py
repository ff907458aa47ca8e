"""Sharded execution on Ray: a pool of stateful actors (one frozen model each) works through shards.

Used by calibration (and the frozen-feature cache): the expensive state (a loaded backbone) is built
once per actor by ``make_state(**state_kwargs)``; each shard is processed by ``run_shard(state,
payload)``. Both are plain module-level functions, so the same code runs in one process
(:func:`run_local`) or on a cluster (:func:`run_on_ray`).

Faults: an actor that dies (node lost, OOM-killed, killed by pid) is replaced and its shard retried;
a shard that fails ``max_attempts`` times fails the whole run with a message naming the shard's items.
A :class:`~gapinit_ray.errors.GapinitError` raised by ``run_shard`` (bad input: a corrupt image, NaN
activations) is deterministic, so it is not retried but re-raised at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gapinit_ray.errors import GapinitError


class ShardFailed(GapinitError):
    """A shard failed on every attempt."""


@dataclass
class WorkerOptions:
    num_workers: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_attempts: int = 2


def run_local(
    make_state: Callable[..., Any],
    run_shard: Callable[[Any, Any], Any],
    payloads: Sequence[Any],
    state_kwargs: dict | None = None,
) -> Iterator[tuple[int, Any]]:
    """The one-process path: same functions, no Ray."""
    state = make_state(**(state_kwargs or {}))
    for i, payload in enumerate(payloads):
        yield i, run_shard(state, payload)


class _ShardActor:
    def __init__(self, make_state: Callable[..., Any], state_kwargs: dict, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.state = make_state(**state_kwargs)

    def run(self, run_shard: Callable[[Any, Any], Any], payload: Any) -> Any:
        return run_shard(self.state, payload)

    def pid(self) -> int:
        return os.getpid()


def run_on_ray(
    make_state: Callable[..., Any],
    run_shard: Callable[[Any, Any], Any],
    payloads: Sequence[Any],
    options: WorkerOptions,
    state_kwargs: dict | None = None,
    describe: Callable[[int], str] = lambda i: f"shard {i}",
    on_actor: Callable[[Any], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(shard_index, result)`` as shards finish (any order). Needs ``ray.init`` done."""
    import ray
    from ray.exceptions import (
        ActorDiedError,
        ActorUnavailableError,
        RayActorError,
        RayTaskError,
        WorkerCrashedError,
    )

    actor_cls = ray.remote(_ShardActor).options(
        num_cpus=options.num_cpus, num_gpus=options.num_gpus, max_restarts=0, max_concurrency=1
    )
    threads = max(1, int(options.num_cpus))
    kwargs = state_kwargs or {}

    def new_actor():
        actor = actor_cls.remote(make_state, kwargs, threads)
        if on_actor is not None:
            on_actor(actor)
        return actor

    pending = list(range(len(payloads)))[::-1]  # pop() takes shard 0 first
    attempts = [0] * len(payloads)
    idle = [new_actor() for _ in range(min(options.num_workers, len(payloads)))]
    running: dict[Any, tuple[int, Any]] = {}
    try:
        while pending or running:
            while pending and idle:
                i = pending.pop()
                actor = idle.pop()
                attempts[i] += 1
                running[actor.run.remote(run_shard, payloads[i])] = (i, actor)
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            i, actor = running.pop(ref)
            try:
                result = ray.get(ref)
            except (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError) as e:
                ray.kill(actor, no_restart=True)
                if attempts[i] >= options.max_attempts:
                    raise ShardFailed(
                        f"{describe(i)} failed {attempts[i]} times (worker died: {_last_line(e)}); "
                        "check the workers' logs (`ray logs`) for out-of-memory or node loss"
                    ) from None
                pending.append(i)
                idle.append(new_actor())
                continue
            except RayTaskError as e:
                cause = e.as_instanceof_cause()
                if isinstance(cause, GapinitError):
                    raise type(cause)(*cause.args) from None
                if attempts[i] >= options.max_attempts:
                    raise ShardFailed(f"{describe(i)} failed {attempts[i]} times: {_last_line(e)}") from None
                pending.append(i)
                idle.append(actor)
                continue
            idle.append(actor)
            yield i, result
    finally:
        for actor in idle + [a for _, a in running.values()]:
            ray.kill(actor, no_restart=True)


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
