"""Faults, for real: a trial that raises inside a sweep, a results store that turns read-only or full
while it is written, and several processes writing one storage root while another one reads it.

Writers and readers run as separate OS processes (``tests/store_process.py``) and write exactly as a
sweep's processes do. A read-only directory does not stop root, so a writer started as root drops the
capabilities that bypass directory permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH); a full disk is a file size limit (``RLIMIT_FSIZE``, SIGXFSZ
ignored: writes past it fail with EFBIG, as on a full disk) set in the writer process.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gapinit_ray.results import ResultsStore

from .conftest import ROOT, share_caches
from .store_process import cider
from .test_sweep import _finish, _run_cli, sweep_raw

# Linux capabilities that let root write into a read-only directory; a writer started by root drops
# them from its bounding set before exec, so directory permissions bind it like any user
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _PR_CAPBSET_DROP = 1, 2, 24


def _drop_dac_capabilities() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def store_process(*args: object, wait: bool = True) -> subprocess.Popen | dict:
    """``python -m tests.store_process ARGS`` (as root: without the capabilities that ignore directory
    permissions); with ``wait``, its JSON line (and exit code, as ``rc``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.store_process", *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_drop_dac_capabilities if os.geteuid() == 0 else None,
    )
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    return {**json.loads(out.splitlines()[-1]), "rc": proc.returncode}


@contextlib.contextmanager
def read_only(*dirs: Path):
    """Directories made read-only (r-x) for the block; their modes are restored whatever happens."""
    modes = {d: stat.S_IMODE(d.stat().st_mode) for d in dirs}
    try:
        for d in dirs:
            d.chmod(0o555)
        yield
    finally:
        for d, mode in modes.items():
            d.chmod(mode)


def leftovers(root: Path) -> list[str]:
    """Temporary files a failed write left behind (there must be none)."""
    return sorted(str(p) for p in root.rglob(".*.tmp"))


def assert_rows_intact(root: Path, sweep: str, expected: dict[str, int]) -> None:
    """``expected`` trial id -> epochs 1..n: exactly these rows, whole, through our reader and plain
    pandas, and each trial's row readable."""
    store = ResultsStore(str(root), sweep)
    metrics = store.metrics().to_pandas()
    want = sorted((tid, float(e)) for tid, n in expected.items() for e in range(1, n + 1))
    assert sorted(zip(metrics["trial_id"], metrics["epoch"], strict=True)) == want
    for row in metrics.itertuples():
        assert row.val_cider == pytest.approx(cider(row.epoch, row.seed))
    raw = pd.read_parquet(store.metrics_dir)
    assert len(raw.drop_duplicates(["trial_id", "epoch"])) == len(want)
    assert sorted(store.trials().to_pandas()["trial_id"]) == sorted(expected)


def assert_one_line_error(result: dict, kind: str, path_part: str, *words: str) -> str:
    assert result["rc"] == 3, result
    cls, message = result["error"]
    assert cls == "StorageError", result
    assert "\n" not in message
    assert path_part in message and kind in message, message
    for w in words:
        assert w in message, message
    return message


# ---------------------------------------------------------------------------- a trial that raises


