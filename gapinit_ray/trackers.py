"""Experiment trackers (the spec's ``loggers``): MLflow, TensorBoard, Weights & Biases, fed from the
sweep driver's Tune callback, grouped by seed group.

- **mlflow**: one parent run per seed group, one child run per seed (trial); params = the trial's
  config, metrics per report (step = the epoch, rounded; ``epoch`` is logged as a metric too), tags
  ``gapinit.sweep``, ``gapinit.group_id``, ``gapinit.trial_id``, ``gapinit.init``, ``gapinit.seed``,
  ``gapinit.stop_reason``, ``gapinit.status``; the trial's last adapter as an artifact. Tracking URI:
  the logger's ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store
  ``<sweep>/mlflow/mlflow.db`` (artifacts beside it). Runs are found again by their ``gapinit.*`` tags,
  so a resumed sweep continues the same runs.
- **tensorboard**: ``<sweep>/tensorboard/<trial>/`` event files, one scalar per metric per report
  (step = epoch, rounded), and the HParams plugin's session per trial whose hyperparameters are the
  config *without* the seed plus ``group_id``: TensorBoard's HParams view shows each seed group as one
  session group.
- **wandb**: offline unless the logger says ``mode: online``; ``dir`` ``<sweep>/wandb``, ``project`` the
  sweep name, ``group`` = seed group id, ``job_type`` = init, run id derived from the trial id
  (``resume="allow"``: a resumed sweep continues the run).

Every tracker runs in its own thread behind a queue: the driver only enqueues, so a slow or
unreachable tracker never slows a trial or the sweep. The first error of a tracker is printed once
(one line), the tracker is switched off for the rest of the sweep, and every trial it did not log
fully gets ``logging failed: <tracker>: <error>`` in its trial row (``logger_errors``).
"""

from __future__ import annotations

import math
import os
import queue
import re
import sys
import threading
from pathlib import Path
from typing import Any

from gapinit_ray.names import DEFAULT_METRIC, val_metric

