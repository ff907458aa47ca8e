"""The Arrow/Parquet results store of one sweep: metric reports and trial rows, written atomically.

Layout under ``<root>/<sweep>/results/``::

    metrics/trial_id=<tid>/epoch=<epoch:g>.parquet   one file per report (one row)
    metrics/trial_id=<tid>/compacted.parquet         all reports of a finished trial (after compact())
    metrics/_sweep.parquet                           every report of the sweep at the last compact()
    trials/<tid>.parquet                             one row per trial, overwritten as its status changes

One small file per report keeps writes independent and idempotent: a report retried for the same
(trial, epoch) (a restarted worker, a Tune retry) rewrites the same file, so it is never counted twice,
and no writer ever appends to or rewrites a shared file. ``trial_id`` lives only in the hive directory
name: pyarrow, pandas, DuckDB and Polars all add it back as a column, and storing it in the file too
would make hive-aware readers fail on the duplicate (string in the file vs dictionary from the path).

Compaction. Reading costs about a file open and a footer per file, so a finished sweep of many small
files is slow to query. :meth:`ResultsStore.compact` folds the per-epoch files of a finished trial into
one ``compacted.parquet`` in the same directory (written atomically, *then* the per-epoch files it holds
are deleted). A directory may therefore hold both for a while: after a crash between the write and the
deletions, or when a late (retried) report arrives after compaction. :meth:`ResultsStore.metrics`
de-duplicates by ``(trial_id, epoch)`` and keeps the row with the **latest** ``timestamp`` (on a tie,
the per-epoch file's row: it is the same report or a newer one), so no report is counted twice or lost;
``timestamp`` is the writer's clock, so a retry must come from a host whose clock is not behind the
original writer's. A :meth:`ResultsStore.metrics` running while a trial is compacted re-reads that
trial's directory if it saw it half-way (see ``_read``). Readers that list the files themselves (plain
pandas / DuckDB on the directory) see both copies of a report in a directory that holds both.

Sweep-level file. Even one file per trial costs a file open and a footer per trial. ``compact()``
without a trial id (the sweep driver runs it when the sweep ends) also writes every row of the sweep,
de-duplicated and sorted by ``(trial_id, epoch)``, with ``trial_id`` as a plain column, to one
``metrics/_sweep.parquet`` (:meth:`ResultsStore.compact_sweep`): temp + rename, so a reader sees the
previous file or the new one. Its manifest (in the file's own metadata, key :data:`MANIFEST_KEY`) lists
each trial directory's files and their identities when it was made. :meth:`ResultsStore.metrics` reads
it, lists the trial directories, and takes from it the rows of every directory that still holds exactly
those files, unchanged; every other directory (reports written after the compaction, e.g. by a resumed
sweep; a retried report; a trial compacted again; a new trial) is read from its own files, so the newest
rows win and none is counted twice. The trial files are never deleted for it: they stay the complete
store. Plain readers: read the hive directory (``pd.read_parquet("metrics/")``,
``ds.dataset("metrics/", partitioning="hive")``, DuckDB / Polars on ``metrics/trial_id=*/*.parquet``),
which skip ``_sweep.parquet`` by its ``_`` prefix or glob, *or* read ``metrics/_sweep.parquet`` alone:
the sweep as of its last compaction (later reports are only in the trial files). Never both.

Metric rows are *wide* (one column per metric): a sweep reports a fixed metric set, so the schema is
known, every metric gets a real float64 column, and ``pd.read_parquet(dir)`` / DuckDB / Polars queries
need no pivot. The long (trial, epoch, name, value) layout would need a pivot for every comparison.

Metric row columns (in order):

================  =======================  ====================================================
column            type                     meaning
================  =======================  ====================================================
sweep             string                   sweep name
trial_id          string                   from the ``trial_id=`` directory (hive partition)
group_id          string                   :func:`group_key` of the config (config minus seed)
backbone          string                   config ``backbone``
init              string                   config ``init`` / ``lora.init``
rank              int32                    config ``lora.rank`` / ``rank``
seed              int64                    config ``seed``
lr                float64                  config ``train.lr`` / ``lr`` (the configured peak lr)
ax_<axis>         bool/int64/float64/str   every other axis, ``.`` -> ``__``; lists/dicts as JSON
epoch             float64                  the report's epoch (fractional for mid-epoch reports)
iteration         int32                    report index of the trial (1-based)
train_loss ...    float64                  the standard metrics (:data:`METRICS`), null if absent
<extra>           float64                  any other numeric metric the trial reported
init_checks       string                   JSON init report (first report only), else null
timestamp         timestamp[ms, UTC]       when the report was written
host              string                   the reporting host
status            string                   trial status at report time (RUNNING)
================  =======================  ====================================================

Trial row columns: ``sweep, trial_id, group_id, backbone, init, rank, seed, lr, ax_*`` as above, then
``config_json`` string (the whole config), ``status`` string (:data:`TRIAL_STATUSES`), ``stop_reason``
string (null, or :class:`~gapinit_ray.results.stop_reason.StopReason` text: ``"asha rung N (epoch E)"``,
``"seed-group asha rung N (epoch E)"``, ``"error after N attempts (resources.max_failures=M)"``), ``rung_reached`` int32, ``last_epoch`` float64,
``checkpoint_path`` string, ``init_checks`` string (JSON), ``error`` string (a failed trial's exception,
its last line), ``logger_errors`` string (``logging failed: <tracker>: <error>`` when an experiment tracker
could not log the trial, see :mod:`gapinit_ray.trackers`), ``updated_at`` timestamp[ms, UTC].

The trainer reports its current learning rate as ``lr``; that name is the configured lr column here, so
the reported one is stored as ``lr_now``.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import socket
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gapinit_ray.results._fs import ResultsError, encode_name, list_files, resolve, write_bytes

METRICS = (
    "train_loss",
    "val_loss",
    "val_bleu1",
    "val_bleu2",
    "val_bleu3",
    "val_bleu4",
    "val_meteor",
    "val_rouge_l",
    "val_cider",
    "val_spice",
    "lr_now",
    "samples_per_s",
    "tokens_per_s",
    "peak_memory_mb",
    "align_cos_mean",
    "align_cos_min",
    "align_cos_max",
    "lora_A_norm",
    "lora_B_norm",
)
TRIAL_STATUSES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "STOPPED", "ERROR")
# trials that report no more: compact() without a trial id folds these
TERMINAL_STATUSES = ("TERMINATED", "STOPPED", "ERROR")
COMPACTED = "compacted.parquet"  # all rows of one trial, in its metrics/trial_id=<tid>/ directory
# every metric row of the sweep at its last sweep-level compaction, in metrics/ (hive readers skip "_")
SWEEP_FILE = "_sweep.parquet"
# key of the sweep file's Parquet/Arrow metadata holding its manifest (JSON, see compact_sweep)
MANIFEST_KEY = b"gapinit.manifest"
# rounds of metrics(): trial directories a compaction changed during a round are read again (_read)
_READ_ATTEMPTS = 10
TS = pa.timestamp("ms", tz="UTC")
# longest escaped trial id: its file names (plus a temp name's prefix and suffix) stay within 255 bytes
MAX_NAME_BYTES = 200

# standard config columns: column -> (type, config keys that set it, first match wins)
STANDARD_CONFIG = {
    "backbone": (pa.string(), ("backbone",)),
    "init": (pa.string(), ("init", "lora.init")),
    "rank": (pa.int32(), ("lora.rank", "rank")),
    "seed": (pa.int64(), ("seed",)),
    "lr": (pa.float64(), ("train.lr", "lr")),
}
_CONFIG_KEYS = {k for _, keys in STANDARD_CONFIG.values() for k in keys}
HEAD = pa.schema([("sweep", pa.string()), ("trial_id", pa.string()), ("group_id", pa.string())])
STANDARD_SCHEMA = pa.schema([(c, t) for c, (t, _) in STANDARD_CONFIG.items()])
REPORT_SCHEMA = pa.schema(
    [("epoch", pa.float64()), ("iteration", pa.int32()), *((m, pa.float64()) for m in METRICS)]
)
TAIL_SCHEMA = pa.schema(
    [("init_checks", pa.string()), ("timestamp", TS), ("host", pa.string()), ("status", pa.string())]
)
TRIAL_TAIL = pa.schema(
    [
        ("config_json", pa.string()),
        ("status", pa.string()),
        ("stop_reason", pa.string()),
        ("rung_reached", pa.int32()),
        ("last_epoch", pa.float64()),
        ("checkpoint_path", pa.string()),
        ("init_checks", pa.string()),
        ("error", pa.string()),
        ("logger_errors", pa.string()),
        ("updated_at", TS),
    ]
)
METRIC_BASE_SCHEMA = pa.unify_schemas([HEAD, STANDARD_SCHEMA, REPORT_SCHEMA, TAIL_SCHEMA])
TRIAL_BASE_SCHEMA = pa.unify_schemas([HEAD, STANDARD_SCHEMA, TRIAL_TAIL])
REQUIRED_METRIC_COLUMNS = (
    "sweep",
    "trial_id",
    "group_id",
    "epoch",
    "iteration",
    "timestamp",
    "host",
    "status",
)

# names a reported metric may not take (they are columns already, or Ray Tune bookkeeping)
_RESERVED = {
    *METRIC_BASE_SCHEMA.names,
    *TRIAL_BASE_SCHEMA.names,
    "pid",
    "done",
    "node_ip",
    "hostname",
    "date",
    "experiment_id",
    "experiment_tag",
    "config",
    "should_checkpoint",
    "iterations_since_restore",
    "training_iteration",
} - set(METRICS)
_PARTITIONING = ds.partitioning(pa.schema([("trial_id", pa.string())]), flavor="hive")


def axis_column(axis: str) -> str:
    """Column name of a non-standard search axis: ``lora.alpha`` -> ``ax_lora__alpha``."""
    return "ax_" + axis.replace(".", "__")


def column_axis(column: str) -> str:
    """Inverse of :func:`axis_column`."""
    return column.removeprefix("ax_").replace("__", ".")


def _plain(value: Any) -> Any:
    """numpy / other scalars -> Python ones, recursively, so hashes and JSON are the same everywhere."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | str | int | float) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)  # 0-d numpy / torch values
    return _plain(item()) if callable(item) else str(value)


