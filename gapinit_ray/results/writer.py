"""Writes of the results store: one metric file per report, one trial file per trial, each atomic.

Any number of processes may write at once: every report and every trial row is its own file
(:mod:`~gapinit_ray.results.layout`), written by temp + rename (:func:`~gapinit_ray.results._fs.write_bytes`).
The trainer reports its current learning rate as ``lr``; that name is the configured lr column, so the
reported one is stored as ``lr_now``.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gapinit_ray.results._fs import ResultsError, list_files, write_bytes
from gapinit_ray.results.layout import SUFFIX, Layout, file_epoch, is_compacted
from gapinit_ray.results.schema import (
    METRICS,
    RESERVED,
    TRIAL_STATUSES,
    TS,
    config_columns,
    group_key,
    metric_value,
    plain,
    typed,
)


def _now_ms() -> pa.Scalar:
    return pa.scalar(int(time.time() * 1000), TS)


def _one_row(columns: dict[str, pa.Scalar]) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array([s.as_py()], s.type) for s in columns.values()],
        schema=pa.schema([(c, s.type) for c, s in columns.items()]),
    )


def serialize(table: pa.Table, **options: Any) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **{"compression": "zstd", **options})
    return sink.getvalue().to_pybytes()


class Writer(Layout):
    """The writes of :class:`~gapinit_ray.results.store.ResultsStore`, and the read of one trial row."""

    def _iteration(self, trial_id: str, epoch: float) -> int:
        """1-based report index: 1 + the trial's reports at earlier epochs (per-epoch files and rows of
        its compacted file), so a retried report keeps the index of the one it replaces whatever order
        reports arrive in, before or after compaction."""
        earlier: set[float] = set()
        for path in list_files(self.loc, self.trial_metrics_dir(trial_id), SUFFIX, 1):
            if is_compacted(path):
                earlier.update(e for e in self._compacted_epochs(path) if e < epoch)
                continue
            e = file_epoch(path.rpartition("/")[2])
            if e is not None and e < epoch:
                earlier.add(e)
        return len(earlier) + 1

    def _compacted_epochs(self, path: str) -> list[float]:
        try:
            with self.loc.fs.open_input_file(path) as f:
                return [e for e in pq.read_table(f, columns=["epoch"])["epoch"].to_pylist() if e is not None]
        except (FileNotFoundError, pa.ArrowInvalid):
            return []

    def write_report(
        self,
        trial_id: str,
        config: Mapping[str, Any],
        metrics: Mapping[str, Any],
        *,
        host: str | None = None,
        status: str = "RUNNING",
    ) -> None:
        """Store one report of a trial (atomically; a retry for the same epoch replaces it).

        ``metrics`` is the dict the trial reported: it must have a numeric ``epoch``; numeric values
        become float64 columns (``lr`` is stored as ``lr_now``), a non-empty ``init_checks`` string is
        kept, other non-numeric values and Ray Tune bookkeeping keys are ignored. An explicit
        ``training_iteration`` / ``iteration`` sets the report index, else it is derived from the
        trial's stored epochs."""
        self._check_trial_id(trial_id)
        config_cols = config_columns(config)  # first: a bad config is reported before anything else
        if status not in TRIAL_STATUSES:
            raise ResultsError(
                f"report of trial {trial_id}: status {status!r} is not one of {', '.join(TRIAL_STATUSES)}"
            )
        if not isinstance(metrics, Mapping):
            raise ResultsError(
                f"report of trial {trial_id}: metrics must be a dict, got {type(metrics).__name__}"
            )
        epoch = metric_value(metrics.get("epoch"))
        if epoch is None or math.isinf(epoch) or epoch < 0:
            raise ResultsError(
                f"report of trial {trial_id}: metrics['epoch'] must be a number >= 0, got {metrics.get('epoch')!r}"
            )
        iteration = metric_value(metrics.get("training_iteration", metrics.get("iteration")))
        if iteration is None or iteration != int(iteration):
            iteration = self._iteration(trial_id, epoch)
        values: dict[str, float | None] = dict.fromkeys(METRICS)
        extras: dict[str, float | None] = {}
        for key, raw in metrics.items():
            name = "lr_now" if key == "lr" else str(key)
            if name in values:
                values[name] = metric_value(raw)
            elif name not in RESERVED and not name.startswith("ax_"):
                v = metric_value(raw)
                if v is not None or raw is None or isinstance(raw, float):
                    extras[name] = v
        checks = metrics.get("init_checks")
        if checks is not None and not isinstance(checks, str):
            checks = json.dumps(plain(checks), sort_keys=True)
        cols: dict[str, pa.Scalar] = {
            "sweep": pa.scalar(self.sweep, pa.string()),
            "group_id": pa.scalar(group_key(config), pa.string()),
            **config_cols,
            "epoch": pa.scalar(epoch, pa.float64()),
            "iteration": pa.scalar(int(iteration), pa.int32()),
            **{m: pa.scalar(v, pa.float64()) for m, v in values.items()},
            **{m: pa.scalar(v, pa.float64()) for m, v in sorted(extras.items())},
            "init_checks": pa.scalar(checks or None, pa.string()),
            "timestamp": _now_ms(),
            "host": pa.scalar(host or socket.gethostname(), pa.string()),
            "status": pa.scalar(status, pa.string()),
        }
        write_bytes(self.loc, self.metric_path(trial_id, epoch), serialize(_one_row(cols)))

    def write_trial(
        self,
        trial_id: str,
        config: Mapping[str, Any],
        *,
        status: str,
        stop_reason: str | None = None,
        rung_reached: int | None = None,
        last_epoch: float | None = None,
        checkpoint_path: str | None = None,
        init_checks: Any = None,
        error: str | None = None,
        logger_errors: str | None = None,
    ) -> None:
        """Store (replace, atomically) the one row describing a trial's current state. Fields left
        ``None`` keep their stored value (the first report's init checks, the last checkpoint...), so
        a status change never erases what an earlier write recorded."""
        self._check_trial_id(trial_id)
        kept = self._stored_trial(trial_id)
        stop_reason = stop_reason if stop_reason is not None else kept.get("stop_reason")
        rung_reached = rung_reached if rung_reached is not None else kept.get("rung_reached")
        last_epoch = last_epoch if last_epoch is not None else kept.get("last_epoch")
        checkpoint_path = checkpoint_path if checkpoint_path is not None else kept.get("checkpoint_path")
        init_checks = init_checks if init_checks is not None else kept.get("init_checks")
        error = error if error is not None else kept.get("error")
        logger_errors = logger_errors if logger_errors is not None else kept.get("logger_errors")
        config_cols = config_columns(config)
        if status not in TRIAL_STATUSES:
            raise ResultsError(
                f"trial {trial_id}: status {status!r} is not one of {', '.join(TRIAL_STATUSES)}"
            )
        if init_checks is not None and not isinstance(init_checks, str):
            init_checks = json.dumps(plain(init_checks), sort_keys=True)
        cols = {
            "sweep": pa.scalar(self.sweep, pa.string()),
            "trial_id": pa.scalar(trial_id, pa.string()),
            "group_id": pa.scalar(group_key(config), pa.string()),
            **config_cols,
            "config_json": pa.scalar(json.dumps(plain(dict(config)), sort_keys=True, default=str)),
            "status": pa.scalar(status, pa.string()),
            "stop_reason": pa.scalar(stop_reason, pa.string()),
            "rung_reached": typed("rung_reached", rung_reached, pa.int32()),
            "last_epoch": typed("last_epoch", last_epoch, pa.float64()),
            "checkpoint_path": pa.scalar(checkpoint_path, pa.string()),
            "init_checks": pa.scalar(init_checks or None, pa.string()),
            "error": pa.scalar(error, pa.string()),
            "logger_errors": pa.scalar(logger_errors, pa.string()),
            "updated_at": _now_ms(),
        }
        write_bytes(self.loc, self.trial_path(trial_id), serialize(_one_row(cols)))

    def trial(self, trial_id: str) -> dict[str, Any]:
        """The stored row of one trial as a dict ({} when it has none)."""
        return self._stored_trial(trial_id)

    def _stored_trial(self, trial_id: str) -> dict[str, Any]:
        try:
            with self.loc.fs.open_input_file(self.trial_path(trial_id)) as f:
                rows = pq.read_table(f).to_pylist()
        except (FileNotFoundError, OSError, pa.ArrowInvalid):
            return {}
        return rows[0] if rows else {}
