"""Seed aggregates of a sweep (mean ± std, 95 % CI over seeds per configuration) and their text forms.

The paper reports every number as mean ± std over seeds; :func:`aggregate` recomputes that from the
stored metric rows so any table can be regenerated from the Parquet files alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from gapinit_ray.results._fs import ResultsError
from gapinit_ray.results.store import HEAD, STANDARD_CONFIG, axis_column, column_axis

# short names accepted in `by` besides the column names themselves
_ALIASES = {key: column for column, (_, keys) in STANDARD_CONFIG.items() for key in keys}
_NOT_METRICS = {"epoch", "iteration", *STANDARD_CONFIG}
_STOP_RE = re.compile(r"^(seed-group )?asha rung (\d+)")
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


def select(
    metrics: pa.Table, *, by: Sequence[str], metric: str, at: str = "last", mode: str = "max", trials=None
) -> Selection:
    """Pick one value per trial (see :func:`aggregate`) and group the trials by ``by``."""
    missing = [c for c in ("trial_id", "epoch") if c not in metrics.column_names]
    if missing:
        raise ResultsError(f"metrics table: no {', '.join(missing)} column; pass ResultsStore.metrics()")
    cols = resolve_by(metrics, by)
    check_metric(metrics, metric)
    if mode not in ("max", "min"):
        raise ResultsError(f"mode {mode!r}: expected 'max' or 'min'")
    target = _parse_at(at)
    need = ["trial_id", "epoch", metric, *cols]
    has_ts = "timestamp" in metrics.column_names
    rows = metrics.select(need + (["timestamp"] if has_ts else [])).to_pylist()
    # one row per (trial, epoch): the store guarantees it, a concatenated table may not; newest wins
    latest: dict[tuple, dict] = {}
    for r in rows:
        k = (r["trial_id"], r["epoch"])
        if k not in latest or (has_ts and (r["timestamp"] or 0) >= (latest[k]["timestamp"] or 0)):
            latest[k] = r
    per_trial: dict[str, list[dict]] = defaultdict(list)
    for r in latest.values():
        per_trial[r["trial_id"]].append(r)
    groups: dict[tuple, dict[str, float | None]] = defaultdict(dict)
    for tid, reps in per_trial.items():
        reps.sort(key=lambda r: r["epoch"])
        valued = [r for r in reps if r[metric] is not None and not math.isnan(r[metric])]
        if target is not None:
            value = next((r[metric] for r in valued if abs(r["epoch"] - target) < 1e-9), None)
        elif not valued:
            value = None
        elif at == "last":
            value = valued[-1][metric]
        else:
            value = (max if mode == "max" else min)(r[metric] for r in valued)
        groups[tuple(reps[0][c] for c in cols)][tid] = value
    if trials is not None and trials.num_rows:
        # trials with no report yet (pending, failed before the first report) are group members too
        tcols = [c for c in ("trial_id", *cols) if c in trials.column_names]
        for r in trials.select(tcols).to_pylist():
            if r["trial_id"] not in per_trial:
                groups[tuple(r.get(c) for c in cols)].setdefault(r["trial_id"], None)
    return Selection(cols, dict(groups))


def _sort_key(key: tuple) -> tuple:
    return tuple((v is None, str(type(v)), v if v is not None else 0) for v in key)


def fmt_pm(mean: float | None, std: float | None, digits: int = 2) -> str | None:
    """The paper's ``140.57 ± 1.44`` (just the mean when there is one seed)."""
    if mean is None:
        return None
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _stopped(rows: list[dict]) -> str:
    """``"3 stopped at rung 1"`` (``"; 1 at rung 2"``...) for the members ASHA stopped early."""
    counts: Counter = Counter()
    for r in rows:
        m = _STOP_RE.match(r.get("stop_reason") or "")
        if m:
            counts[(int(m.group(2)), bool(m.group(1)))] += 1
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

    sel = select(metrics, by=by, metric=metric, at=at, mode=mode, trials=trials)
    info: dict[str, dict] = {}
    if trials is not None and trials.num_rows:
        keep = [c for c in ("trial_id", "status", "stop_reason", "rung_reached") if c in trials.column_names]
        info = {r["trial_id"]: r for r in trials.select(keep).to_pylist()}
    out: dict[str, list] = {c: [] for c in sel.by}
    stat_cols = ["n", "n_missing", "mean", "std", "ci95_low", "ci95_high", "min", "max", "mean_pm_std"]
    out.update({c: [] for c in stat_cols})
    if trials is not None:
        out.update(stopped=[], status=[])
    for key in sorted(sel.values, key=_sort_key):
        members = sel.values[key]
        vals = [v for v in members.values() if v is not None]
        n = len(vals)
        mean = statistics.fmean(vals) if n else None
        std = statistics.stdev(vals) if n > 1 else None
        if std is not None:
            half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
            lo, hi = mean - half, mean + half
        else:
            lo = hi = None
        for c, v in zip(sel.by, key, strict=True):
            out[c].append(v)
        row = [n, len(members) - n, mean, std, lo, hi, min(vals, default=None), max(vals, default=None)]
        for c, v in zip(stat_cols, [*row, fmt_pm(mean, std, digits)], strict=True):
            out[c].append(v)
        if trials is not None:
            rows = [info.get(tid, {"status": None}) for tid in members]
            out["stopped"].append(_stopped(rows))
            out["status"].append(_status_counts(rows) if info else "")
    types = {c: metrics.schema.field(c).type for c in sel.by}
    types.update(n=pa.int64(), n_missing=pa.int64(), mean_pm_std=pa.string(), stopped=pa.string())
    types["status"] = pa.string()
    arrays = [pa.array(v, types.get(c, pa.float64())) for c, v in out.items()]
    return pa.Table.from_arrays(arrays, names=list(out))


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