def group_key(config: Mapping[str, Any], seed_key: str = "seed") -> str:
    """Stable id of a configuration's seed group: a hash of the config minus its seed.

    Every process (trainer, scheduler, reader) must get the same id for the same config, so it is a
    SHA-1 of canonical JSON (sorted keys, numpy scalars as Python ones), never Python's ``hash``."""
    from gapinit_ray.seedgroup.ids import group_id

    return group_id(config, seed_key)


def _typed(field: str, value: Any, type_: pa.DataType) -> pa.Scalar:
    value = _plain(value)
    if value is None:
        return pa.scalar(None, type_)
    try:
        if pa.types.is_integer(type_):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            value = int(float(value))
        elif pa.types.is_floating(type_):
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        else:
            value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return pa.scalar(value, type_)
    except (TypeError, ValueError, OverflowError, pa.ArrowException):
        raise ResultsError(f"config {field}: {value!r} is not a valid {type_} value") from None


def _infer(value: Any) -> pa.Scalar:
    value = _plain(value)
    if value is None:
        return pa.scalar(None, pa.null())
    if isinstance(value, bool):
        return pa.scalar(value, pa.bool_())
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            return pa.scalar(str(value), pa.string())
        return pa.scalar(value, pa.int64())
    if isinstance(value, float):
        return pa.scalar(value, pa.float64())
    if isinstance(value, str):
        return pa.scalar(value, pa.string())
    return pa.scalar(json.dumps(value, sort_keys=True, default=str), pa.string())