@pytest.mark.slow
def test_a_trial_that_raises_is_retried_then_recorded_failed_and_the_others_complete(tmp_path) -> None:
    raw = sweep_raw(tmp_path, name="faulty")
    share_caches(raw["storage"], "gaps", "features")  # calibrated and cached once per session
    # One case's LoRA targets a module name the backbone does not have: the spec validates (module
    # names are known only once the model is loaded) and that trial raises in every attempt. The
    # calibration hooks real modules, so preparing the sweep succeeds.
    raw["calibration"]["target_modules"] = raw["lora"]["target_modules"] = ["q_proj", "v_proj"]
    raw["train"].update({"epochs": 1, "max_steps_per_epoch": 2})
    bad = {"init": "random", "lora.target_modules": ["no_such_proj"]}
    raw["search"] = {"seed": [1], "cases": [{"init": "gap"}, bad, {"init": "random"}]}
    raw["scheduler"] = {"type": "fifo", "metric": "val_cider", "mode": "max"}
    raw["resources"]["max_failures"] = 1  # Tune retries a failed trial once
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    proc = _run_cli("run", str(spec_path), "--num-cpus", "2", "--quiet", cwd=tmp_path)
    out, err = _finish(proc, 840)
    # the sweep finishes and prints its table (which counts the failed trial), then one line per failed
    # trial on stderr, and exits 1: some trial failed after its retries
    assert proc.returncode == 1, err[-3000:]
    assert "1 ERROR" in out
    failed_lines = [line for line in err.splitlines() if line.startswith("gapinit: trial ")]
    assert len(failed_lines) == 1, err[-3000:]
    assert "failed after 2 attempts: LoraInitError: lora.target_modules no_such_proj" in failed_lines[0]
    error_path = Path(failed_lines[0].rsplit("(full error: ", 1)[1].rstrip(")"))
    assert error_path.parent == tmp_path / "store" / "faulty" / "errors"
    assert error_path.read_text().count("LoraInitError: lora.target_modules") == 2

    store = ResultsStore(str(tmp_path / "store"), "faulty")
    trials = store.trials().to_pandas()
    is_bad = trials["ax_lora__target_modules"] == '["no_such_proj"]'
    (failed,) = (row for _, row in trials[is_bad].iterrows())
    assert failed["status"] == "ERROR"
    assert failed["error"].startswith("LoraInitError: lora.target_modules no_such_proj match nothing"), failed
    assert "its linear modules are: fc1, fc2, k_proj, out_proj, q_proj, v_proj" in failed["error"]
    assert failed["stop_reason"] == "error after 2 attempts (resources.max_failures=1)"
    # Tune's own record of the trial agrees: two failures, each with that error
    (tune_trial,) = (tmp_path / "store" / "faulty" / "tune").glob("trainable_*case=1_*")
    log = (tune_trial / "error.txt").read_text()
    assert log.count("Failure # ") == 2 and log.count("LoraInitError: lora.target_modules") == 2

    others = trials[~is_bad]
    assert sorted(others["init"]) == ["gap", "random"]
    assert set(others["status"]) == {"TERMINATED"} and set(others["last_epoch"]) == {1.0}
    metrics = store.metrics().to_pandas()
    assert sorted(set(metrics["trial_id"])) == sorted(others["trial_id"])
    assert sorted(metrics["epoch"]) == [0.0, 0.0, 1.0, 1.0]  # epoch 0 (at init) and the one trained
    assert metrics["val_cider"].notna().all()


# ------------------------------------------------------------------------------ read-only / full


def test_read_only_store_gives_one_line_error_and_keeps_earlier_rows(tmp_path) -> None:
    first = store_process("write", tmp_path, "ro", "--prefix", "ok", "--trials", 2, "--epochs", 2)
    assert first == {"written": 4, "error": None, "rc": 0}
    results = tmp_path / "ro" / "results"
    trial_dir = results / "metrics" / "trial_id=ok-0"

    # a trial's metrics dir turns read-only: its next report is refused, by name
    with read_only(trial_dir):
        res = store_process("write", tmp_path, "ro", "--prefix", "ok", "--trials", 1, "--first-epoch", 3)
    assert res["written"] == 0
    msg = assert_one_line_error(res, "read-only", str(trial_dir / "epoch=3.parquet"), "make", "writable")
    assert "gapinit resume" in msg

    # the whole results dir read-only: a new trial's first write (its trial row) is refused
    with read_only(results / "metrics", results / "trials", trial_dir):
        res = store_process("write", tmp_path, "ro", "--prefix", "new", "--trials", 1)
    assert_one_line_error(res, "read-only", str(results / "trials" / "new-0.parquet"))

    assert leftovers(tmp_path) == []
    assert_rows_intact(tmp_path, "ro", {"ok-0": 2, "ok-1": 2})


