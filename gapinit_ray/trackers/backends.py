"""The trackers behind :class:`gapinit_ray.trackers.Trackers` (they run in the trackers' process).

- **mlflow**: one parent run per seed group, one child run per seed (trial); params = the trial's
  config, metrics per report (step = the epoch, rounded; ``epoch`` is logged as a metric too), tags
  ``gapinit.sweep``, ``gapinit.group_id``, ``gapinit.trial_id``, ``gapinit.init``, ``gapinit.seed``,
  ``gapinit.stop_reason``, ``gapinit.status``; the trial's last adapter as an artifact. Tracking URI:
  the logger's ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store
  ``<sweep>/mlflow/mlflow.db`` (artifacts beside it). Runs are found again by their ``gapinit.*`` tags,
  so a resumed sweep continues the same runs. The reports of a batch go in one ``log_batch`` per run.
- **tensorboard**: ``<sweep>/tensorboard/<trial>/`` event files, one scalar per metric per report
  (step = epoch, rounded), and the HParams plugin's session per trial whose hyperparameters are the
  config *without* the seed plus ``group_id``: TensorBoard's HParams view shows each seed group as one
  session group. Written to disk once per batch.
- **wandb**: offline unless the logger says ``mode: online``; ``dir`` ``<sweep>/wandb``, ``project`` the
  sweep name, ``group`` = seed group id, ``job_type`` = init, run id derived from the trial id
  (``resume="allow"``: a resumed sweep continues the run).

Every backend skips a report whose epoch its run already has, read back from the tracker's own
store when a run is continued (MLflow's metric history, TensorBoard's event files, the W&B offline
runs' logs), so a report replayed after a restore is never a second point at the same step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gapinit_ray.names import DEFAULT_METRIC, val_metric
from gapinit_ray.trackers.common import epoch_key as _key
from gapinit_ray.trackers.common import run_id_of


def _step(metrics: dict[str, float]) -> int:
    return round(metrics.get("epoch", 0.0))


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
        self.steps: dict[str, set[int]] = {}

    def warm(self) -> None:
        """The one-time set-up (see :meth:`MlflowBackend.warm`): the writer's imports."""
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401

    @staticmethod
    def logged_epochs(run_dir: Path) -> set[float]:
        """The values of the ``epoch`` scalar already in a trial's event files (TensorBoard's reader)."""
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

        epochs: set[float] = set()
        for path in sorted(run_dir.glob("events.out.tfevents.*")):
            for event in LegacyEventFileLoader(str(path)).Load():
                epochs.update(_key(v.simple_value) for v in event.summary.value if v.tag == "epoch")
        return epochs

    def _writer(self, trial_id: str, group_id: str, config: dict):
        w = self.writers.get(trial_id)
        if w is None:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams

            w = SummaryWriter(log_dir=str(self.root / trial_id), flush_secs=3600)  # flushed per batch
            exp, ssi, _ = hparams(_hparams(config, group_id), {DEFAULT_METRIC: 0.0, val_metric("loss"): 0.0})
            for summary in (exp, ssi):
                w.file_writer.add_summary(summary)
            self.writers[trial_id] = w
        return w

    def result(self, trial_id: str, group_id: str, config: dict, metrics: dict[str, float]) -> None:
        key, run_dir = _key(metrics.get("epoch", 0.0)), self.root / trial_id
        if trial_id not in self.steps:  # what earlier writers of this trial wrote
            self.steps[trial_id] = self.logged_epochs(run_dir) if run_dir.is_dir() else set()
        if key in self.steps[trial_id]:
            return
        w = self._writer(trial_id, group_id, config)
        for k, v in metrics.items():
            w.add_scalar(k, v, global_step=_step(metrics))
        self.steps[trial_id].add(key)

    def flush(self) -> None:
        for w in self.writers.values():
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
        self.steps: dict[str, set[int]] = {}  # trial -> steps its run has
        self.pending: dict[str, list] = {}  # run id -> metrics not yet sent

    def warm(self) -> None:
        """The one-time set-up, done when the sweep starts, before its trials train (the tracker's
        thread runs it at normal priority, then drops to the lowest): MLflow's imports, its SQLite
        store's creation (MLflow's schema migrations: seconds of CPU) and the experiment. What a
        report costs after that is small (about 1 ms of CPU)."""
        self._client()

    def _client(self):
        if self.client is None:
            from mlflow.tracking import MlflowClient

            if self.uri.startswith("sqlite:///"):
                self._create_sqlite(Path(self.uri[len("sqlite:///") :]))
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(self.experiment_name)
            self.experiment_id = (
                exp.experiment_id
                if exp is not None
                else self.client.create_experiment(self.experiment_name, artifact_location=self.artifacts)
            )
        return self.client

    @staticmethod
    def _create_sqlite(db: Path) -> None:
        """Create MLflow's SQLite store under another name, then rename it: MLflow's table creation is
        many transactions, and a driver killed in the middle must not leave a store it cannot open."""
        if db.exists():
            return
        from mlflow.tracking import MlflowClient

        db.parent.mkdir(parents=True, exist_ok=True)
        tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
        os.replace(tmp, db)  # (MLflow keeps the tmp store cached, open on the renamed file: unused)

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
        rid = self.runs.get(trial_id)
        if rid is not None:
            return rid
        rid = self._find("trial", "gapinit.trial_id", trial_id)
        if rid is not None:  # a resumed sweep: the reports the run has, and its group's run to close
            self.steps[trial_id] = {_key(m.value) for m in self.client.get_metric_history(rid, "epoch")}
            parent = self.parents.get(group_id) or self._find("group", "gapinit.group_id", group_id)
            if parent is not None:
                self.parents[group_id] = parent
        else:
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
            self.steps[trial_id] = set()
        self.runs[trial_id] = rid
        return rid

    def result(self, trial_id: str, group_id: str, config: dict, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        rid = self._run(trial_id, group_id, config)
        step, now, key = _step(metrics), int(time.time() * 1000), _key(metrics.get("epoch", 0.0))
        if key in self.steps[trial_id]:
            return
        self.pending.setdefault(rid, []).extend(Metric(k, v, now, step) for k, v in metrics.items())
        self.steps[trial_id].add(key)

    def flush(self) -> None:
        while self.pending:
            rid, metrics = next(iter(self.pending.items()))
            for i in range(0, len(metrics), 1000):  # MLflow's limit per log_batch
                self.client.log_batch(rid, metrics=metrics[i : i + 1000])
            del self.pending[rid]

    def end(self, trial_id: str, status: str, stop_reason: str | None, checkpoint: str | None) -> None:
        self.flush()
        rid = self.runs.get(trial_id) or self._find("trial", "gapinit.trial_id", trial_id)
        if rid is None:
            return
        client = self._client()
        tags = client.get_run(rid).data.tags  # its group's run is closed at the end (also on a resume)
        if "mlflow.parentRunId" in tags:
            self.parents.setdefault(tags.get("gapinit.group_id", ""), tags["mlflow.parentRunId"])
        client.set_tag(rid, "gapinit.status", status)
        client.set_tag(rid, "gapinit.stop_reason", stop_reason or "")
        if checkpoint:
            from gapinit_ray.names import ADAPTER_DIR

            adapter = Path(checkpoint) / ADAPTER_DIR
            if adapter.is_dir():
                client.log_artifacts(rid, str(adapter), artifact_path="adapter")
        client.set_terminated(rid, "FAILED" if status == "ERROR" else "FINISHED")

    def close(self) -> None:
        self.flush()
        for rid in self.parents.values():
            self._client().set_terminated(rid, "FINISHED")

    def log_report(self, files: list[Path]) -> str:
        """The report's files as artifacts ``report/`` of the sweep-level run (created once)."""
        rid = self._find("sweep", "gapinit.sweep", self.sweep)
        if rid is None:
            tags = {"gapinit.kind": "sweep", "gapinit.sweep": self.sweep}
            rid = (
                self._client()
                .create_run(self.experiment_id, tags=tags, run_name=f"sweep {self.sweep}")
                .info.run_id
            )
        for f in files:
            self.client.log_artifact(rid, str(f), artifact_path="report")
        self.client.set_terminated(rid, "FINISHED")
        return rid


def wandb_records(run_dir: Path) -> Iterator[Any]:
    """The protobuf ``Record`` messages of an offline W&B run, read from its ``.wandb`` log: W&B's
    LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of records, each with a 7-byte
    checksum/length/type header; a record may be split FIRST/MIDDLE/LAST over blocks). A log cut short
    (a killed process) ends at its last whole record."""
    import struct

    from wandb.proto import wandb_internal_pb2

    logs = sorted(run_dir.glob("*.wandb"))
    if not logs:
        return
    data = logs[0].read_bytes()
    if data[:4] != b":W&B":
        return
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zeros: the end of what was written
            return
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if len(chunk) < length:
            return
        if kind in (2, 3):  # FIRST, MIDDLE
            pending += chunk
            continue
        payload, pending = pending + chunk, b""
        if kind not in (1, 4):
            continue
        rec = wandb_internal_pb2.Record()
        try:
            rec.ParseFromString(payload)
        except Exception:
            return
        yield rec


def wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    """The history rows of an offline W&B run (one per ``run.log``: the metrics, ``_step``, ...)."""
    import json

    return [
        {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
        for rec in wandb_records(run_dir)
        if rec.WhichOneof("record_type") == "history"
    ]


class WandbBackend:
    def __init__(self, spec, logger, sweep_dir: Path) -> None:
        self.sweep = spec.name
        self.project = logger.experiment or spec.name
        self.mode = logger.mode
        self.dir = sweep_dir / "wandb"
        self.runs: dict[str, Any] = {}
        self.steps: dict[str, set[int]] = {}

    def warm(self) -> None:
        """The one-time set-up (see :meth:`MlflowBackend.warm`): W&B's imports. Its ``wandb-core``
        service starts at the first run, from the tracker's thread at the lowest priority, which it
        inherits."""
        import wandb  # noqa: F401

    def _run(self, trial_id: str, group_id: str, config: dict):
        run = self.runs.get(trial_id)
        if run is None:
            import wandb

            rid = run_id_of(trial_id)
            self.dir.mkdir(parents=True, exist_ok=True)
            run = wandb.init(
                project=self.project,
                dir=str(self.dir),
                mode=self.mode,
                group=group_id,
                job_type=str(config.get("init", "trial")),
                id=rid,
                name=trial_id,
                resume="allow",
                config=config,
                reinit="create_new",
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            )
            self.runs[trial_id] = run
        return run

    def result(self, trial_id: str, group_id: str, config: dict, metrics: dict[str, float]) -> None:
        key = _key(metrics.get("epoch", 0.0))
        if trial_id not in self.steps:  # what earlier (offline) runs of this id logged
            self.steps[trial_id] = {
                _key(row["epoch"])
                for d in (self.dir / "wandb").glob(f"offline-run-*-{run_id_of(trial_id)}")
                for row in wandb_history(d)
                if isinstance(row.get("epoch"), int | float)
            }
        if key in self.steps[trial_id]:
            return
        self._run(trial_id, group_id, config).log(metrics, step=_step(metrics))
        self.steps[trial_id].add(key)

    def flush(self) -> None:
        pass  # W&B's service writes the run's log itself

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


BACKENDS = {"mlflow": MlflowBackend, "tensorboard": TensorBoardBackend, "wandb": WandbBackend}
