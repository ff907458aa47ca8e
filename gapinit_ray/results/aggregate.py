"""Seed aggregates of a sweep (mean ± std, 95 % CI over seeds per configuration) and their text forms.

The paper reports every number as mean ± std over seeds; :func:`aggregate` recomputes that from the
stored metric rows so any table can be regenerated from the Parquet files alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gapinit_ray.results._fs import ResultsError
from gapinit_ray.results.store import HEAD, STANDARD_CONFIG, axis_column, column_axis

# short names accepted in `by` besides the column names themselves
_ALIASES = {key: column for column, (_, keys) in STANDARD_CONFIG.items() for key in keys}
_NOT_METRICS = {"epoch", "iteration", *STANDARD_CONFIG}
FORMATS = ("table", "csv", "json", "markdown")


def _config_columns(table: pa.Table) -> list[str]:
    names = table.column_names
    std = [c for c in STANDARD_CONFIG if c in names]
    return [*std, *sorted(c for c in names if c.startswith("ax_")), *(c for c in HEAD.names if c in names)]


def _describe_columns(cols: list[str]) -> str:
    return ", ".join(f"{column_axis(c)} ({c})" if c.startswith("ax_") else c for c in cols)


def resolve_by(table: pa.Table, by: Sequence[str]) -> list[str]:
    """Map group-by names (``init``, ``lora.rank``, ``train.lr``, ``lora.alpha``, ``ax_lora__alpha``)
    to the table's columns; an unknown one is an error listing what is available."""
    if isinstance(by, str):
        by = [b for b in (s.strip() for s in by.split(",")) if b]
    available = _config_columns(table)
    out = []
    for name in by:
        col = _ALIASES.get(name, name)
        if col not in available and axis_column(name) in available:
            col = axis_column(name)
        if col not in available:
            raise ResultsError(
                f"group by {name!r}: no such column; available: {_describe_columns(available)}"
            )
        if col not in out:
            out.append(col)
    return out


def metric_columns(table: pa.Table) -> list[str]:
    """Columns that hold reported metrics (float64, not config / epoch)."""
    return [
        f.name
        for f in table.schema
        if pa.types.is_floating(f.type) and f.name not in _NOT_METRICS and not f.name.startswith("ax_")
    ]


def check_metric(table: pa.Table, metric: str) -> None:
    available = metric_columns(table)
    if metric not in available:
        raise ResultsError(f"metric {metric!r}: not a reported metric; available: {', '.join(available)}")


@dataclass
class Selection:
    """The per-trial values behind an aggregate: ``values[group][trial_id] = value`` (None = missing),
    and the group key (a tuple of the ``by`` values) of every trial."""

    by: list[str]
    values: dict[tuple, dict[str, float | None]]


def _parse_at(at: str) -> float | None:
    if at in ("last", "best"):
        return None
    if isinstance(at, str) and at.startswith("epoch="):
        try:
            return float(at.removeprefix("epoch="))
        except ValueError:
            pass
    raise ResultsError(f"at {at!r}: expected 'last', 'best' or 'epoch=N'")


def check_at_epoch(metrics: pa.Table, metric: str, at: str) -> None:
    """``at="epoch=N"`` where no trial reported ``metric`` at epoch N is an error naming the epochs
    that have reports (a table of nothing looks like a sweep without results)."""
    target = _parse_at(at) if at != "curve" else None
    if target is None or metric not in metrics.column_names or "epoch" not in metrics.column_names:
        return
    epoch = pc.cast(metrics["epoch"], pa.float64()).to_numpy(zero_copy_only=False)
    values = pc.cast(metrics[metric], pa.float64()).to_numpy(zero_copy_only=False)
    have = np.unique(epoch[~np.isnan(values) & ~np.isnan(epoch)])
    if len(have) and not np.any(np.abs(have - target) < 1e-9):
        shown = ", ".join(f"{e:g}" for e in have[:30]) + (", ..." if len(have) > 30 else "")
        raise ResultsError(
            f"--at {at}: no trial reported {metric} at epoch {target:g}; epochs with reports: {shown}"
        )


