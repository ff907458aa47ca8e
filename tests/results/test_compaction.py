"""Compaction of the results store: one file per finished trial, and readers that never lose or double
count a report (crash between writing and deleting, late reports, a reader running next to it)."""

from __future__ import annotations

import os
import threading
import time

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from gapinit_ray.results import ResultsStore, aggregate
from gapinit_ray.results.store import COMPACTED

SEEDS = (1, 2, 3)
EPOCHS = (1, 2, 3, 4)


def _config(init: str, seed: int) -> dict:
    return {"backbone": "tiny-blip2", "init": init, "seed": seed, "lora.rank": 2, "lora.alpha": 4.0}


def _tid(init: str, seed: int) -> str:
    return f"init={init},seed={seed}"


def _cider(init: str, seed: int, epoch: float) -> float:
    return 100.0 + (5.0 if init == "gap" else 0.0) + seed + 0.5 * epoch


def _report(store: ResultsStore, init: str, seed: int, epoch: float, **extra) -> None:
    metrics = {"epoch": epoch, "val_cider": _cider(init, seed, epoch), "val_loss": 1.0 / epoch, **extra}
    store.write_report(_tid(init, seed), _config(init, seed), metrics, host="h")


@pytest.fixture
def store(tmp_path):
    """gap: 3 finished trials; default: 2 finished (one ASHA-stopped after epoch 1), 1 still running."""
    s = ResultsStore(str(tmp_path / "root"), "compaction")
    for init in ("gap", "default"):
        for seed in SEEDS:
            tid, cfg = _tid(init, seed), _config(init, seed)
            s.write_trial(tid, cfg, status="RUNNING")
            stopped = (init, seed) == ("default", 3)
            for epoch in (1,) if stopped else EPOCHS:
                # one trial reports an extra metric only: compaction must keep the wider schema
                extra = {"optimizer_steps": 10.0 * epoch} if (init, seed) == ("gap", 1) else {}
                _report(s, init, seed, float(epoch), **extra)
            if stopped:
                s.write_trial(tid, cfg, status="STOPPED", stop_reason="seed-group asha rung 1")
            elif (init, seed) != ("default", 2):
                s.write_trial(tid, cfg, status="TERMINATED")
    return s


RUNNING = _tid("default", 2)


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("trial_id", "ascending"), ("epoch", "ascending")])


def _files(store: ResultsStore, trial_id: str) -> list[str]:
    return sorted(os.listdir(store.trial_metrics_dir(trial_id)))


def _no_duplicates(table: pa.Table) -> bool:
    keys = table.select(["trial_id", "epoch"]).to_pylist()
    return len({(r["trial_id"], r["epoch"]) for r in keys}) == len(keys)


def test_compaction_keeps_the_same_rows(store):
    before = _sorted(store.metrics())
    agg_before = aggregate(before, by=["init"], metric="val_cider")
    compacted = store.compact()
    assert sorted(compacted) == sorted(
        _tid(i, s) for i in ("gap", "default") for s in SEEDS if _tid(i, s) != RUNNING
    )
    after = _sorted(store.metrics())
    assert after.schema == before.schema  # same columns, same order, same types
    assert after.equals(before)
    assert aggregate(store.metrics(), by=["init"], metric="val_cider").equals(agg_before)
    assert "optimizer_steps" in after.column_names


def test_compaction_leaves_one_file_per_trial(store):
    store.compact()
    for init in ("gap", "default"):
        for seed in SEEDS:
            tid = _tid(init, seed)
            if tid == RUNNING:  # not terminal: compact() without an id leaves it alone
                assert _files(store, tid) == [f"epoch={e}.parquet" for e in EPOCHS]
            else:
                assert _files(store, tid) == [COMPACTED]
    assert store.compact() == []  # nothing left to fold: idempotent
    assert store.compact(RUNNING) == [RUNNING]  # an explicit id compacts whatever the status
    assert _files(store, RUNNING) == [COMPACTED]
    assert store.compact("no-such-trial") == []
    # plain hive readers still see every trial (trial_id from the directory name)
    plain = ds.dataset(store.metrics_dir, format="parquet", partitioning="hive").to_table()
    assert plain.num_rows == store.metrics().num_rows == 5 * len(EPOCHS) + 1


def test_crash_between_writing_and_deleting_reads_back_without_duplicates(store, monkeypatch):
    before = _sorted(store.metrics())
    monkeypatch.setattr(ResultsStore, "_delete", lambda self, path: None)  # the crash: no deletes
    store.compact()
    monkeypatch.undo()
    tid = _tid("gap", 2)
    assert _files(store, tid) == [COMPACTED, *(f"epoch={e}.parquet" for e in EPOCHS)]
    after = store.metrics()
    assert _no_duplicates(after)
    assert _sorted(after).equals(before)
    # filters apply after de-duplication; columns too
    one = store.metrics(columns=["trial_id", "epoch", "val_cider"], filter={"trial_id": tid})
    assert one.num_rows == len(EPOCHS) and one.column_names == ["trial_id", "epoch", "val_cider"]
    # a later compaction finishes the job
    store.compact()
    assert _files(store, tid) == [COMPACTED]
    assert _sorted(store.metrics()).equals(before)


