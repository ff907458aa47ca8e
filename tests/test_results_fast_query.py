"""Fast queries: the vectorized aggregate against the row-by-row one it replaced, on the fixtures of
tests/test_results.py and tests/test_results_compaction.py and on hand-made tables (duplicates, NaN,
no timestamps, trials without reports)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

import pyarrow as pa
import pytest
from scipy import stats

from gapinit_ray.results import aggregate
from gapinit_ray.results.aggregate import (
    _parse_at,
    _sort_key,
    _status_counts,
    _stopped,
    fmt_pm,
    resolve_by,
    select,
)
from tests.test_results import sweep  # noqa: F401  (fixture)
from tests.test_results_compaction import store  # noqa: F401  (fixture)


def _reference_select(metrics, by, metric, at, mode, trials):
    """The per-row Python selection aggregate() used before it was vectorized (the oracle)."""
    cols = resolve_by(metrics, by)
    target = _parse_at(at)
    has_ts = "timestamp" in metrics.column_names
    need = ["trial_id", "epoch", metric, *cols] + (["timestamp"] if has_ts else [])
    latest: dict[tuple, dict] = {}
    for r in metrics.select(need).to_pylist():
        k = (r["trial_id"], r["epoch"])
        if k not in latest or (has_ts and (r["timestamp"] or 0) >= (latest[k]["timestamp"] or 0)):
            latest[k] = r
    per_trial: dict[str, list[dict]] = defaultdict(list)
    for r in latest.values():
        per_trial[r["trial_id"]].append(r)
    groups: dict[tuple, dict] = defaultdict(dict)
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
        tcols = [c for c in ("trial_id", *cols) if c in trials.column_names]
        for r in trials.select(tcols).to_pylist():
            if r["trial_id"] not in per_trial:
                groups[tuple(r.get(c) for c in cols)].setdefault(r["trial_id"], None)
    return cols, dict(groups)


def _reference_aggregate(metrics, by, metric, at="last", mode="max", trials=None) -> list[dict]:
    cols, groups = _reference_select(metrics, by, metric, at, mode, trials)
    info = {}
    if trials is not None and trials.num_rows:
        keep = [c for c in ("trial_id", "status", "stop_reason", "rung_reached") if c in trials.column_names]
        info = {r["trial_id"]: r for r in trials.select(keep).to_pylist()}
    out = []
    for key in sorted(groups, key=_sort_key):
        members = groups[key]
        vals = [v for v in members.values() if v is not None]
        n = len(vals)
        mean = statistics.fmean(vals) if n else None
        std = statistics.stdev(vals) if n > 1 else None
        lo = hi = None
        if std is not None:
            half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
            lo, hi = mean - half, mean + half
        row = dict(zip(cols, key, strict=True))
        row.update(n=n, n_missing=len(members) - n, mean=mean, std=std, ci95_low=lo, ci95_high=hi)
        row.update(min=min(vals, default=None), max=max(vals, default=None), mean_pm_std=fmt_pm(mean, std))
        if trials is not None:
            rows = [info.get(t, {"status": None}) for t in members]
            row.update(stopped=_stopped(rows), status=_status_counts(rows) if info else "")
        out.append(row)
    return out


def _check(metrics, trials=None, **kw) -> int:
    """aggregate() and select() equal the reference exactly (same rows, columns, floats bit for bit)."""
    got = aggregate(metrics, trials=trials, **kw)
    want = _reference_aggregate(metrics, trials=trials, **kw)
    assert got.to_pylist() == want, kw
    assert got.schema.field("n").type == pa.int64() and got.schema.field("mean").type == pa.float64()
    kw = {"at": "last", "mode": "max", **kw}
    cols, groups = _reference_select(metrics, trials=trials, **kw)
    sel = select(metrics, trials=trials, **kw)
    assert sel.by == cols
    assert [(k, list(v.items())) for k, v in sel.values.items()] == [
        (k, list(v.items())) for k, v in groups.items()
    ]  # same groups, members and order
    return got.num_rows


CASES = [
    {"by": ["init"], "metric": "val_cider", "at": "last"},
    {"by": ["init"], "metric": "val_cider", "at": "best"},
    {"by": ["init"], "metric": "val_cider", "at": "epoch=2"},
    {"by": ["init"], "metric": "val_loss", "at": "best", "mode": "min"},
    {"by": ["init", "lora.rank", "lora.alpha"], "metric": "val_cider", "at": "last"},
    {"by": ["seed", "init"], "metric": "val_cider", "at": "epoch=3"},
    {"by": [], "metric": "val_cider", "at": "last"},
]


@pytest.mark.parametrize("case", CASES)
def test_aggregate_identical_to_row_by_row_on_results_fixture(sweep, case):  # noqa: F811
    metrics, trials = sweep.metrics(), sweep.trials()
    assert _check(metrics, **case) >= 1
    assert _check(metrics, trials=trials, **case) >= 1
    # rows in another order, and two copies with a newer one for some rows: still the same answer
    shuffled = metrics.take(pa.array(list(range(metrics.num_rows))[::-1]))
    assert _check(shuffled, trials=trials, **case) >= 1
    # trials without any report are members (missing) of their group
    assert _check(metrics.slice(0, 4), trials=trials, **case) >= 1
    assert _check(metrics.slice(0, 0), trials=trials, **case) >= (1 if case["by"] != ["seed", "init"] else 2)


@pytest.mark.parametrize("case", CASES[:4])
def test_aggregate_identical_to_row_by_row_on_compaction_fixture(store, case):  # noqa: F811
    before = aggregate(store.metrics(), trials=store.trials(), **case)
    store.compact()
    assert _check(store.metrics(), trials=store.trials(), **case) == before.num_rows
    assert aggregate(store.metrics(), trials=store.trials(), **case).equals(before)


def test_aggregate_duplicates_nan_and_no_timestamps():
    ts = pa.array([1000, 1000, 2000, 3000, 500, 4000, 4000, None, 100], pa.timestamp("ms", tz="UTC"))
    table = pa.table(
        {
            "trial_id": ["a", "a", "a", "b", "b", "b", "c", "c", "d"],
            "init": ["gap", "gap", "gap", "gap", "gap", "gap", "default", "default", "default"],
            "seed": [1, 1, 1, 2, 2, 2, 1, 1, 2],
            "epoch": [1.0, 2.0, 2.0, 3.0, 1.0, 3.0, 1.0, 2.0, 1.0],
            "val_cider": [5.0, 7.0, 6.0, math.nan, 2.0, 9.0, None, 4.0, None],
            "timestamp": ts,
        }
    )
    for case in [*CASES[:3], {"by": ["init"], "metric": "val_cider", "at": "best", "mode": "min"}]:
        # a: the retry of epoch 2 (later timestamp) wins; b: of two epoch-3 rows the NaN one is older
        assert _check(table, **case) == 2
        assert _check(table.drop_columns(["timestamp"]), **case) == 2  # then the first row wins
    got = aggregate(table, by=["init"], metric="val_cider").to_pylist()
    assert [(r["init"], r["n"], r["n_missing"], r["mean"]) for r in got] == [
        ("default", 1, 1, 4.0),
        ("gap", 2, 0, (6.0 + 9.0) / 2),
    ]