def _selected(
    metrics: pa.Table, by: Sequence[str], metric: str, at: str, mode: str, trials: pa.Table | None
) -> tuple[list[str], pa.Table]:
    """The ``by`` columns and one row per trial: ``trial_id``, the ``by`` columns, ``value`` (null = missing), the trials with
    reports in order of first appearance in ``metrics``, then those of ``trials`` without any.

    Vectorized (numpy / Arrow, no per-row Python): rows are de-duplicated by ``(trial_id, epoch)``
    (the latest ``timestamp`` wins, on a tie the later row; without a ``timestamp`` column the first
    row), a trial's group key comes from its earliest-epoch row, and its value is picked by ``at``
    among its rows whose metric is neither null nor NaN."""
    missing = [c for c in ("trial_id", "epoch") if c not in metrics.column_names]
    if missing:
        raise ResultsError(f"metrics table: no {', '.join(missing)} column; pass ResultsStore.metrics()")
    cols = resolve_by(metrics, by)
    check_metric(metrics, metric)
    if mode not in ("max", "min"):
        raise ResultsError(f"mode {mode!r}: expected 'max' or 'min'")
    target = _parse_at(at)
    tid = metrics["trial_id"]
    if pa.types.is_dictionary(tid.type):
        tid = tid.cast(tid.type.value_type)
    encoded = pc.dictionary_encode(tid.combine_chunks())  # codes in order of first appearance
    names = encoded.dictionary
    codes = pc.fill_null(encoded.indices, len(names)).to_numpy(zero_copy_only=False).astype(np.int64)
    if encoded.null_count:  # a null trial id is one more "trial"
        names = pa.concat_arrays([names, pa.nulls(1, names.type)])
    n_trials = len(names)
    epoch = pc.cast(metrics["epoch"], pa.float64()).to_numpy(zero_copy_only=False)
    values = pc.cast(metrics[metric], pa.float64()).to_numpy(zero_copy_only=False)
    row = np.arange(metrics.num_rows)
    # sorted by (trial, epoch), then (timestamp, row): the kept row of a (trial, epoch) run is its last
    # (latest timestamp, later row) or, without timestamps, its first
    keep_last = "timestamp" in metrics.column_names
    if keep_last:
        ts = pc.fill_null(pc.cast(metrics["timestamp"], pa.int64()), np.iinfo(np.int64).min)
        order = np.lexsort((row, ts.to_numpy(zero_copy_only=False), epoch, codes))
    else:
        order = np.lexsort((row, epoch, codes))
    c, e = codes[order], epoch[order]
    new_run = np.ones(len(order), dtype=bool)
    new_run[1:] = (c[1:] != c[:-1]) | ~(e[1:] == e[:-1])  # NaN epochs are never equal (kept apart)
    last_of_run = np.ones(len(order), dtype=bool)
    last_of_run[:-1] = new_run[1:]
    kept = order[last_of_run if keep_last else new_run]
    kc = codes[kept]
    firsts = np.flatnonzero(np.r_[True, kc[1:] != kc[:-1]]) if len(kept) else kept
    key_row = np.zeros(n_trials, dtype=np.int64)
    key_row[kc[firsts]] = kept[firsts]  # each trial's first kept row: its earliest epoch
    valued = kept[~np.isnan(values[kept])]  # null metrics are NaN here too
    if target is not None:
        valued = valued[np.abs(epoch[valued] - target) < 1e-9]
    vc = codes[valued]
    picked = np.full(n_trials, np.nan)
    has = np.zeros(n_trials, dtype=bool)
    if len(valued):
        starts = np.flatnonzero(np.r_[True, vc[1:] != vc[:-1]])
        if target is not None:  # the first row at that epoch
            picked[vc[starts]] = values[valued[starts]]
        elif at == "last":
            ends = np.r_[starts[1:], len(valued)] - 1
            picked[vc[ends]] = values[valued[ends]]
        else:
            reduce = np.maximum if mode == "max" else np.minimum
            picked[vc[starts]] = reduce.reduceat(values[valued], starts)
        has[vc] = True
    take = pa.array(key_row)
    out = pa.table(
        {
            "trial_id": names,
            **{col: metrics[col].take(take) for col in cols},
            "value": pa.array(picked, pa.float64(), mask=~has),
        }
    )
    if trials is not None and trials.num_rows and "trial_id" in trials.column_names:
        # trials with no report yet (pending, failed before the first report) are group members too
        t = trials.filter(pc.invert(pc.is_in(trials["trial_id"], value_set=names)))
        if t.num_rows:
            ids = pc.dictionary_encode(t["trial_id"].combine_chunks()).indices
            first = np.unique(pc.fill_null(ids, -1).to_numpy(zero_copy_only=False), return_index=True)[1]
            t = t.take(pa.array(np.sort(first)))  # one row per trial id (its first)
            extra = {
                "trial_id": t["trial_id"].cast(names.type),
                **{
                    col: t[col].cast(out.schema.field(col).type)
                    if col in t.column_names
                    else pa.nulls(t.num_rows, out.schema.field(col).type)
                    for col in cols
                },
                "value": pa.nulls(t.num_rows, pa.float64()),
            }
            out = pa.concat_tables([out, pa.table(extra, schema=out.schema)])
    return cols, out


