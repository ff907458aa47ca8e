"""Fast queries: the vectorized aggregate against the row-by-row one it replaced, on the fixtures of
tests/results/test_store.py and tests/results/test_compaction.py and on hand-made tables (duplicates, NaN,
no timestamps, trials without reports)."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import threading
import time
from collections import defaultdict

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from scipy import stats

from gapinit_ray.atomic import write_atomic
from gapinit_ray.results import aggregate
from gapinit_ray.results._fs import encode_name
from gapinit_ray.results.aggregate import (
    _parse_at,
    _sort_key,
    _status_counts,
    _stopped,
    fmt_pm,
    resolve_by,
    select,
)
from gapinit_ray.results.store import COMPACTED, MANIFEST_KEY, SWEEP_FILE, _serialize
from tests.results.test_compaction import (  # noqa: F401  (store: fixture)
    EPOCHS,
    RUNNING,
    _cider,
    _config,
    _no_duplicates,
    _tid,
    store,
)
from tests.results.test_store import sweep  # noqa: F401  (fixture)


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


# ------------------------------------------------------------------------------ sweep-level file


def _key(table: pa.Table) -> list[tuple]:
    return sorted((r["trial_id"], r["epoch"]) for r in table.select(["trial_id", "epoch"]).to_pylist())


def _by_trial_epoch(table: pa.Table) -> pa.Table:
    return table.sort_by([("trial_id", "ascending"), ("epoch", "ascending")])


def _manifest(store_) -> dict:
    return json.loads(pq.read_schema(store_.sweep_path).metadata[MANIFEST_KEY])


def test_compact_writes_one_sweep_file_that_metrics_reads(store):  # noqa: F811
    before = _by_trial_epoch(store.metrics())
    store.compact()
    assert os.path.exists(store.sweep_path) and store.compact_sweep() is False  # already current
    files = _manifest(store)["files"]
    assert len(files) == 6  # every trial directory, the still-running one too
    running = files["trial_id=" + encode_name(RUNNING)]
    assert sorted(running) == [f"epoch={e}.parquet" for e in EPOCHS]
    assert all(list(f) == [COMPACTED] for d, f in files.items() if d != "trial_id=" + encode_name(RUNNING))
    after = store.metrics()
    assert after.schema == before.schema and _by_trial_epoch(after).equals(before)
    # the rows really come from the sweep file: alter a value in it (keeping its manifest) and see it
    table = pq.read_table(store.sweep_path)
    cider = table["val_cider"].to_pylist()
    cider[0] = -1.0
    table = table.set_column(table.schema.get_field_index("val_cider"), "val_cider", pa.array(cider))
    pq.write_table(table, store.sweep_path)
    assert -1.0 in store.metrics()["val_cider"].to_pylist()


def test_plain_readers_without_our_code(store):  # noqa: F811
    store.compact()
    expected = _by_trial_epoch(store.metrics())
    # the sweep file alone: every row, trial_id a plain column, already de-duplicated and sorted
    alone = pq.read_table(store.sweep_path)
    assert alone.replace_schema_metadata(None).equals(expected)
    assert len(pd.read_parquet(store.sweep_path)) == expected.num_rows
    # the hive directory: pyarrow / pandas skip "_sweep.parquet" ("_" prefix), so no row twice
    plain = ds.dataset(store.metrics_dir, format="parquet", partitioning="hive").to_table()
    assert plain.num_rows == expected.num_rows
    assert len(pd.read_parquet(store.metrics_dir)) == expected.num_rows


def test_rows_written_after_sweep_compaction_are_seen_once(store):  # noqa: F811
    store.compact()
    before = store.metrics()
    tid, cfg = _tid("gap", 2), _config("gap", 2)
    time.sleep(0.005)  # timestamps are in ms: the retry is strictly newer
    store.write_report(tid, cfg, {"epoch": 2.0, "val_cider": 1.5})  # a retry of a compacted epoch
    store.write_report(tid, cfg, {"epoch": 5.0, "val_cider": 2.5})  # a resumed trial's new epoch
    store.write_report(RUNNING, _config("default", 2), {"epoch": 5.0, "val_cider": 3.5})
    store.write_report("late", _config("gap", 9), {"epoch": 1.0, "val_cider": 4.5})  # a new trial
    m = store.metrics()
    assert _no_duplicates(m) and m.num_rows == before.num_rows + 3
    assert _key(m) == sorted([*_key(before), (tid, 5.0), (RUNNING, 5.0), ("late", 1.0)])
    mine = _by_trial_epoch(m.filter(pc.equal(m["trial_id"], tid)))
    assert mine["val_cider"].to_pylist() == [
        _cider("gap", 2, 1),
        1.5,
        _cider("gap", 2, 3),
        _cider("gap", 2, 4),
        2.5,
    ]
    # the same answer as plain pandas over the trial files, newest report per (trial, epoch)
    df = pd.read_parquet(store.metrics_dir).sort_values("timestamp")
    df = df.drop_duplicates(["trial_id", "epoch"], keep="last")
    assert len(df) == m.num_rows
    got = aggregate(m, by=["init"], metric="val_cider").to_pylist()
    last = df.sort_values("epoch").groupby("trial_id", observed=True).tail(1)
    want = last.groupby("init")["val_cider"].mean()
    assert {r["init"]: r["mean"] for r in got} == pytest.approx(want.to_dict(), rel=1e-12)
    # a filter applies to both parts, after de-duplication
    assert store.metrics(filter={"trial_id": tid, "epoch": 2.0})["val_cider"].to_pylist() == [1.5]
    # the next sweep-level compaction covers them; the answer does not change
    store.compact()
    assert "trial_id=late" in _manifest(store)["files"]
    assert _by_trial_epoch(store.metrics()).equals(_by_trial_epoch(m))


def test_trial_file_changed_after_sweep_compaction_wins(store):  # noqa: F811
    store.compact()
    before = _by_trial_epoch(store.metrics())
    tid = _tid("gap", 1)
    path = store.compacted_path(tid)
    # the trial's compacted file replaced by another version (same epochs, other values)
    t = pq.read_table(path)
    t = t.set_column(t.schema.get_field_index("val_cider"), "val_cider", pc.add(t["val_cider"], 1000.0))
    write_atomic(path, _serialize(t))
    m = store.metrics()
    assert _no_duplicates(m) and m.num_rows == before.num_rows
    mine = m.filter(pc.equal(m["trial_id"], tid))
    assert sorted(mine["val_cider"].to_pylist()) == [_cider("gap", 1, e) + 1000.0 for e in EPOCHS]
    others = _by_trial_epoch(m.filter(pc.not_equal(m["trial_id"], tid)))
    assert others.equals(before.filter(pc.not_equal(before["trial_id"], tid)))
    # rewritten with the very same bytes: a new file all the same, read from the trial files
    with open(store.compacted_path(_tid("gap", 3)), "rb") as f:
        write_atomic(store.compacted_path(_tid("gap", 3)), f.read())
    assert store.metrics().num_rows == before.num_rows
    # a trial directory removed after compaction: its rows are gone (the trial files are the truth)
    shutil.rmtree(store.trial_metrics_dir(_tid("default", 1)))
    gone = store.metrics()
    assert gone.num_rows == before.num_rows - len(EPOCHS) and _no_duplicates(gone)
    assert _tid("default", 1) not in gone["trial_id"].to_pylist()


def test_crash_before_the_sweep_file_rename_keeps_the_previous_one(store, monkeypatch):  # noqa: F811
    store.compact()
    with open(store.sweep_path, "rb") as f:
        first = f.read()
    store.write_report(_tid("gap", 3), _config("gap", 3), {"epoch": 5.0, "val_cider": 9.0})
    expected = _key(store.metrics())
    real = os.replace

    def crash(src, dst):
        if str(dst).endswith(SWEEP_FILE):
            raise OSError("killed before the rename")
        real(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed before the rename"):
        store.compact()
    monkeypatch.undo()
    with open(store.sweep_path, "rb") as f:
        assert f.read() == first  # the previous sweep file, whole
    assert not [n for n in os.listdir(store.metrics_dir) if n.endswith(".tmp")]
    # a hard crash leaves half a temp file behind: never read, by us or by plain readers
    with open(os.path.join(store.metrics_dir, f".{SWEEP_FILE}.999-dead.tmp"), "wb") as f:
        f.write(first[: len(first) // 2])
    m = store.metrics()
    assert _key(m) == expected and _no_duplicates(m)
    assert ds.dataset(store.metrics_dir, format="parquet", partitioning="hive").count_rows() == len(expected)
    store.compact()
    assert _key(store.metrics()) == expected
    # a sweep file that is not Parquet at all (a botched copy): ignored, the trial files are read
    with open(store.sweep_path, "wb") as f:
        f.write(first[: len(first) // 2])
    assert _key(store.metrics()) == expected


def test_reader_next_to_sweep_compactions_sees_whole_files(store):  # noqa: F811
    store.compact()
    expected = store.metrics().num_rows
    errors: list[BaseException] = []

    def resume_and_compact():
        try:
            for e in range(5, 25):
                store.write_report(_tid("gap", 1), _config("gap", 1), {"epoch": float(e), "val_cider": 1.0})
                store.compact()  # the trial is TERMINATED: it and the sweep file are rewritten each time
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=resume_and_compact)
    thread.start()
    seen, reads = expected, 0
    while thread.is_alive() or reads == 0:
        m = store.metrics(columns=["trial_id", "epoch", "val_cider", "timestamp"])
        assert _no_duplicates(m) and m["val_cider"].null_count == 0 and m["timestamp"].null_count == 0
        assert m.num_rows >= seen  # reports only ever appear
        seen, reads = m.num_rows, reads + 1
    thread.join()
    assert not errors and reads > 0
    assert store.metrics().num_rows == expected + 20
    assert _manifest(store)["files"]["trial_id=" + encode_name(_tid("gap", 1))] is not None