def test_full_disk_gives_one_line_error_and_no_partial_file(tmp_path) -> None:
    first = store_process("write", tmp_path, "full", "--prefix", "ok", "--trials", 2, "--epochs", 3)
    assert first["written"] == 6
    results = tmp_path / "full" / "results"
    before = {p: p.read_bytes() for p in results.rglob("*.parquet")}

    # every file is bigger than 1 KiB: the next trial's first write fails with EFBIG
    res = store_process("write", tmp_path, "full", "--prefix", "late", "--trials", 1, "--fsize-limit", 1024)
    assert_one_line_error(res, "full", str(results / "trials" / "late-0.parquet"), "free space")

    # the end-of-sweep compaction on a full disk: nothing folded, nothing deleted, nothing half-written
    res = store_process("write", tmp_path, "full", "--trials", 0, "--compact", "--fsize-limit", 1024)
    assert_one_line_error(res, "full", "compacted.parquet", "free space")
    assert leftovers(tmp_path) == []
    assert {p: p.read_bytes() for p in results.rglob("*.parquet")} == before
    assert_rows_intact(tmp_path, "full", {"ok-0": 3, "ok-1": 3})

    # with room again, the same compaction goes through and loses nothing
    assert store_process("write", tmp_path, "full", "--trials", 0, "--compact")["rc"] == 0
    assert sorted(p.name for p in results.rglob("*.parquet") if "metrics" in p.parts) == [
        "_sweep.parquet",
        "compacted.parquet",
        "compacted.parquet",
    ]
    assert_rows_intact(tmp_path, "full", {"ok-0": 3, "ok-1": 3})


# ----------------------------------------------------------------------------- concurrent writers


def test_concurrent_writers_on_one_root_lose_no_row_and_readers_see_whole_files(tmp_path) -> None:
    """Four writer processes at once: sweeps alpha and beta, and two writers of one sweep gamma (their
    own trials, and two trials both write: the same reports twice), each compacting at its end as a
    driver does, while a reader process queries all three sweeps and reads every file, over and over."""
    root, stop = tmp_path / "store", tmp_path / "stop"
    reader = store_process("read", root, "alpha", "beta", "gamma", "--stop-file", stop, wait=False)
    assert reader.stdout.readline().strip() == "READY"
    runs = [
        ("alpha", "a", 6),
        ("beta", "b", 6),
        ("gamma", "c", 4),
        ("gamma", "d", 4),
        ("gamma", "s", 2),  # both gamma writers below write these
        ("gamma", "s", 2),
    ]
    writers = [
        store_process(
            "write",
            root,
            sweep,
            "--prefix",
            prefix,
            "--trials",
            n,
            "--epochs",
            8,
            "--pause",
            0.02,
            "--compact",
            wait=False,
        )
        for sweep, prefix, n in runs
    ]
    t0 = time.monotonic()
    outs = [w.communicate(timeout=300) for w in writers]
    took = time.monotonic() - t0
    stop.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    for w, (o, e) in zip(writers, outs, strict=True):
        assert w.returncode == 0 and json.loads(o)["error"] is None, e
    seen = json.loads(out.splitlines()[-1])
    assert seen["problems"] == [], seen["problems"][:5]
    # the reader ran while the writers wrote (rounds that found some rows, and more after)
    assert seen["during"] >= 2, f"the reader overlapped the writers {seen['during']} times in {took:.1f} s"
    assert seen["rows"] == {"alpha": 48, "beta": 48, "gamma": 80}

    expect = {
        "alpha": {f"a-{i}": 8 for i in range(6)},
        "beta": {f"b-{i}": 8 for i in range(6)},
        "gamma": {**{f"{p}-{i}": 8 for p in "cd" for i in range(4)}, **{f"s-{i}": 8 for i in range(2)}},
    }
    for sweep, trials in expect.items():
        store = ResultsStore(str(root), sweep)
        metrics = store.metrics().to_pandas()
        assert len(metrics) == 8 * len(trials)
        assert not metrics.duplicated(["trial_id", "epoch"]).any()
        assert sorted(metrics["trial_id"].unique()) == sorted(trials)
        status = store.trials().to_pandas().set_index("trial_id")["status"]
        assert sorted(status.index) == sorted(trials) and set(status) == {"TERMINATED"}