def select(
    metrics: pa.Table, *, by: Sequence[str], metric: str, at: str = "last", mode: str = "max", trials=None
) -> Selection:
    """Pick one value per trial (see :func:`aggregate`) and group the trials by ``by``."""
    cols, per = _selected(metrics, by, metric, at, mode, trials)
    keys = zip(*(per[c].to_pylist() for c in cols), strict=True) if cols else [()] * per.num_rows
    groups: dict[tuple, dict[str, float | None]] = {}
    for tid, key, value in zip(per["trial_id"].to_pylist(), keys, per["value"].to_pylist(), strict=True):
        groups.setdefault(tuple(key), {})[tid] = value
    return Selection(cols, groups)


def _sort_key(key: tuple) -> tuple:
    return tuple((v is None, str(type(v)), v if v is not None else 0) for v in key)


def fmt_pm(mean: float | None, std: float | None, digits: int = 2) -> str | None:
    """The paper's ``140.57 ± 1.44`` (just the mean when there is one seed)."""
    if mean is None:
        return None
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _stopped(rows: list[dict]) -> str:
    """``"3 stopped at rung 1"`` (``"; 1 at rung 2"``...) for the members ASHA stopped early."""
    from gapinit_ray.results.stop_reason import parse

    counts: Counter = Counter()
    for r in rows:
        reason = parse(r.get("stop_reason"))
        if reason is not None and reason.scheduler_stop:
            counts[(reason.rung, reason.seed_group)] += 1
        elif r.get("status") == "STOPPED" and r.get("rung_reached") is not None:
            counts[(int(r["rung_reached"]), False)] += 1
    parts = [
        f"{n} stopped at rung {rung}" + (" (seed-group)" if seed_group else "")
        for (rung, seed_group), n in sorted(counts.items())
    ]
    return "; ".join(parts)


def _status_counts(rows: list[dict]) -> str:
    counts = Counter(r.get("status") or "UNKNOWN" for r in rows)
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda x: (-x[1], x[0])))


