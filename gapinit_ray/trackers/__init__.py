"""Experiment trackers (the spec's ``loggers``): MLflow, TensorBoard, Weights & Biases, fed from the
sweep driver's Tune callback, grouped by seed group (the backends: :mod:`gapinit_ray.trackers.backends`).

All tracker I/O runs in **one child process at the lowest CPU priority** (``SCHED_IDLE``, idle I/O class),
started at the sweep's first report: the driver only puts each report on a queue (a few µs), and the
trackers' CPU (MLflow's SQLite writes, TensorBoard's event files, W&B's ``wandb-core`` service, which
inherits the priority) yields to the trials' Train workers and to Ray's own processes. Inside that
process every tracker has its own thread behind its own queue, so a slow or unreachable tracker never
holds up another. The first error of a tracker is printed once (one line), the tracker is switched off
for the rest of the sweep, and every trial it did not log fully gets ``logging failed: <tracker>:
<error>`` in its trial row (``logger_errors``). When the driver dies, the process notices (its parent
changes), logs what is queued, closes the runs and exits.

A resumed sweep continues the same runs (found by trial id) and skips the epochs a run already has, so
a report that Tune replays after a restore never becomes a second point at the same step.

``gapinit report`` logs the written report to MLflow as the artifacts (``report/``) of one sweep-level
run (tag ``gapinit.kind`` = ``sweep``; the seed groups' parent runs stay one per group): see
:func:`log_report`.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gapinit_ray.trackers.common import EXTRAS as EXTRAS  # re-exported: callers import them from here
from gapinit_ray.trackers.common import epoch_key as epoch_key
from gapinit_ray.trackers.common import missing_package as missing_package
from gapinit_ray.trackers.common import run_id_of as run_id_of

#: logger type -> (module to import, the extra that installs it)
#: the most seconds the end of a sweep waits for the trackers to write what is queued
CLOSE_TIMEOUT_S = 900.0
#: ... and the seconds it waits for a tracker that makes no progress (uses no CPU): one that hangs
CLOSE_STALL_S = 60.0
#: how often the trackers' process checks that the driver is still there
PARENT_POLL_S = 1.0
#: the most seconds a sweep waits for its trackers' set-up before its trials start
READY_TIMEOUT_S = 20.0


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def _one_line(e: BaseException) -> str:
    line = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {line}"[:300]


class _Worker:
    """One tracker behind a queue, in its own thread (inside the trackers' process). The thread builds
    the backend with ``make()`` and runs its one-time set-up (``warm``: imports, a store's creation) at
    the process's normal priority, while the sweep's trials are still starting; then it drops to the
    lowest (:func:`_lowest_priority`, per thread) for the reports. It takes every event queued so far
    at once and hands the batch to the backend, so a backend flushes once per batch rather than once
    per report."""

    def __init__(self, name: str, make) -> None:
        self.name, self.backend = name, None
        self.q: queue.Queue[tuple | None] = queue.Queue()
        self.error: str | None = None
        self.failed_trials: set[str] = set()
        self.inflight: list[tuple] = []  # the batch being written
        self.ready = threading.Event()  # set up (or failed to)
        self.thread = threading.Thread(
            target=self._run, args=(make,), name=f"gapinit-tracker-{name}", daemon=True
        )
        self.thread.start()

    def _run(self, make) -> None:
        try:
            self.backend = make()
            getattr(self.backend, "warm", lambda: None)()
        except Exception as e:  # a tracker that cannot start never reaches the sweep
            self.error = _one_line(e)
            print(
                f"gapinit: logger {self.name} failed ({self.error}); the sweep goes on without it",
                file=sys.stderr,
            )
        finally:
            _lowest_priority()
            self.ready.set()
        self._loop()

    def put(self, event: tuple) -> None:
        if self.error is not None:
            self.failed_trials.add(event[1])
            return
        self.q.put(event)

    def _take(self) -> tuple[list[tuple], bool]:
        batch, last = [self.q.get()], False
        while True:
            try:
                batch.append(self.q.get_nowait())
            except queue.Empty:
                break
        if None in batch:
            batch, last = batch[: batch.index(None)], True
        return batch, last

    def _loop(self) -> None:
        while True:
            batch, last = self._take()
            if self.error is not None:
                self.failed_trials.update(e[1] for e in batch)
            elif batch:
                self.inflight = batch
                try:
                    for kind, tid, data in batch:
                        getattr(self.backend, kind)(tid, **data)
                    self.backend.flush()
                except Exception as e:  # a tracker's failure never reaches the sweep
                    self.error = _one_line(e)
                    self.failed_trials.update(ev[1] for ev in batch)  # the batch may not be written
                    print(
                        f"gapinit: logger {self.name} failed ({self.error}); the sweep goes on without it, "
                        "and the trials it did not log say so in their rows",
                        file=sys.stderr,
                        flush=True,
                    )
                self.inflight = []
            if last:
                if self.error is None:
                    try:
                        self.backend.close()
                    except Exception as e:
                        self.error = _one_line(e)
                return

    def give_up(self, why: str) -> None:
        """The thread did not finish in time (a tracker that hangs): what it holds is not logged."""
        if self.error is None:
            self.error = why
        self.failed_trials.update(e[1] for e in self.inflight)
        while True:
            try:
                event = self.q.get_nowait()
            except queue.Empty:
                break
            if event is not None:
                self.failed_trials.add(event[1])


def _cpu_s() -> float:
    """CPU seconds of this process and of what it started (W&B's service)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def close_workers(workers: list[_Worker], stall_s: float, max_s: float) -> None:
    """Let every worker write what is queued and close its tracker. At the lowest priority on a busy
    machine that can take long, so the wait is for *progress*: it ends when all are done, when the
    process (trackers and W&B's service together) has used no CPU for ``stall_s`` (a tracker waiting
    on a server that does not answer), or after ``max_s`` in all."""
    for w in workers:
        w.q.put(None)
    start = last_change = time.monotonic()
    last_cpu = _cpu_s()
    while any(w.thread.is_alive() for w in workers):
        now = time.monotonic()
        if now - start > max_s or now - last_change > stall_s:
            break
        next(w for w in workers if w.thread.is_alive()).thread.join(1.0)
        cpu = _cpu_s()
        if cpu > last_cpu:  # any CPU: at nice 19 on a busy machine progress can be very slow
            last_cpu, last_change = cpu, time.monotonic()
    for w in workers:
        if w.thread.is_alive():
            w.give_up(f"did not finish (no progress for {stall_s:g} s, or {max_s:g} s in all)")


def _lowest_priority(tid: int | None = None) -> None:
    """Thread ``tid`` (default: the calling one; and the threads and processes it starts later, e.g.
    W&B's ``wandb-core``) yields the CPU and the disk: Linux's ``SCHED_IDLE`` policy (a weight of 3
    against a normal process's 1024; ``nice 19`` is 15, and it measured 2-9 % off two busy processes on
    2 cores where ``SCHED_IDLE`` measured 0-3 %), ``nice 19`` (where ``SCHED_IDLE`` is missing) and the
    idle I/O class. On Linux all three are per thread, and new threads inherit them."""
    tid = threading.get_native_id() if tid is None else tid
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    with contextlib.suppress(Exception):
        import psutil

        psutil.Process(tid).ionice(psutil.IOPRIO_CLASS_IDLE)


def _lower_every_thread() -> None:
    """:func:`_lowest_priority` for every thread of this process: the ones the trackers' libraries
    started during their set-up (at normal priority) too."""
    with contextlib.suppress(Exception):
        import psutil

        for thread in psutil.Process().threads():
            _lowest_priority(thread.id)


def _failures(workers: list[_Worker]) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for w in workers:
        for tid in w.failed_trials:
            out.setdefault(tid, []).append(f"{w.name}: {w.error}")
    return {tid: "logging failed: " + "; ".join(v) for tid, v in out.items()}


def serve(
    raw_spec: dict, sweep_dir: Path, events, answers, parent_pid: int, close_timeout_s: float, ready=None
) -> None:
    """The trackers' process: take events from ``events`` until ``None`` (or until the driver is gone),
    close every tracker and put ``{trial_id: what failed}`` on ``answers``. Each tracker's thread sets
    its tracker up at normal priority, then drops to the lowest (see :class:`_Worker`); this thread
    only moves events, at the lowest from the start. ``ready`` (an event) is set once every tracker is
    set up (or failed to) and every thread is at the lowest priority."""
    import functools

    from gapinit_ray.spec import spec_from_dict
    from gapinit_ray.trackers.backends import BACKENDS

    spec = spec_from_dict(raw_spec)
    workers = [
        _Worker(lg.type, functools.partial(BACKENDS[lg.type], spec, lg, sweep_dir)) for lg in spec.loggers
    ]
    _lowest_priority()
    all_low = False
    while True:
        if not all_low and all(w.ready.is_set() for w in workers):
            _lower_every_thread()  # every tracker is set up: nothing in this process runs above idle
            all_low = True
            if ready is not None:
                ready.set()
        try:
            event = events.get(timeout=PARENT_POLL_S if all_low else 0.1)
        except queue.Empty:
            if os.getppid() == parent_pid:
                continue
            event = None  # the driver died: log what came, close the runs
        except (EOFError, OSError):
            event = None
        if event is None:
            break
        for w in workers:
            w.put(event)
    close_workers(workers, CLOSE_STALL_S, close_timeout_s)
    answers.put(_failures(workers))


class Trackers:
    """The sweep's trackers, driver side: ``result`` / ``end`` only put the event on the queue of the
    trackers' process (:meth:`start`-ed when the sweep starts, so that the trackers' one-time set-up
    runs while the trials are still starting; else at the first event)."""

    def __init__(self, spec, sweep_dir: Path) -> None:
        self.spec, self.sweep_dir = spec, sweep_dir
        self._proc = None
        self._events = self._answers = self._ready = None
        self._sent: set[str] = set()
        self._reported: dict[str, set[float]] = {}  # trial -> epochs sent
        self._ended: set[str] = set()
        self._start_error: str | None = None

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the experiment state: the process and its queues stay in
        # this process; a restored copy starts its own at its first event
        return {"spec": self.spec, "sweep_dir": self.sweep_dir}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["spec"], state["sweep_dir"])

    def start(self) -> None:
        """Start the trackers' process now (once)."""
        if self._proc is None and self._start_error is None:
            self._start()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Start the trackers and wait (``timeout_s`` at most) until they are set up: a sweep calls it
        before its trials start, so that the set-up never runs during their training steps. False
        when it took longer (e.g. an MLflow server that does not answer); the sweep goes on anyway."""
        self.start()
        return self._ready is not None and self._ready.wait(timeout_s)

    def _start(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a driver with Ray's threads
        self._events, self._answers, self._ready = ctx.Queue(), ctx.Queue(), ctx.Event()
        self._proc = ctx.Process(
            target=serve,
            args=(
                self.spec.model_dump(mode="json"),
                self.sweep_dir,
                self._events,
                self._answers,
                os.getpid(),
                CLOSE_TIMEOUT_S,
                self._ready,
            ),
            name="gapinit-trackers",
            daemon=True,
        )
        try:
            self._proc.start()
        except Exception as e:
            self._start_error = _one_line(e)
            print(f"gapinit: loggers not started ({self._start_error}); the sweep goes on", file=sys.stderr)

    def _put(self, kind: str, trial_id: str, data: dict) -> None:
        self.start()
        self._sent.add(trial_id)
        if self._start_error is None:
            self._events.put((kind, trial_id, data))

    def result(self, trial_id: str, group_id: str, config: dict, metrics: dict) -> None:
        numbers = _numbers(metrics)
        self._reported.setdefault(trial_id, set()).add(epoch_key(numbers.get("epoch", 0.0)))
        self._put("result", trial_id, {"group_id": group_id, "config": config, "metrics": numbers})

    def end(self, trial_id: str, status: str, stop_reason: str | None, checkpoint: str | None) -> None:
        self._ended.add(trial_id)
        self._put("end", trial_id, {"status": status, "stop_reason": stop_reason, "checkpoint": checkpoint})

    def catch_up(self) -> None:
        """Send what the results store has and this driver did not send: the reports and ends of the
        trials that finished under a driver that was killed before its trackers wrote them (a resumed
        sweep does not run them again). The trackers skip what their runs already have."""
        import json

        from gapinit_ray.results import ResultsStore
        from gapinit_ray.seedgroup.ids import group_id

        store = ResultsStore(self.spec.storage, self.spec.name)
        trials, metrics = store.trials().to_pylist(), store.metrics().to_pylist()
        by_trial: dict[str, list[dict]] = {}
        for row in metrics:
            by_trial.setdefault(row["trial_id"], []).append(row)

        def text(v) -> str | None:
            return v if isinstance(v, str) and v else None

        for t in trials:
            tid, params = t["trial_id"], json.loads(t["config_json"])
            sent = self._reported.get(tid, set())
            for row in sorted(by_trial.get(tid, []), key=lambda r: float(r.get("epoch") or 0.0)):
                if epoch_key(float(row.get("epoch") or 0.0)) not in sent:
                    self.result(tid, group_id(params), params, row)
            if tid not in self._ended and t.get("status") in ("TERMINATED", "STOPPED", "ERROR"):
                self.end(tid, t["status"], text(t.get("stop_reason")), text(t.get("checkpoint_path")))

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> dict[str, str]:
        """Wait for the queued events (see :func:`close_workers`: ``timeout_s`` at most, a tracker that
        makes no progress for :data:`CLOSE_STALL_S` is given up); return ``{trial_id: what failed}``."""
        try:
            self.catch_up()
        except Exception as e:  # the store unreadable: what was sent is still logged
            print(f"gapinit: loggers: no catch-up from the results store ({_one_line(e)})", file=sys.stderr)
        if self._proc is None:
            return {}
        if self._start_error is not None:
            return {t: f"logging failed: trackers: {self._start_error}" for t in self._sent}
        self._events.put(None)
        try:
            failed = self._answers.get(timeout=timeout_s + 30.0)  # the process has its own deadline
        except (queue.Empty, EOFError, OSError):
            failed = {t: "logging failed: trackers: no answer from the trackers' process" for t in self._sent}
        self._proc.join(10.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5.0)
        self._events.close()
        self._answers.close()
        self._proc = None
        return failed


def log_report(sweep_dir: Path, files: list[str]) -> str | None:
    """Log a written sweep report to MLflow when the sweep's spec (``<sweep>/spec.json``) has an MLflow
    logger: the files go under ``report/`` of the sweep's one sweep-level run (tag ``gapinit.kind`` =
    ``sweep``, created at the first report, reused, so a new report replaces the files). Returns that
    run's id, or None (no MLflow logger, or the report is not on this machine). A failure is one line
    on stderr, never an error of the report."""
    import json

    saved = Path(sweep_dir) / "spec.json"
    local = [Path(f) for f in files if "://" not in f and Path(f).is_file()]
    if not saved.is_file() or not local:
        return None
    from gapinit_ray.spec import spec_from_dict

    spec = spec_from_dict(json.loads(saved.read_text()), source=str(saved))
    loggers = [lg for lg in spec.loggers if lg.type == "mlflow"]
    if not loggers:
        return None
    from gapinit_ray.trackers.backends import MlflowBackend

    try:
        return MlflowBackend(spec, loggers[0], Path(sweep_dir)).log_report(local)
    except Exception as e:
        print(f"gapinit: report not logged to mlflow ({_one_line(e)})", file=sys.stderr)
        return None
