"""The results store: real Parquet files in tmp dirs, aggregates checked against plain pandas."""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from scipy import stats

from gapinit_ray.errors import GapinitError
from gapinit_ray.results import (
    ResultsStore,
    aggregate,
    config_columns,
    format_table,
    group_key,
    temp_path,
    write_report,
)
from gapinit_ray.results.store import REQUIRED_METRIC_COLUMNS

INITS = ("gap", "default")
SEEDS = (1, 2, 3)
EPOCHS = (1, 2, 3)
STOPPED = ("default", 3)  # ASHA stops this trial after epoch 1
RETRIED = ("gap", 2)  # its epoch-2 report is sent twice; the retry's value must win, once


def _config(init: str, seed: int) -> dict:
    return {
        "backbone": "tiny-blip2",
        "init": init,
        "seed": seed,
        "lora.rank": 1,
        "train.lr": 2e-3,
        "lora.alpha": 2.0,
        "lora.layers.top_k": 2,
    }


def _tid(init: str, seed: int) -> str:
    return f"init={init},seed={seed}_{group_key(_config(init, seed))[:6]}"


def _cider(init: str, seed: int, epoch: int) -> float:
    # not monotone in epoch (epoch 2 is the best for some trials), so last != best
    bump = {1: 0.0, 2: 3.5, 3: 2.0 + 0.9 * seed}[epoch]
    return 120.0 + (8.0 if init == "gap" else 0.0) + 1.37 * seed + bump


@pytest.fixture
def sweep(tmp_path):
    store = ResultsStore(str(tmp_path / "root"), "unit")
    for init in INITS:
        for seed in SEEDS:
            tid, cfg = _tid(init, seed), _config(init, seed)
            store.write_trial(tid, cfg, status="RUNNING")
            epochs = (1,) if (init, seed) == STOPPED else EPOCHS
            for epoch in epochs:
                metrics = {
                    "epoch": float(epoch),
                    "val_cider": _cider(init, seed, epoch),
                    "val_loss": 2.0 / epoch,
                    "lr": 1e-3 / epoch,
                    "optimizer_steps": 10 * epoch,
                    "init_checks": json.dumps({"align": 0.9}) if epoch == 1 else "",
                    "note": "ignored",
                }
                if (init, seed) == RETRIED and epoch == 2:
                    store.write_report(tid, cfg, {**metrics, "val_cider": 0.0}, host="h1")  # lost attempt
                store.write_report(tid, cfg, metrics, host="h1")
            if (init, seed) == STOPPED:
                store.write_trial(
                    tid,
                    cfg,
                    status="STOPPED",
                    stop_reason="seed-group asha rung 1",
                    rung_reached=1,
                    last_epoch=1,
                )
            else:
                store.write_trial(tid, cfg, status="TERMINATED", rung_reached=2, last_epoch=3)
    return store


def _expected(df: pd.DataFrame, at: str) -> pd.DataFrame:
    """The aggregate recomputed with plain pandas from the raw rows."""
    if at == "last":
        per_trial = df.sort_values("epoch").groupby("trial_id").tail(1)
    elif at == "best":
        per_trial = df.loc[df.groupby("trial_id")["val_cider"].idxmax()]
    else:
        per_trial = df[df["epoch"] == float(at.split("=")[1])]
    g = per_trial.groupby("init")["val_cider"].agg(["count", "mean", "std", "min", "max"])
    half = stats.t.ppf(0.975, g["count"] - 1) * g["std"] / np.sqrt(g["count"])
    g["ci95_low"], g["ci95_high"] = g["mean"] - half, g["mean"] + half
    g["n_missing"] = df.groupby("init")["trial_id"].nunique() - g["count"]
    return g


def _raw(store: ResultsStore) -> pd.DataFrame:
    df = pd.read_parquet(store.metrics_dir)  # plain pandas: trial_id comes from the hive dir names
    df["trial_id"] = df["trial_id"].astype(str)
    return df


@pytest.mark.parametrize("at", ["last", "best", "epoch=2"])
def test_aggregate_matches_plain_pandas(sweep, at):
    df = _raw(sweep)
    exp = _expected(df, at)
    got = aggregate(sweep.metrics(), by=["init"], metric="val_cider", at=at).to_pandas().set_index("init")
    assert sorted(got.index) == sorted(exp.index)
    for init in exp.index:
        row, e = got.loc[init], exp.loc[init]
        assert row["n"] == e["count"]
        assert row["n_missing"] == e["n_missing"]
        for col in ("mean", "std", "min", "max", "ci95_low", "ci95_high"):
            assert row[col] == pytest.approx(e[col], rel=1e-12), (at, init, col)
        assert row["mean_pm_std"] == f"{e['mean']:.2f} ± {e['std']:.2f}"
    if at == "epoch=2":
        assert got.loc["default", "n_missing"] == 1  # the ASHA-stopped trial never reached epoch 2