def config_columns(config: Mapping[str, Any]) -> dict[str, pa.Scalar]:
    """The typed config columns of a trial: ``backbone, init, rank, seed, lr`` (null when the config
    does not set them), then one ``ax_*`` column per other axis in sorted order, typed from its value
    (bool / int64 / float64 / string; lists and dicts as JSON strings)."""
    if not isinstance(config, Mapping):
        raise ResultsError(f"config: expected a dict of axis -> value, got {type(config).__name__}")
    out: dict[str, pa.Scalar] = {}
    for column, (type_, keys) in STANDARD_CONFIG.items():
        key = next((k for k in keys if k in config), None)
        out[column] = _typed(key or column, config[key] if key else None, type_)
    for axis in sorted(map(str, config)):
        if axis not in _CONFIG_KEYS:
            out[axis_column(axis)] = _infer(config[axis])
    return out


def _now_ms() -> pa.Scalar:
    return pa.scalar(int(time.time() * 1000), TS)


def _metric_value(value: Any) -> float | None:
    """Numeric metric values as float (NaN -> null: missing); None for anything non-numeric."""
    if isinstance(value, numbers.Real):
        f = float(value)
        return None if math.isnan(f) else f
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        return _metric_value(item())
    return None


def _one_row(columns: dict[str, pa.Scalar]) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array([s.as_py()], s.type) for s in columns.values()],
        schema=pa.schema([(c, s.type) for c, s in columns.items()]),
    )


def _serialize(table: pa.Table, **options: Any) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **{"compression": "zstd", **options})
    return sink.getvalue().to_pybytes()


# A compacted file is read on every query of the sweep: snappy and plain encoding decode about twice as
# fast as zstd + dictionaries for these small (~100 rows x ~30 columns) files, at about the same size.
_COMPACTED_OPTIONS = {"compression": "snappy", "use_dictionary": False}


def _latest_rows(table: pa.Table, keys: list[str], preferred: np.ndarray) -> pa.Table:
    """One row per distinct ``keys``: the one with the latest ``timestamp``; on a tie a ``preferred``
    row, then the later row of ``table``. Kept rows stay in their order in ``table``."""
    n = table.num_rows
    if n < 2:
        return table
    aux = pa.table(
        {
            **{f"k{i}": table[k] for i, k in enumerate(keys)},
            "ts": table["timestamp"],
            "pref": pa.array(preferred, pa.bool_()),
            "row": pa.array(np.arange(n, dtype=np.int64)),
        }
    )
    order = pc.sort_indices(
        aux,
        sort_keys=[
            *((f"k{i}", "ascending") for i in range(len(keys))),
            ("ts", "descending"),  # a null timestamp sorts last: it never wins
            ("pref", "descending"),
            ("row", "descending"),
        ],
    )
    first = np.ones(n, dtype=bool)
    same = np.ones(n - 1, dtype=bool)
    for i in range(len(keys)):
        col = aux[f"k{i}"].take(order)
        # a null key is never equal to anything: such rows are all kept (none is lost)
        equal = pc.fill_null(pc.equal(col.slice(1), col.slice(0, n - 1)), False)
        same &= equal.to_numpy(zero_copy_only=False)
    first[1:] = ~same
    keep = np.sort(order.to_numpy()[first])
    return table if len(keep) == n else table.take(pa.array(keep))


def _unify(schema: pa.Schema | None, other: pa.Schema) -> pa.Schema:
    return other if schema is None else pa.unify_schemas([schema, other], promote_options="permissive")