def test_crash_part_way_through_the_deletes(store, monkeypatch):
    before = _sorted(store.metrics())
    real, calls = ResultsStore._delete, []

    def dies_on_the_third(self, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("killed")
        real(self, path)

    monkeypatch.setattr(ResultsStore, "_delete", dies_on_the_third)
    with pytest.raises(OSError, match="killed"):
        store.compact(_tid("gap", 1))
    monkeypatch.undo()
    assert _files(store, _tid("gap", 1)) == [COMPACTED, "epoch=3.parquet", "epoch=4.parquet"]
    assert _sorted(store.metrics()).equals(before)


def test_late_report_after_compaction_is_visible_and_wins(store):
    tid = _tid("gap", 2)
    store.compact()
    old = store.metrics(filter={"trial_id": tid, "epoch": 3.0}).to_pylist()[0]
    time.sleep(0.005)  # timestamps are in ms: the retry is strictly newer
    store.write_report(tid, _config("gap", 2), {"epoch": 3.0, "val_cider": 1.0, "val_loss": 9.0})
    store.write_report(tid, _config("gap", 2), {"epoch": 5.0, "val_cider": 2.0})  # a new epoch
    m = store.metrics()
    assert _no_duplicates(m) and m.num_rows == 5 * len(EPOCHS) + 1 + 1
    mine = _sorted(store.metrics(filter={"trial_id": tid}))
    assert mine["epoch"].to_pylist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert mine["val_cider"].to_pylist()[2:] == [1.0, _cider("gap", 2, 4.0), 2.0]
    # the retry keeps the index of the report it replaces; the new epoch comes after the compacted ones
    assert mine["iteration"].to_pylist() == [1, 2, 3, 4, 5] == [old["iteration"] - 2, 2, 3, 4, 5]
    # a filter matching only the superseded row finds nothing: de-duplication comes first
    stale = store.metrics(filter=ds.field("val_cider") == old["val_cider"])
    assert tid not in stale["trial_id"].to_pylist()
    last = aggregate(store.metrics(filter={"trial_id": tid}), by=["init"], metric="val_cider")
    assert last["mean"].to_pylist() == [2.0]
    # compacting again folds the late reports in, the retry's value kept
    assert store.compact(tid) == [tid]
    assert _files(store, tid) == [COMPACTED]
    assert _sorted(store.metrics(filter={"trial_id": tid})).equals(mine)


def test_report_replaced_while_compacting_is_kept(store, monkeypatch):
    """A retried report that lands after compaction read the files must not be deleted with them."""
    tid, cfg = _tid("gap", 3), _config("gap", 3)
    real = ResultsStore._tables

    def read_then_retry(self, paths, base, partitioning, schema):
        parts = real(self, paths, base, partitioning, schema)
        time.sleep(0.005)
        self.write_report(tid, cfg, {"epoch": 2.0, "val_cider": 7.0})
        return parts

    monkeypatch.setattr(ResultsStore, "_tables", read_then_retry)
    store.compact(tid)
    monkeypatch.undo()
    assert _files(store, tid) == [COMPACTED, "epoch=2.parquet"]
    mine = _sorted(store.metrics(filter={"trial_id": tid}))
    assert mine["val_cider"].to_pylist()[1] == 7.0 and mine.num_rows == len(EPOCHS)


def test_reader_next_to_compaction_never_loses_or_doubles_a_row(tmp_path):
    s = ResultsStore(str(tmp_path), "live")
    tids = [f"t{t}" for t in range(22)] + ["a/b c%", "_hidden"]  # escaped directory names too
    n_epochs = 12
    for seed, tid in enumerate(tids):
        for e in range(1, n_epochs + 1):
            s.write_report(tid, {"init": "gap", "seed": seed}, {"epoch": e, "val_cider": float(e)})
    expected = len(tids) * n_epochs
    errors: list[BaseException] = []

    def compactor():
        try:
            for tid in tids:
                s.compact(tid)
                time.sleep(0.002)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=compactor)
    thread.start()
    reads = 0
    while thread.is_alive() or reads == 0:
        m = s.metrics(columns=["trial_id", "epoch", "val_cider"])
        assert m.num_rows == expected and _no_duplicates(m)
        reads += 1
    thread.join()
    assert not errors and reads > 0
    assert all(_files(s, tid) == [COMPACTED] for tid in tids)
    assert s.metrics().num_rows == expected
