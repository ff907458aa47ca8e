"""The columns of the results store: metric and trial row schemas, and config values as typed columns.

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

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from gapinit_ray.names import CAPTION_METRICS, val_metric
from gapinit_ray.results._fs import ResultsError
from gapinit_ray.seedgroup.ids import group_id, plain

METRICS = (
    "train_loss",
    val_metric("loss"),
    *(val_metric(m) for m in CAPTION_METRICS),
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
TS = pa.timestamp("ms", tz="UTC")

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
RESERVED = {
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
PARTITIONING = ds.partitioning(pa.schema([("trial_id", pa.string())]), flavor="hive")


def axis_column(axis: str) -> str:
    """Column name of a non-standard search axis: ``lora.alpha`` -> ``ax_lora__alpha``."""
    return "ax_" + axis.replace(".", "__")


def column_axis(column: str) -> str:
    """Inverse of :func:`axis_column`."""
    return column.removeprefix("ax_").replace("__", ".")


def group_key(config: Mapping[str, Any], seed_key: str = "seed") -> str:
    """Stable id of a configuration's seed group: :func:`gapinit_ray.seedgroup.ids.group_id`, the one
    definition every process (trainer, scheduler, slots, reader, trackers) uses."""
    return group_id(config, seed_key)


def typed(field: str, value: Any, type_: pa.DataType) -> pa.Scalar:
    value = plain(value)
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
    value = plain(value)
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
        out[column] = typed(key or column, config[key] if key else None, type_)
    for axis in sorted(map(str, config)):
        if axis not in _CONFIG_KEYS:
            out[axis_column(axis)] = _infer(config[axis])
    return out


def metric_value(value: Any) -> float | None:
    """Numeric metric values as float (NaN -> null: missing); None for anything non-numeric."""
    if isinstance(value, numbers.Real):
        f = float(value)
        return None if math.isnan(f) else f
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        return metric_value(item())
    return None


def column_order(schema: pa.Schema, base: pa.Schema, tail: list[str]) -> list[str]:
    """Canonical column order: sweep/trial/group, the standard config columns, the ax_* columns, the
    rest of ``base``, extra columns (sorted), then ``tail``."""
    names = set(schema.names)
    lead = [n for n in (*HEAD.names, *STANDARD_SCHEMA.names) if n in names]
    axes = sorted(n for n in names if n.startswith("ax_"))
    mid = [n for n in base.names if n in names and n not in lead and n not in tail]
    done = {*lead, *axes, *mid, *tail}
    extras = sorted(n for n in names if n not in done)
    return lead + axes + mid + extras + [n for n in tail if n in names]