def _is_compacted(path: str) -> bool:
    return path.rpartition("/")[2] == COMPACTED


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _without_dirs(table: pa.Table | None, dirs: set[str]) -> pa.Table | None:
    """``table`` without the rows of the ``trial_id=<tid>`` directories ``dirs``."""
    if table is None or not dirs:
        return table
    tids = [_dir_trial_id(d) for d in dirs]
    return table.filter(pc.invert(pc.is_in(table["trial_id"], value_set=pa.array(tids, pa.string()))))


@dataclass
class _Snapshot:
    """The sweep file's rows and manifest: ``{"trial_id=<tid>": {file name: identity}}``, the files of
    each trial directory (and what told them apart, :meth:`ResultsStore._identities`) when it was made."""

    table: pa.Table
    manifest: dict[str, dict[str, tuple]]

    def covered(self, paths: list[str], identities: list[tuple | None]) -> set[str]:
        """The trial directories of ``paths`` whose listed files are exactly those of the manifest, each
        unchanged: the snapshot's rows of these trials are theirs. Any other directory (a report
        added, retried or deleted since, a trial compacted again) is read from its files."""
        listed: dict[str, dict[str, tuple | None]] = {}
        for path, identity in zip(paths, identities, strict=True):
            head, _, name = path.rpartition("/")
            listed.setdefault(head, {})[name] = identity
        return {d for d, files in listed.items() if self.manifest.get(d.rpartition("/")[2]) == files}

    def rows(self, dirs: set[str]) -> pa.Table:
        """The snapshot's rows of the trial directories ``dirs`` (all of them: no filtering)."""
        names = {d.rpartition("/")[2] for d in dirs}
        if names == self.manifest.keys():
            return self.table
        tids = pa.array([_dir_trial_id(n) for n in names], pa.string())
        return self.table.filter(pc.is_in(self.table["trial_id"], value_set=tids))


def _dir_trial_id(name: str) -> str:
    """``trial_id=<escaped id>`` -> the id (the hive partition value, URI-decoded)."""
    return unquote(name.rpartition("/")[2].removeprefix("trial_id="))


def _mixed(paths: list[str]) -> bool:
    """Whether a trial directory holds a compacted file *and* per-epoch files (rows may repeat)."""
    compacted = {p.rpartition("/")[0] for p in paths if _is_compacted(p)}
    return any(not _is_compacted(p) and p.rpartition("/")[0] in compacted for p in paths)


def _order(schema: pa.Schema, base: pa.Schema, tail: list[str]) -> list[str]:
    """Canonical column order: sweep/trial/group, the standard config columns, the ax_* columns, the
    rest of ``base``, extra columns (sorted), then ``tail``."""
    names = set(schema.names)
    lead = [n for n in (*HEAD.names, *STANDARD_SCHEMA.names) if n in names]
    axes = sorted(n for n in names if n.startswith("ax_"))
    mid = [n for n in base.names if n in names and n not in lead and n not in tail]
    done = {*lead, *axes, *mid, *tail}
    extras = sorted(n for n in names if n not in done)
    return lead + axes + mid + extras + [n for n in tail if n in names]