#: logger type -> (module to import, the extra that installs it)
EXTRAS = {
    "mlflow": ("mlflow", "mlflow"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
}
#: seconds the driver waits at the end of a sweep for trackers to write what is queued
CLOSE_TIMEOUT_S = 60.0


def missing_package(kind: str) -> str | None:
    """The ``pip install`` hint when the tracker's package is not installed, else None."""
    import importlib.util

    module, extra = EXTRAS[kind]
    if importlib.util.find_spec(module) is None:
        return f"pip install 'gapinit-ray[{extra}]'"
    return None


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def run_id_of(trial_id: str) -> str:
    """A tracker-safe run id derived from a trial id (letters, digits, ``-``, ``_``; at most 64)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", trial_id)[-64:].strip("-")


class _Event:
    __slots__ = ("data", "kind", "trial_id")

    def __init__(self, kind: str, trial_id: str, data: dict) -> None:
        self.kind, self.trial_id, self.data = kind, trial_id, data


class _Worker:
    """One tracker behind a queue, in its own thread."""

    def __init__(self, name: str, backend) -> None:
        self.name, self.backend = name, backend
        self.q: queue.Queue[_Event | None] = queue.Queue()
        self.error: str | None = None
        self.failed_trials: set[str] = set()
        self.thread = threading.Thread(target=self._loop, name=f"gapinit-tracker-{name}", daemon=True)
        self.thread.start()

    def put(self, event: _Event) -> None:
        if self.error is not None:
            self.failed_trials.add(event.trial_id)
            return
        self.q.put(event)

    def _loop(self) -> None:
        while True:
            event = self.q.get()
            if event is None:
                return
            if self.error is not None:
                self.failed_trials.add(event.trial_id)
                continue
            try:
                getattr(self.backend, event.kind)(event.trial_id, **event.data)
            except Exception as e:  # a tracker's failure never reaches the sweep
                line = str(e).strip().splitlines()[0] if str(e).strip() else ""
                self.error = f"{type(e).__name__}: {line}"[:300]
                self.failed_trials.add(event.trial_id)
                print(
                    f"gapinit: logger {self.name} failed ({self.error}); the sweep goes on without it, "
                    "and the trials it did not log say so in their rows",
                    file=sys.stderr,
                )

    def close(self, timeout_s: float) -> None:
        self.q.put(None)
        self.thread.join(timeout_s)
        if self.thread.is_alive():  # still busy (a tracker that hangs): what is queued is not logged
            if self.error is None:
                self.error = f"did not finish within {timeout_s:g} s"
            while True:
                try:
                    event = self.q.get_nowait()
                except queue.Empty:
                    break
                if event is not None:
                    self.failed_trials.add(event.trial_id)
            return
        with_close = getattr(self.backend, "close", None)
        if with_close is not None and self.error is None:
            try:
                with_close()
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"[:300]


class Trackers:
    """The sweep's trackers (driver side). ``result`` / ``end`` only enqueue."""

    def __init__(self, spec, sweep_dir: Path) -> None:
        self.spec, self.sweep_dir = spec, sweep_dir
        self._workers: list[_Worker] | None = None  # started at the first event

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the experiment state: threads, queues and tracker clients
        # stay in this process; a restored copy starts its own at its first event
        return {"spec": self.spec, "sweep_dir": self.sweep_dir, "_workers": None}

    @property
    def workers(self) -> list[_Worker]:
        if self._workers is None:
            backends = {"mlflow": MlflowBackend, "tensorboard": TensorBoardBackend, "wandb": WandbBackend}
            self._workers = [
                _Worker(lg.type, backends[lg.type](self.spec, lg, self.sweep_dir)) for lg in self.spec.loggers
            ]
        return self._workers

    def result(self, trial_id: str, group_id: str, config: dict, metrics: dict) -> None:
        data = {"group_id": group_id, "config": config, "metrics": _numbers(metrics)}
        for w in self.workers:
            w.put(_Event("result", trial_id, data))

    def end(self, trial_id: str, status: str, stop_reason: str | None, checkpoint: str | None) -> None:
        data = {"status": status, "stop_reason": stop_reason, "checkpoint": checkpoint}
        for w in self.workers:
            w.put(_Event("end", trial_id, data))

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> dict[str, str]:
        """Wait for the queued events (at most ``timeout_s`` in all); return ``{trial_id: what failed}``."""
        import time

        deadline = time.monotonic() + timeout_s
        failures: dict[str, list[str]] = {}
        for w in self._workers or []:
            w.close(max(deadline - time.monotonic(), 1.0))
            for tid in w.failed_trials:
                failures.setdefault(tid, []).append(f"{w.name}: {w.error}")
        return {tid: "logging failed: " + "; ".join(v) for tid, v in failures.items()}


def _hparams(config: dict, group_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {"group_id": group_id}
    for k, v in config.items():
        if k == "seed":
            continue
        out[k] = v if isinstance(v, int | float | str | bool) else str(v)
    return out


class TensorBoardBackend:
    def __init__(self, spec, logger, sweep_dir: Path) -> None:
        self.root = sweep_dir / "tensorboard"
        self.writers: dict[str, Any] = {}

    def _writer(self, trial_id: str, group_id: str, config: dict):
        w = self.writers.get(trial_id)
        if w is None:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams

            w = SummaryWriter(log_dir=str(self.root / trial_id))
            exp, ssi, _ = hparams(_hparams(config, group_id), {DEFAULT_METRIC: 0.0, val_metric("loss"): 0.0})
            for summary in (exp, ssi):
                w.file_writer.add_summary(summary)
            self.writers[trial_id] = w
        return w

    def result(self, trial_id: str, group_id: str, config: dict, metrics: dict[str, float]) -> None:
        w = self._writer(trial_id, group_id, config)
        step = round(metrics.get("epoch", 0.0))
        for k, v in metrics.items():
            w.add_scalar(k, v, global_step=step)
        w.flush()

    def end(self, trial_id: str, status: str, stop_reason: str | None, checkpoint: str | None) -> None:
        w = self.writers.pop(trial_id, None)
        if w is None:
            return
        from torch.utils.tensorboard.summary import hparams

        _, _, sei = hparams({}, {})
        w.file_writer.add_summary(sei)
        w.add_text("status", f"{status}" + (f" ({stop_reason})" if stop_reason else ""))
        w.close()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


class MlflowBackend:
    def __init__(self, spec, logger, sweep_dir: Path) -> None:
        self.sweep = spec.name
        local = sweep_dir / "mlflow"
        self.uri = (
            logger.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local}/mlflow.db"
        )
        self.experiment_name = logger.experiment or spec.name
        self.artifacts = str(local / "artifacts")
        self.client = None
        self.runs: dict[str, str] = {}
        self.parents: dict[str, str] = {}

    def _client(self):
        if self.client is None:
            from mlflow.tracking import MlflowClient

            if self.uri.startswith("sqlite:///"):
                Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(self.experiment_name)
            self.experiment_id = (
                exp.experiment_id
                if exp is not None
                else self.client.create_experiment(self.experiment_name, artifact_location=self.artifacts)
            )
        return self.client

    def _find(self, kind: str, key: str, value: str) -> str | None:
        runs = self._client().search_runs(
            [self.experiment_id],
            filter_string=f"tags.`gapinit.kind` = '{kind}' and tags.`{key}` = '{value}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _parent(self, group_id: str, config: dict) -> str:
        rid = self.parents.get(group_id) or self._find("group", "gapinit.group_id", group_id)
        if rid is None:
            tags = {"gapinit.kind": "group", "gapinit.sweep": self.sweep, "gapinit.group_id": group_id}
            rid = (
                self._client()
                .create_run(self.experiment_id, tags=tags, run_name=f"group {group_id}")
                .info.run_id
            )
            params = {k: str(v)[:500] for k, v in config.items() if k != "seed"}
            from mlflow.entities import Param

            self.client.log_batch(rid, params=[Param(k, v) for k, v in params.items()])
        self.parents[group_id] = rid
        return rid

    def _run(self, trial_id: str, group_id: str, config: dict) -> str:
        rid = self.runs.get(trial_id) or self._find("trial", "gapinit.trial_id", trial_id)
        if rid is None:
            parent = self._parent(group_id, config)
            tags = {
                "gapinit.kind": "trial",
                "gapinit.sweep": self.sweep,
                "gapinit.group_id": group_id,
                "gapinit.trial_id": trial_id,
                "gapinit.init": str(config.get("init", "")),
                "gapinit.seed": str(config.get("seed", "")),
                "mlflow.parentRunId": parent,
            }
            rid = self._client().create_run(self.experiment_id, tags=tags, run_name=trial_id).info.run_id
            from mlflow.entities import Param

            self.client.log_batch(rid, params=[Param(k, str(v)[:500]) for k, v in config.items()])
        self.runs[trial_id] = rid
        return rid

    def result(self, trial_id: str, group_id: str, config: dict, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        rid = self._run(trial_id, group_id, config)
        step, now = round(metrics.get("epoch", 0.0)), int(time.time() * 1000)
        self.client.log_batch(rid, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def end(self, trial_id: str, status: str, stop_reason: str | None, checkpoint: str | None) -> None:
        rid = self.runs.get(trial_id) or self._find("trial", "gapinit.trial_id", trial_id)
        if rid is None:
            return
        client = self._client()
        client.set_tag(rid, "gapinit.status", status)
        client.set_tag(rid, "gapinit.stop_reason", stop_reason or "")
        if checkpoint:
            from gapinit_ray.train import ADAPTER_DIR

            adapter = Path(checkpoint) / ADAPTER_DIR
            if adapter.is_dir():
                client.log_artifacts(rid, str(adapter), artifact_path="adapter")
        client.set_terminated(rid, "FAILED" if status == "ERROR" else "FINISHED")

    def close(self) -> None:
        for rid in self.parents.values():
            self._client().set_terminated(rid, "FINISHED")


class WandbBackend:
    def __init__(self, spec, logger, sweep_dir: Path) -> None:
        self.sweep = spec.name
        self.project = logger.experiment or spec.name
        self.mode = logger.mode
        self.dir = sweep_dir / "wandb"
        self.runs: dict[str, Any] = {}

    def _run(self, trial_id: str, group_id: str, config: dict):
        run = self.runs.get(trial_id)
        if run is None:
            import wandb

            self.dir.mkdir(parents=True, exist_ok=True)
            run = wandb.init(
                project=self.project,
                dir=str(self.dir),
                mode=self.mode,
                group=group_id,
                job_type=str(config.get("init", "trial")),
                id=run_id_of(trial_id),
                name=trial_id,
                resume="allow",
                config=config,
                reinit="create_new",
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            )
            self.runs[trial_id] = run
        return run

    def result(self, trial_id: str, group_id: str, config: dict, metrics: dict[str, float]) -> None:
        self._run(trial_id, group_id, config).log(metrics, step=round(metrics.get("epoch", 0.0)))

    def end(self, trial_id: str, status: str, stop_reason: str | None, checkpoint: str | None) -> None:
        run = self.runs.pop(trial_id, None)
        if run is None:
            return
        run.summary["gapinit.status"] = status
        run.summary["gapinit.stop_reason"] = stop_reason or ""
        run.finish(exit_code=1 if status == "ERROR" else 0)

    def close(self) -> None:
        for run in self.runs.values():
            run.finish()