def test_retried_report_counted_once(sweep):
    df = _raw(sweep)
    assert len(df) == len(INITS) * len(SEEDS) * len(EPOCHS) - 2  # stopped trial: 1 report, not 3
    assert not df.duplicated(["trial_id", "epoch"]).any()
    retried = df[(df["trial_id"] == _tid(*RETRIED)) & (df["epoch"] == 2.0)]
    assert retried["val_cider"].tolist() == [_cider(*RETRIED, 2)]
    assert retried["iteration"].tolist() == [2]
    files = os.listdir(os.path.dirname(sweep.metric_path(_tid(*RETRIED), 2.0)))
    assert sorted(files) == ["epoch=1.parquet", "epoch=2.parquet", "epoch=3.parquet"]


def test_files_readable_without_our_code(sweep):
    dataset = ds.dataset(sweep.metrics_dir, format="parquet", partitioning="hive")
    schema = dataset.schema
    assert schema.field("rank").type == pa.int32()
    assert schema.field("seed").type == pa.int64()
    assert schema.field("epoch").type == pa.float64()
    assert schema.field("val_cider").type == pa.float64()
    assert schema.field("timestamp").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("ax_lora__alpha").type == pa.float64()
    assert schema.field("ax_lora__layers__top_k").type == pa.int64()
    df = pd.read_parquet(sweep.metrics_dir)
    assert (str(df["rank"].dtype), str(df["seed"].dtype), str(df["epoch"].dtype)) == (
        "int32",
        "int64",
        "float64",
    )
    assert set(df["trial_id"].astype(str)) == {_tid(i, s) for i in INITS for s in SEEDS}
    # with an explicit partition schema plain pyarrow gives trial_id as a string, like metrics()
    typed = ds.dataset(
        sweep.metrics_dir,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("trial_id", pa.string())]), flavor="hive"),
    )
    assert typed.schema.field("trial_id").type == pa.string()
    trials = pd.read_parquet(sweep.trials_dir)
    assert len(trials) == 6 and trials["rung_reached"].dtype == "int32"


def test_metrics_and_trials_tables(sweep):
    m = sweep.metrics()
    assert m.schema.field("trial_id").type == pa.string()
    assert m.column_names[:8] == ["sweep", "trial_id", "group_id", "backbone", "init", "rank", "seed", "lr"]
    assert m.column_names[-4:] == ["init_checks", "timestamp", "host", "status"]
    row = m.filter(pa.compute.equal(m["epoch"], 1.0)).to_pylist()[0]
    assert row["lr"] == 2e-3 and row["lr_now"] == 1e-3  # reported "lr" is the current lr
    assert row["optimizer_steps"] == 10.0 and "note" not in m.column_names
    assert json.loads(row["init_checks"]) == {"align": 0.9}
    assert row["val_bleu4"] is None and row["host"] == "h1"
    # seeds of one config share a group id; configs differ
    groups = {(r["init"], r["group_id"]) for r in m.select(["init", "group_id"]).to_pylist()}
    assert len(groups) == 2
    gap = sweep.metrics(columns=["trial_id", "epoch"], filter={"init": "gap", "epoch": [1.0, 2.0]})
    assert gap.column_names == ["trial_id", "epoch"] and gap.num_rows == 6
    assert sweep.metrics(filter=ds.field("trial_id") == _tid("gap", 1)).num_rows == 3
    t = sweep.trials()
    assert t.num_rows == 6 and t.schema.field("trial_id").type == pa.string()
    stopped = t.filter(pa.compute.equal(t["status"], "STOPPED")).to_pylist()
    assert [(r["stop_reason"], r["rung_reached"]) for r in stopped] == [("seed-group asha rung 1", 1)]
    assert json.loads(stopped[0]["config_json"])["lora.rank"] == 1


def test_aggregate_with_trials_and_aliases(sweep):
    agg = aggregate(
        sweep.metrics(), by=["init", "lora.rank", "lora.alpha"], metric="val_cider", trials=sweep.trials()
    )
    assert agg.column_names[:3] == ["init", "rank", "ax_lora__alpha"]
    assert agg.schema.field("rank").type == pa.int32()
    rows = {r["init"]: r for r in agg.to_pylist()}
    assert rows["default"]["stopped"] == "1 stopped at rung 1 (seed-group)"
    assert rows["default"]["status"] == "2 TERMINATED, 1 STOPPED"
    assert rows["gap"]["stopped"] == "" and rows["gap"]["status"] == "3 TERMINATED"
    one = aggregate(sweep.metrics(), by=["seed", "init"], metric="val_cider")
    assert one.num_rows == 6 and all(r["std"] is None and r["ci95_low"] is None for r in one.to_pylist())
    assert one.to_pylist()[0]["mean_pm_std"] == f"{one.to_pylist()[0]['mean']:.2f}"
    low = aggregate(sweep.metrics(), by=["init"], metric="val_loss", at="best", mode="min")
    assert {r["init"]: r["min"] for r in low.to_pylist()} == {"default": 2.0 / 3, "gap": 2.0 / 3}