class ResultsStore:
    """Reader and writer of one sweep's results under ``<root>/<sweep>/results/``.

    Any number of processes may write at once (each report / trial is its own file, written
    atomically) while others read; see the module docstring for the layout and schemas."""

    def __init__(self, root: str, sweep: str):
        if not isinstance(sweep, str) or not sweep or sweep in (".", "..") or "/" in sweep or "\\" in sweep:
            raise ResultsError(f"sweep {sweep!r}: expected a sweep name without path separators")
        self.sweep = sweep
        self.loc = resolve(root)
        self.root = root
        self.base = self.loc.join(sweep, "results")
        self.metrics_dir = f"{self.base}/metrics"
        self.trials_dir = f"{self.base}/trials"

    def __repr__(self) -> str:
        return f"ResultsStore({self.root!r}, {self.sweep!r})"

    # ------------------------------------------------------------------------------------ paths
    def trial_metrics_dir(self, trial_id: str) -> str:
        """``metrics/trial_id=<tid>``: the directory of a trial's metric files."""
        return f"{self.metrics_dir}/trial_id={encode_name(trial_id)}"

    def metric_path(self, trial_id: str, epoch: float) -> str:
        """``metrics/trial_id=<tid>/epoch=<epoch:g>.parquet``; where ``:g`` would round (more than 6
        significant digits) the exact repr is used, so two distinct epochs never share a file."""
        name = f"{epoch:g}"
        if float(name) != epoch:
            name = repr(float(epoch))
        return f"{self.trial_metrics_dir(trial_id)}/epoch={name}.parquet"

    @property
    def sweep_path(self) -> str:
        """``metrics/_sweep.parquet``: every metric row at the last :meth:`compact_sweep`."""
        return f"{self.metrics_dir}/{SWEEP_FILE}"

    def compacted_path(self, trial_id: str) -> str:
        """``metrics/trial_id=<tid>/compacted.parquet``: the trial's rows after :meth:`compact`."""
        return f"{self.trial_metrics_dir(trial_id)}/{COMPACTED}"

    def trial_path(self, trial_id: str) -> str:
        return f"{self.trials_dir}/{encode_name(trial_id)}.parquet"

    # ----------------------------------------------------------------------------------- writes
    @staticmethod
    def _check_trial_id(trial_id: Any) -> str:
        if not isinstance(trial_id, str) or not trial_id.strip():
            raise ResultsError(f"trial_id {trial_id!r}: expected a non-empty string")
        size = len(encode_name(trial_id).encode())
        if size > MAX_NAME_BYTES:  # it names a file and a directory (filesystems allow 255 bytes)
            raise ResultsError(
                f"trial_id {trial_id[:40]!r}...: too long for a file name ({size} bytes escaped, at most "
                f"{MAX_NAME_BYTES}); use a shorter id"
            )
        return trial_id

    def _iteration(self, trial_id: str, epoch: float) -> int:
        """1-based report index: 1 + the trial's reports at earlier epochs (per-epoch files and rows of
        its compacted file), so a retried report keeps the index of the one it replaces whatever order
        reports arrive in, before or after compaction."""
        earlier: set[float] = set()
        for path in list_files(self.loc, self.trial_metrics_dir(trial_id), ".parquet", 1):
            name = path.rpartition("/")[2]
            if name == COMPACTED:
                earlier.update(e for e in self._compacted_epochs(path) if e < epoch)
                continue
            try:
                e = float(name.removeprefix("epoch=").removesuffix(".parquet"))
            except ValueError:
                continue
            if e < epoch:
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
        epoch = _metric_value(metrics.get("epoch"))
        if epoch is None or math.isinf(epoch) or epoch < 0:
            raise ResultsError(
                f"report of trial {trial_id}: metrics['epoch'] must be a number >= 0, got {metrics.get('epoch')!r}"
            )
        iteration = _metric_value(metrics.get("training_iteration", metrics.get("iteration")))
        if iteration is None or iteration != int(iteration):
            iteration = self._iteration(trial_id, epoch)
        values: dict[str, float | None] = dict.fromkeys(METRICS)
        extras: dict[str, float | None] = {}
        for key, raw in metrics.items():
            name = "lr_now" if key == "lr" else str(key)
            if name in values:
                values[name] = _metric_value(raw)
            elif name not in _RESERVED and not name.startswith("ax_"):
                v = _metric_value(raw)
                if v is not None or raw is None or isinstance(raw, float):
                    extras[name] = v
        checks = metrics.get("init_checks")
        if checks is not None and not isinstance(checks, str):
            checks = json.dumps(_plain(checks), sort_keys=True)
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
        write_bytes(self.loc, self.metric_path(trial_id, epoch), _serialize(_one_row(cols)))

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
            init_checks = json.dumps(_plain(init_checks), sort_keys=True)
        cols = {
            "sweep": pa.scalar(self.sweep, pa.string()),
            "trial_id": pa.scalar(trial_id, pa.string()),
            "group_id": pa.scalar(group_key(config), pa.string()),
            **config_cols,
            "config_json": pa.scalar(json.dumps(_plain(dict(config)), sort_keys=True, default=str)),
            "status": pa.scalar(status, pa.string()),
            "stop_reason": pa.scalar(stop_reason, pa.string()),
            "rung_reached": _typed("rung_reached", rung_reached, pa.int32()),
            "last_epoch": _typed("last_epoch", last_epoch, pa.float64()),
            "checkpoint_path": pa.scalar(checkpoint_path, pa.string()),
            "init_checks": pa.scalar(init_checks or None, pa.string()),
            "error": pa.scalar(error, pa.string()),
            "logger_errors": pa.scalar(logger_errors, pa.string()),
            "updated_at": _now_ms(),
        }
        write_bytes(self.loc, self.trial_path(trial_id), _serialize(_one_row(cols)))

    def trial(self, trial_id: str) -> dict[str, Any]:
        """The stored row of one trial as a dict ({} when it has none)."""
        return self._stored_trial(trial_id)

    def _stored_trial(self, trial_id: str) -> dict[str, Any]:
        import pyarrow.parquet as pq

        try:
            with self.loc.fs.open_input_file(self.trial_path(trial_id)) as f:
                rows = pq.read_table(f).to_pylist()
        except (FileNotFoundError, OSError, pa.ArrowInvalid):
            return {}
        return rows[0] if rows else {}

    # ------------------------------------------------------------------------------------ reads
    def _factory(self, paths: list[str], base: str, partitioning: Any) -> ds.FileSystemDatasetFactory:
        options = ds.FileSystemFactoryOptions(partition_base_dir=base, partitioning=partitioning)
        return ds.FileSystemDatasetFactory(self.loc.fs, paths, ds.ParquetFileFormat(), options)

    def _schema(self, paths: list[str], base: str, partitioning: Any) -> pa.Schema:
        try:
            # every file's footer: extra metrics or axes may appear in some files only, and an axis
            # may be int in one trial and float in another (permissive promotion makes it float)
            factory = self._factory(paths, base, partitioning)
            return factory.inspect(promote_options="permissive", fragments=None)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ResultsError(f"{base}: stored files disagree on a column type ({e})") from None

    def _tables(self, paths: list[str], base: str, partitioning: Any, schema: pa.Schema) -> list[pa.Table]:
        """The rows of the compacted files, then those of the per-epoch files (each part read with
        ``schema``; a part without files is left out)."""
        parts = []
        for compacted in (True, False):
            subset = [p for p in paths if _is_compacted(p) == compacted]
            if subset:
                parts.append(self._factory(subset, base, partitioning).finish(schema).to_table())
        return parts

    def _load(
        self,
        paths: list[str],
        base: str,
        partitioning: Any,
        schema: pa.Schema,
        expr: ds.Expression | None,
        keys: list[str] | None,
    ) -> pa.Table:
        """The rows of ``paths`` that match ``expr``. With ``keys``, where a trial directory holds both
        a compacted file and per-epoch files, one row per ``keys``: the latest (module docstring)."""
        if not keys or not _mixed(paths):
            return self._factory(paths, base, partitioning).finish(schema).to_table(filter=expr)
        compacted, reports = self._tables(paths, base, partitioning, schema)
        preferred = np.repeat([False, True], [compacted.num_rows, reports.num_rows])
        table = _latest_rows(pa.concat_tables([compacted, reports]), keys, preferred)
        return table if expr is None else table.filter(expr)  # after de-duplication: newest first

    @staticmethod
    def _filter(where: Any, schema: pa.Schema, what: str) -> ds.Expression | None:
        """``filter`` may be a pyarrow expression or ``{column: value or [values]}``."""
        if where is None or isinstance(where, ds.Expression):
            return where
        if not isinstance(where, Mapping):
            raise ResultsError(f"{what} filter: expected a pyarrow expression or a dict, got {where!r}")
        expr = None
        for col, value in where.items():
            if col not in schema.names:
                raise ResultsError(
                    f"{what} filter: unknown column {col!r}; available: {', '.join(schema.names)}"
                )
            f = ds.field(col)
            e = f.isin(list(value)) if isinstance(value, list | tuple | set) else f == value
            expr = e if expr is None else expr & e
        return expr

    def _read_round(
        self,
        paths: list[str],
        base: str,
        partitioning: Any,
        schema: pa.Schema | None,
        where: Any,
        what: str,
        keys: list[str] | None,
    ) -> tuple[pa.Schema | None, pa.Table | None, set[str]]:
        """Read ``paths`` (``schema`` widened by theirs). With ``keys`` (metrics), a listed per-epoch
        file deleted before it is read (a compaction next to us) makes it read file by file instead,
        leaving out the trial directories whose files are gone: those are returned, to be read
        again on their own."""
        try:
            found = self._schema(paths, base, partitioning)
            if schema is not None:
                found = pa.unify_schemas([schema, found], promote_options="permissive")
            expr = self._filter(where, found, what)
            return found, self._load(paths, base, partitioning, found, expr, keys), set()
        except OSError:
            if not keys:
                raise
        tables, gone = self._read_files(paths)
        if not tables:
            return schema, None, gone
        table = pa.concat_tables([t for _, t in tables], promote_options="permissive")
        if schema is not None:
            table = pa.concat_tables([schema.empty_table(), table], promote_options="permissive")
        if _mixed([p for p, _ in tables]):
            preferred = np.concatenate([np.full(t.num_rows, not _is_compacted(p)) for p, t in tables])
            table = _latest_rows(table, keys, preferred)
        expr = self._filter(where, table.schema, what)
        return table.schema, table if expr is None else table.filter(expr), gone

    def _read_files(self, paths: list[str]) -> tuple[list[tuple[str, pa.Table]], set[str]]:
        """Each metric file on its own, ``trial_id`` added from its directory; a per-epoch file that
        is gone is skipped and its directory returned (a compacted file is never deleted)."""

        def one(path: str) -> pa.Table | None:
            try:
                with self.loc.fs.open_input_file(path) as f:
                    table = pq.read_table(f)
            except FileNotFoundError:
                if _is_compacted(path):
                    raise
                return None
            tid = _dir_trial_id(_parent(path))
            return table.append_column(
                pa.field("trial_id", pa.string()), pa.array([tid] * table.num_rows, pa.string())
            )

        with ThreadPoolExecutor(8) as pool:
            read = list(zip(paths, pool.map(one, paths), strict=True))
        return [(p, t) for p, t in read if t is not None], {_parent(p) for p, t in read if t is None}

    def _read(
        self,
        base: str,
        depth: int,
        partitioning: Any,
        empty: pa.Schema,
        tail: list[str],
        columns,
        where,
        what,
        keys: list[str] | None = None,
    ) -> pa.Table:
        """Read every data file under ``base``. With ``keys`` (the metrics) rows are de-duplicated (see
        :meth:`_load`) and the read is consistent with a compaction running next to it. A compaction
        writes its file before it deletes, so only a trial directory that gained a compacted file
        between the listing and the end of the read, or whose listed files were deleted before they
        were read, may have been seen half-way: its rows are dropped and it is read again, alone."""
        listing = list_files(self.loc, base, ".parquet", depth)
        snapshot = self._snapshot() if keys else None
        schema, parts = None, []
        todo: set[str] | None = None  # trial directories still to read; None: all listed
        for _ in range(_READ_ATTEMPTS):
            paths = listing if todo is None else [p for p in listing if _parent(p) in todo]
            if not paths:
                todo = set()
                break
            files, covered = paths, None
            if snapshot is not None:
                dirs = snapshot.covered(paths, self._identities(paths))
                if dirs:  # their rows come from the sweep file; only the other files are read
                    files = [p for p in paths if _parent(p) not in dirs]
                    covered = snapshot.rows(dirs)
                    schema = _unify(schema, covered.schema)
            table, gone = None, set()
            if files:
                schema, table, gone = self._read_round(files, base, partitioning, schema, where, what, keys)
            if covered is not None:
                covered = pa.concat_tables([schema.empty_table(), covered], promote_options="permissive")
                expr = self._filter(where, schema, what)
                covered = covered if expr is None else covered.filter(expr)
                table = covered if table is None else pa.concat_tables([table, covered])
            if not keys or not files:
                # a directory taken from the sweep file had, when listed, exactly the files the
                # sweep file was made from (see _Snapshot.covered): no half-compacted view to re-check
                parts.append(table)
                todo = set()
                break
            listing = list_files(self.loc, base, ".parquet", depth)
            had = {_parent(p) for p in paths if _is_compacted(p)}
            gained = {_parent(p) for p in listing if _is_compacted(p)} - had
            todo = gone | (gained & {_parent(p) for p in paths})
            parts.append(_without_dirs(table, todo))
            if not todo:
                break
        if todo:
            raise ResultsError(f"{base}: files kept being compacted while being read; read again")
        schema = empty if schema is None else schema
        self._filter(where, schema, what)  # also checks a filter on an empty store
        parts = [t for t in parts if t is not None]
        table = pa.concat_tables(parts, promote_options="permissive") if parts else empty.empty_table()
        order = _order(table.schema, empty, tail)
        if columns is not None:
            columns = [columns] if isinstance(columns, str) else list(columns)
            unknown = [c for c in columns if c not in table.schema.names]
            if unknown:
                raise ResultsError(
                    f"{what} columns: unknown {', '.join(map(repr, unknown))}; available: {', '.join(order)}"
                )
        table = table.select(order)
        return table.select(columns) if columns is not None else table

    def metrics(self, columns: list[str] | None = None, filter: Any = None) -> pa.Table:
        """All metric rows of the sweep (one per stored report), columns in the documented order.

        ``trial_id`` comes back as a plain string column (the hive partition is read with an explicit
        string schema, not pyarrow's inferred dictionary). ``filter`` is a pyarrow expression
        (``ds.field("init") == "gap"``) or a ``{column: value or [values]}`` dict.

        One row per ``(trial_id, epoch)``: where a trial directory holds a compacted file and
        per-epoch files (a crash during :meth:`compact`, a report that arrived after it), the row with
        the latest ``timestamp`` is kept (on a tie the per-epoch file's), before ``filter`` applies."""
        tail = [*TAIL_SCHEMA.names]
        return self._read(
            self.metrics_dir,
            2,
            _PARTITIONING,
            METRIC_BASE_SCHEMA,
            tail,
            columns,
            filter,
            "metrics",
            keys=["trial_id", "epoch"],
        )

    def _snapshot(self) -> _Snapshot | None:
        """The sweep file (None when there is none, or it cannot be read: the trial files are the
        truth, the sweep file only a faster copy of them)."""
        try:
            with self.loc.fs.open_input_file(self.sweep_path) as f:
                table = pq.read_table(f)
            raw = json.loads((table.schema.metadata or {})[MANIFEST_KEY])
            manifest = {d: {n: tuple(i) for n, i in files.items()} for d, files in raw["files"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return _Snapshot(table.replace_schema_metadata(None), manifest)

    def trials(self) -> pa.Table:
        """One row per trial that has a trial row (see the module docstring for the columns)."""
        return self._read(
            self.trials_dir, 1, None, TRIAL_BASE_SCHEMA, [*TRIAL_TAIL.names], None, None, "trials"
        )

    # ------------------------------------------------------------------------------- compaction
    def compact(self, trial_id: str | None = None) -> list[str]:
        """Fold the per-epoch metric files of a trial into one ``compacted.parquet``; returns the ids
        of the trials compacted (those that had per-epoch files).

        ``trial_id`` names one trial, whatever its status (a report arriving later lands in a new
        per-epoch file, and a later ``compact`` folds it in too). Without it, every trial whose trial
        row has a terminal status (:data:`TERMINAL_STATUSES`: TERMINATED, STOPPED, ERROR) is
        compacted; trials without a trial row are left alone.

        Without ``trial_id`` it then writes the sweep-level file (:meth:`compact_sweep`), which is
        what makes a finished sweep fast to query.

        Per trial: its per-epoch files and its compacted file (if any) are read, de-duplicated by
        epoch as :meth:`metrics` does (latest ``timestamp`` wins), written to ``compacted.parquet``
        atomically (the same temp + rename as every write), and only then are the per-epoch files
        deleted; one replaced since it was read (a retried report) is kept, its row being the newer
        (told by inode + mtime + size locally, mtime + size elsewhere; a retry landing in the instant
        between that check and the delete is lost). A reader never counts a report twice nor misses
        one, whenever it reads (see the module docstring). Two compactions of a *finished* trial may
        run at once (two writers of one sweep each compacting at their end): a listed file the other
        one deleted is in that one's compacted file, and the listing is read again. While the trial
        still reports, run one compaction of it at a time (the driver, when the trial ends): two at
        once could each drop a report the other folded in."""
        if trial_id is not None:
            ids = [self._check_trial_id(trial_id)]
        else:
            rows = self.trials().select(["trial_id", "status"]).to_pylist()
            ids = [r["trial_id"] for r in rows if r["status"] in TERMINAL_STATUSES]
        done = [tid for tid in ids if self._compact_trial(tid)]
        if trial_id is None:
            self.compact_sweep()
        return done

    def compact_sweep(self) -> bool:
        """Write every metric row of the sweep (:meth:`metrics`, sorted by trial and epoch) to one
        ``metrics/_sweep.parquet``, with a manifest of the trial files it holds; returns whether it
        was written (False: it is already current, or there are no reports).

        The manifest (JSON in the file's metadata under :data:`MANIFEST_KEY`, so file and manifest are
        replaced together, atomically, by the usual temp + rename) maps each ``trial_id=<tid>``
        directory to its files and their identities (inode, mtime, size locally; mtime, size
        elsewhere), taken *before* the rows were read. :meth:`metrics` takes a trial's rows from the
        sweep file only while that directory holds exactly those files, unchanged; a directory that
        changed since (a report added or retried, e.g. by a resumed sweep, a trial compacted again) is
        read from its own files instead, so its newer rows win and nothing is counted twice. The trial
        files are kept: they stay the complete store for readers that do not use this class."""
        listing = list_files(self.loc, self.metrics_dir, ".parquet", 2)
        manifest: dict[str, dict[str, tuple]] = {}
        for path, identity in zip(listing, self._identities(listing), strict=True):
            if identity is not None:
                head, _, name = path.rpartition("/")
                manifest.setdefault(head.rpartition("/")[2], {})[name] = identity
        if not manifest:
            return False
        current = self._snapshot()
        if current is not None and current.manifest == manifest:
            return False
        table = self.metrics().sort_by([("trial_id", "ascending"), ("epoch", "ascending")])
        body = json.dumps({"version": 1, "files": manifest}, sort_keys=True, separators=(",", ":"))
        table = table.replace_schema_metadata({MANIFEST_KEY: body.encode()})
        write_bytes(self.loc, self.sweep_path, _serialize(table, **_COMPACTED_OPTIONS))
        return True

    def _compact_trial(self, trial_id: str) -> bool:
        trial_dir = self.trial_metrics_dir(trial_id)
        for _ in range(_READ_ATTEMPTS):
            paths = list_files(self.loc, trial_dir, ".parquet", 1)
            reports = [p for p in paths if not _is_compacted(p)]
            if not reports:
                return False
            seen = self._identities(reports)  # taken before reading: a file replaced after it is kept
            try:
                schema = self._schema(paths, trial_dir, None)
                parts = self._tables(paths, trial_dir, None, schema)
            except FileNotFoundError:
                # another compaction of this trial (a second writer of the sweep) folded in and
                # deleted a listed file after our listing: its rows are in its compacted file now
                continue
            self._write_compacted(trial_id, reports, seen, parts)
            return True
        raise ResultsError(f"{trial_dir}: files kept being compacted while being read; compact again")

    def _write_compacted(
        self, trial_id: str, reports: list[str], seen: list[tuple | None], parts: list[pa.Table]
    ) -> None:
        preferred = np.repeat([False, True], [sum(t.num_rows for t in parts[:-1]), parts[-1].num_rows])
        table = _latest_rows(pa.concat_tables(parts), ["epoch"], preferred)
        table = table.sort_by([("epoch", "ascending")])
        table = table.select(_order(table.schema, METRIC_BASE_SCHEMA, [*TAIL_SCHEMA.names]))
        write_bytes(self.loc, self.compacted_path(trial_id), _serialize(table, **_COMPACTED_OPTIONS))
        for path, before, now in zip(reports, seen, self._identities(reports), strict=True):
            if before is not None and before == now:
                self._delete(path)

    def _identities(self, paths: list[str]) -> list[tuple | None]:
        """What tells a file from its replacement (None: missing). Local: inode, mtime (ns), size (an
        atomic replace is a new inode); other filesystems: mtime and size."""
        if self.loc.local:
            out: list[tuple | None] = []
            for path in paths:
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    out.append(None)
                    continue
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            return out
        infos = self.loc.fs.get_file_info(paths)
        return [(i.mtime_ns, i.size) if i.type == pafs.FileType.File else None for i in infos]

    def _delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.loc.local:
                os.unlink(path)
            else:
                self.loc.fs.delete_file(path)