def aggregate(
    metrics: pa.Table,
    *,
    by: Sequence[str],
    metric: str,
    at: str = "last",
    mode: str = "max",
    trials: pa.Table | None = None,
    digits: int = 2,
) -> pa.Table:
    """Per group of ``by`` values: statistics over its trials (normally its seeds) of ``metric``.

    One value per trial first: ``at="last"`` its last reported value (the last epoch at which the
    metric is not null), ``"best"`` the max / min (``mode``) over its reports, ``"epoch=N"`` its value
    at epoch N (trials without one are excluded and counted in ``n_missing``). Then per group: ``n``,
    ``n_missing``, ``mean``, ``std`` (ddof=1, null for n=1), ``ci95_low`` / ``ci95_high`` (Student t),
    ``min``, ``max``, ``mean_pm_std`` (``"140.57 ± 1.44"``, values as stored). With ``trials`` (the
    store's trial rows) also ``stopped`` (which members ASHA stopped at which rung) and ``status``
    (counts), and trials that never reported count as missing members."""
    from scipy import stats

    cols, per = _selected(metrics, by, metric, at, mode, trials)
    keys = cols or ["__all"]
    if not cols:
        per = per.append_column("__all", pa.array(np.zeros(per.num_rows, dtype=np.int8)))
    grouped = per.group_by(keys, use_threads=False).aggregate(
        [
            ("value", "count"),
            ("trial_id", "count", pc.CountOptions(mode="all")),
            ("value", "min"),
            ("value", "max"),
            ("value", "list"),
            ("trial_id", "list"),
        ]
    )
    key_rows = list(zip(*(grouped[c].to_pylist() for c in cols), strict=True)) if cols else [()]
    order = sorted(range(grouped.num_rows), key=lambda i: _sort_key(key_rows[i]))
    grouped = grouped.take(pa.array(order, pa.int64()))
    n = grouped["value_count"].to_numpy()
    # mean and std exactly as statistics.fmean / stdev (correctly rounded) over each group's values
    values = [[v for v in vs if v is not None] for vs in grouped["value_list"].to_pylist()]
    mean = [statistics.fmean(v) if v else None for v in values]
    std = [statistics.stdev(v) if len(v) > 1 else None for v in values]
    std_np = np.array([math.nan if s is None else s for s in std])
    half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * std_np / np.sqrt(np.maximum(n, 1))
    mean_np = np.array([math.nan if m is None else m for m in mean])
    no_ci = np.isnan(std_np)
    out: dict[str, pa.Array | pa.ChunkedArray] = {c: grouped[c] for c in cols}
    out["n"] = grouped["value_count"]
    out["n_missing"] = pc.subtract(grouped["trial_id_count"], grouped["value_count"])
    out["mean"] = pa.array(mean, pa.float64())
    out["std"] = pa.array(std, pa.float64())
    out["ci95_low"] = pa.array(mean_np - half, pa.float64(), mask=no_ci)
    out["ci95_high"] = pa.array(mean_np + half, pa.float64(), mask=no_ci)
    out["min"] = grouped["value_min"]
    out["max"] = grouped["value_max"]
    out["mean_pm_std"] = pa.array([fmt_pm(m, s, digits) for m, s in zip(mean, std, strict=True)], pa.string())
    if trials is not None:
        info: dict[str, dict] = {}
        if trials.num_rows:
            keep = [
                c for c in ("trial_id", "status", "stop_reason", "rung_reached") if c in trials.column_names
            ]
            info = {r["trial_id"]: r for r in trials.select(keep).to_pylist()}
        members = [[info.get(t, {"status": None}) for t in ts] for ts in grouped["trial_id_list"].to_pylist()]
        out["stopped"] = pa.array([_stopped(rows) for rows in members], pa.string())
        out["status"] = pa.array([_status_counts(rows) if info else "" for rows in members], pa.string())
    types = {c: metrics.schema.field(c).type for c in cols}
    return pa.table({c: v.cast(types[c]) if c in types else v for c, v in out.items()})


# ------------------------------------------------------------------------------------ formatting


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


def format_table(table: pa.Table, fmt: str = "table") -> str:
    """Render a (small) table: ``table`` (aligned text), ``csv``, ``json`` (a list of records) or
    ``markdown`` (GitHub pipe table)."""
    if fmt not in FORMATS:
        raise ResultsError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    names = table.column_names
    rows = table.to_pylist()
    if fmt == "json":
        records = [{k: _json_value(v) for k, v in r.items()} for r in rows]
        return json.dumps(records, ensure_ascii=False, indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(names)
        w.writerows([[r[c] for c in names] for r in rows])  # floats at full precision (repr)
        return buf.getvalue()
    cells = [[_cell(r[c]) for c in names] for r in rows]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in table.schema]
    if fmt == "markdown":

        def line(vals: list[str]) -> str:
            return "| " + " | ".join(v.replace("|", "\\|").replace("\n", " ") for v in vals) + " |"

        sep = "|" + "|".join("---:" if num else "---" for num in numeric) + "|"
        return "\n".join([line(names), sep, *(line(r) for r in cells)]) + "\n"
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]

    def text(vals: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([text(names), "  ".join("-" * w for w in widths), *(text(r) for r in cells)]) + "\n"


def default_by(metrics) -> list[str]:
    """The table a sweep prints at its end: one row per configuration, i.e. grouped by backbone, init,
    rank and every other axis the sweep varies (a searched lr, a case's ``calibration.passes``...): all
    config columns with more than one value, the seed excepted (the rows are its aggregates)."""
    keep = [c for c in ("backbone", "init", "rank") if c in metrics.column_names]
    for c in metrics.column_names:
        if c.startswith("ax_") and len(pc.unique(metrics.column(c))) > 1:
            keep.append(c)
    return keep