def test_temp_files_and_crashes_are_ignored(sweep, monkeypatch):
    tid = _tid("gap", 1)
    final = sweep.metric_path(tid, 3.0)
    with open(final, "rb") as f:
        whole = f.read()
    # a writer that died mid-write: half a Parquet file under its temp names, in both directories
    for path in (temp_path(sweep.metric_path(tid, 4.0)), temp_path(sweep.trial_path(tid))):
        with open(path, "wb") as f:
            f.write(whole[: len(whole) // 2])
    with open(os.path.join(os.path.dirname(final), "_tmp-epoch=5.parquet"), "wb") as f:
        f.write(b"PAR1")
    before = sweep.metrics().num_rows
    assert sweep.trials().num_rows == 6
    assert len(pd.read_parquet(sweep.metrics_dir)) == before  # plain readers skip them too

    def crash(src, dst):
        raise OSError("disk died during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk died"):
        sweep.write_report(tid, _config("gap", 1), {"epoch": 6.0, "val_cider": 1.0})
    monkeypatch.undo()
    trial_dir = os.path.dirname(final)
    assert not os.path.exists(sweep.metric_path(tid, 6.0))
    assert not [n for n in os.listdir(trial_dir) if "epoch=6" in n]  # the temp file was cleaned up
    m = sweep.metrics()
    assert m.num_rows == before
    for col in REQUIRED_METRIC_COLUMNS:
        assert m[col].null_count == 0


def test_format_table_all_formats(sweep):
    agg = aggregate(sweep.metrics(), by=["init"], metric="val_cider", trials=sweep.trials())
    back = pd.read_csv(io.StringIO(format_table(agg, "csv")))
    assert list(back.columns) == agg.column_names and len(back) == 2
    assert back["mean"].tolist() == pytest.approx(agg["mean"].to_pylist(), rel=1e-15)
    records = json.loads(format_table(agg, "json"))
    assert [r["init"] for r in records] == agg["init"].to_pylist() and "±" in records[0]["mean_pm_std"]
    md = format_table(agg, "markdown").splitlines()
    assert md[0].startswith("| init |") and set(md[1]) <= set("|-:") and len(md) == 4
    text = format_table(agg, "table").splitlines()
    assert text[0].split()[:3] == ["init", "n", "n_missing"] and set(text[1]) <= {"-", " "}
    with pytest.raises(GapinitError, match="format 'xml'"):
        format_table(agg, "xml")


def test_write_report(sweep, tmp_path):
    paths = write_report(sweep, str(tmp_path / "report"), by=["init"], metric="val_cider")
    names = [os.path.basename(p) for p in paths]
    assert names == ["curves.png", "final.png", "report.md", "report.html"]
    for p in paths[:2]:
        with open(p, "rb") as f:
            assert f.read(4) == b"\x89PNG"
    for p in paths[2:]:
        with open(p, encoding="utf-8") as f:
            text = f.read()
        assert "curves.png" in text and "final.png" in text and "gap" in text and "±" in text
    assert not [n for n in os.listdir(tmp_path / "report") if n.startswith(".")]
    with pytest.raises(GapinitError, match="no metric reports"):
        write_report(
            ResultsStore(str(tmp_path / "empty"), "x"), str(tmp_path / "r2"), by=["init"], metric="m"
        )


def test_unknown_names_list_the_available_ones(sweep):
    m = sweep.metrics()
    with pytest.raises(GapinitError, match=r"group by 'optimizer'.*available: .*init.*lora\.alpha"):
        aggregate(m, by=["optimizer"], metric="val_cider")
    with pytest.raises(GapinitError, match=r"metric 'val_cidr'.*available: .*val_cider.*optimizer_steps"):
        aggregate(m, by=["init"], metric="val_cidr")
    with pytest.raises(GapinitError, match="at 'epoch=x'"):
        aggregate(m, by=["init"], metric="val_cider", at="epoch=x")
    with pytest.raises(GapinitError, match=r"columns: unknown 'nope'.*available: sweep"):
        sweep.metrics(columns=["nope"])
    with pytest.raises(GapinitError, match="status 'DONE'"):
        sweep.write_trial("t", {}, status="DONE")
    with pytest.raises(GapinitError, match=r"metrics\['epoch'\]"):
        sweep.write_report("t", {}, {"val_cider": 1.0})
    with pytest.raises(GapinitError, match=r"config lora\.rank"):
        sweep.write_report("t", {"lora.rank": 1.5}, {"epoch": 1})


def test_uri_roots(tmp_path):
    with pytest.raises(GapinitError, match="unknown URI scheme 'ftp'"):
        ResultsStore("ftp://host/results", "s")
    store = ResultsStore(f"file://{tmp_path}", "s")  # a URI for the local disk works like a path
    store.write_report("a", {"seed": 1}, {"epoch": 1, "val_cider": 3.0})
    assert os.path.exists(tmp_path / "s" / "results" / "metrics" / "trial_id=a" / "epoch=1.parquet")
    assert ResultsStore(str(tmp_path), "s").metrics()["val_cider"].to_pylist() == [3.0]
    with pytest.raises(GapinitError, match=r"sweep '\.\./x'"):
        ResultsStore(str(tmp_path), "../x")


def test_empty_store_and_odd_ids(tmp_path):
    store = ResultsStore(str(tmp_path), "s")
    assert store.metrics().num_rows == 0 and "val_cider" in store.metrics().column_names
    assert store.trials().num_rows == 0
    for tid in ("_hidden", ".dot", "a/b c%"):
        store.write_report(tid, {"seed": 1}, {"epoch": 0.5, "val_cider": 1.0})
        store.write_trial(tid, {"seed": 1}, status="PENDING")
    assert sorted(store.metrics()["trial_id"].to_pylist()) == sorted(["_hidden", ".dot", "a/b c%"])
    assert sorted(store.trials()["trial_id"].to_pylist()) == sorted(["_hidden", ".dot", "a/b c%"])


def test_group_key_and_config_columns():
    cfg = {
        "init": "gap",
        "seed": 1,
        "lora.rank": 4,
        "train.lr": 1e-4,
        "train.betas": [0.9, 0.99],
        "fp16": True,
    }
    assert group_key(cfg) == group_key({**cfg, "seed": 2}) == group_key({**cfg, "seed": np.int64(7)})
    assert group_key(cfg) == group_key(dict(reversed(cfg.items())))
    assert group_key(cfg) != group_key({**cfg, "init": "default"})
    assert group_key({**cfg, "lora.rank": np.int64(4)}) == group_key(cfg)
    cols = config_columns({**cfg, "lora.rank": np.int64(4), "seed": np.int32(3)})
    assert list(cols) == ["backbone", "init", "rank", "seed", "lr", "ax_fp16", "ax_train__betas"]
    assert cols["rank"].type == pa.int32() and cols["rank"].as_py() == 4
    assert cols["seed"].type == pa.int64() and cols["lr"].type == pa.float64()
    assert cols["backbone"].as_py() is None and cols["ax_fp16"].type == pa.bool_()
    assert json.loads(cols["ax_train__betas"].as_py()) == [0.9, 0.99]


def test_concurrent_reader_sees_only_whole_rows(tmp_path):
    store = ResultsStore(str(tmp_path), "live")
    errors: list[BaseException] = []

    def writer():
        try:
            for i in range(200):
                tid, seed = f"t{i % 10}", i % 10
                store.write_report(tid, {"init": "gap", "seed": seed}, {"epoch": i // 10 + 1, "val_cider": i})
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    reads, seen = 0, 0
    deadline = time.monotonic() + 25
    while (thread.is_alive() or reads == 0) and time.monotonic() < deadline:
        m = store.metrics()
        for col in (*REQUIRED_METRIC_COLUMNS, "val_cider", "seed", "init"):
            assert m[col].null_count == 0, col
        assert m.num_rows >= seen  # reports only ever appear
        seen, reads = m.num_rows, reads + 1
    thread.join()
    assert not errors and reads > 0
    final = store.metrics()
    assert final.num_rows == 200 and not math.isnan(sum(final["val_cider"].to_pylist()))
    assert sorted(final["iteration"].to_pylist()) == sorted([e for e in range(1, 21) for _ in range(10)])
    assert pq.read_table(store.metric_path("t3", 20.0)).num_rows == 1


def test_fractional_epochs_get_distinct_files(tmp_path):
    store = ResultsStore(str(tmp_path), "s")
    epochs = [0.5, 1.0, 1 + 1 / 3, 1 + 1 / 3 + 1e-7]  # the last two round to the same `:g`
    for e in epochs:
        store.write_report("t", {"seed": 1}, {"epoch": e, "val_cider": e})
    assert os.path.basename(store.metric_path("t", 0.5)) == "epoch=0.5.parquet"
    m = store.metrics()
    assert sorted(m["epoch"].to_pylist()) == epochs
    assert sorted(m["iteration"].to_pylist()) == [1, 2, 3, 4]
