"""One trial end to end on a real local Ray: Ray Train + DeepSpeed ZeRO on CPU (gloo), peft adapters,
pycocoevalcap metrics, checkpoints, and recovery from a worker killed by pid."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from gapinit_ray.plan import parse_trial_params, trial_id, trial_spec
from gapinit_ray.spec import spec_from_dict
from gapinit_ray.train import ADAPTER_DIR, deepspeed_config, lr_lambda
from gapinit_ray.trial import build_trainer

from .conftest import QUICKSTART, share_caches


def tiny_spec(tmp_path: Path, **train_over):
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["storage"] = str(tmp_path / "store")
    share_caches(raw["storage"], "backbones", "gaps")
    raw["data"]["sources"]["shapes"]["num_images"] = 64
    raw["data"]["val"]["limit"] = 6
    raw["calibration"].update({"num_samples": 16, "workers": 1})
    raw["train"].update({"epochs": 2, "batch_size": 8, "max_steps_per_epoch": 4, "lr": 1e-2, **train_over})
    raw["eval"].update(
        {"metrics": ["bleu4", "cider"], "final_metrics": [], "generation": {"max_new_tokens": 6}}
    )
    raw["resources"].update({"workers_per_trial": 1, "cpus_per_worker": 1})
    # the quickstart's first rung (epoch 2) would come after a 1-epoch trial's last epoch: refused
    raw["scheduler"]["grace_period"] = min(raw["scheduler"]["grace_period"], raw["train"]["epochs"])
    return spec_from_dict(raw)


class EpochLog:
    """A Ray Train callback (runs in the controller) that appends every report (rank 0's metrics) to a
    file, one JSON line each."""

    def __init__(self, path: str) -> None:
        from ray.train.v2.api.callback import UserCallback

        class _Cb(UserCallback):
            def after_report(self, run_context, metrics, checkpoint):
                with open(path, "a") as f:
                    f.write(json.dumps(metrics[0]) + "\n")

        self.callback = _Cb()
        self.path = path

    def reports(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        return [json.loads(x) for x in Path(self.path).read_text().splitlines() if x.strip()]

    def epochs(self) -> list[float]:
        return [r["epoch"] for r in self.reports()]


def test_trial_params_and_ids(tmp_path) -> None:
    spec = tiny_spec(tmp_path)
    params = parse_trial_params("init=random,seed=7,lora.rank=2,train.lr=1e-3")
    assert params == {"init": "random", "seed": 7, "lora.rank": 2, "train.lr": 1e-3}
    tspec, bspec = trial_spec(spec, params)
    assert (tspec.lora.init, tspec.seed, tspec.lora.rank, tspec.train.lr) == ("random", 7, 2, 1e-3)
    assert bspec.name == "tiny-blip2"
    assert trial_id(params) == trial_id(dict(reversed(list(params.items()))))
    assert "/" not in trial_id({"x": "a/b"})


def test_schedule_and_deepspeed_config(tmp_path) -> None:
    f = lr_lambda(100, 10, "cosine")
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    assert lr_lambda(100, 0, "linear")(50) == pytest.approx(0.5)
    spec = tiny_spec(tmp_path, zero={"stage": 3, "offload_optimizer": "cpu"}, grad_accum=2, precision="bf16")
    cfg = deepspeed_config(spec.train, world_size=2, on_gpu=False)
    assert (
        cfg["zero_optimization"]["stage"] == 3
        and cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    )
    assert cfg["train_batch_size"] == 8 * 2 * 2
    assert not cfg["bf16"]["enabled"]  # fp32 on CPU whatever the spec asks
    assert deepspeed_config(spec.train, 1, on_gpu=True)["bf16"]["enabled"]


def _run(spec, params, log: EpochLog | None = None):
    trainer = build_trainer(spec, params, callbacks=[log.callback] if log else None, progress=False)
    return trainer.fit()


def _reports(result) -> list[dict]:
    snap = json.loads((Path(result.path) / "checkpoint_manager_snapshot.json").read_text())
    return [c["metrics"] for c in snap["checkpoint_results"]]


@pytest.mark.slow
def test_two_worker_zero2_trial_learns_and_saves_a_loadable_adapter(ray_local, tmp_path) -> None:
    spec = tiny_spec(tmp_path, zero={"stage": 2}, epochs=2)
    spec.resources.workers_per_trial = 2
    spec.eval.final_metrics = ["rouge_l"]
    log = EpochLog(str(tmp_path / "reports.jsonl"))
    result = _run(spec, {"init": "gap", "seed": 42}, log)
    assert result.error is None
    reports = log.reports()
    assert [r["epoch"] for r in reports] == [0, 1, 2]
    at_init, first, last = reports
    # epoch 0: the model at init, evaluated before any step (no training figures), with the init checks
    assert "train_loss" not in at_init and "samples_per_s" not in at_init and "val_cider" in at_init
    assert [r["epoch"] for r in _reports(result)] == [1, 2]  # checkpoints kept: the last 2
    assert "val_rouge_l" not in first and last["val_rouge_l"] >= 0  # final_metrics: at the last report only
    for key in (
        "train_loss",
        "val_loss",
        "val_bleu4",
        "val_cider",
        "lr",
        "samples_per_s",
        "tokens_per_s",
        "peak_memory_mb",
    ):
        assert key in last and last[key] == last[key], key  # present, not NaN
    assert last["val_loss"] < first["val_loss"] or last["train_loss"] < first["train_loss"]
    assert not first["init_checks"]  # the init report goes with the epoch-0 report only
    checks = json.loads(at_init["init_checks"])
    assert checks["checks"]["passed"] and checks["checks"]["max_abs_logit_diff"] == 0.0
    assert checks["alignment_summary"]["min"] >= 1 - 1e-6

    from peft import PeftModel

    from gapinit_ray.backbones import load_backbone
    from gapinit_ray.trial import prepare_backbone

    tspec, bspec = trial_spec(spec, {"init": "gap", "seed": 42})
    base = load_backbone(bspec.name, path=prepare_backbone(tspec, bspec, progress=False))
    with result.checkpoint.as_directory() as d:
        model = PeftModel.from_pretrained(base.model, os.path.join(d, ADAPTER_DIR))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.isfinite(p).all() for p in lora_b)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_A" in n)  # A moved off 0
    captions = json.loads(
        (
            Path(spec.storage)
            / spec.name
            / "captions"
            / trial_id({"init": "gap", "seed": 42})
            / "epoch_2"
            / "captions.json"
        ).read_text()
    )
    assert len(captions) == 6


@pytest.mark.slow
def test_one_worker_zero3_trial(ray_local, tmp_path) -> None:
    spec = tiny_spec(tmp_path, zero={"stage": 3}, epochs=1)
    result = _run(spec, {"init": "random", "seed": 1})
    assert result.error is None
    reports = _reports(result)
    assert [r["epoch"] for r in reports] == [0, 1]  # epoch 0 evaluated under ZeRO-3 before any step
    assert reports[1]["train_loss"] > 0 and "val_cider" in reports[0] and "val_cider" in reports[1]


def _train_workers() -> list[psutil.Process]:
    me = psutil.Process()
    out = []
    for p in psutil.process_iter(["cmdline", "name"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "RayTrainWorker" in cmd and p.pid != me.pid:
            out.append(p)
    return out


@pytest.mark.slow
def test_killed_train_worker_resumes_from_checkpoint(ray_local, tmp_path) -> None:
    spec = tiny_spec(tmp_path, epochs=3, max_steps_per_epoch=6)
    log = EpochLog(str(tmp_path / "epochs.log"))
    box: dict = {}
    thread = threading.Thread(
        target=lambda: box.setdefault("result", _run(spec, {"init": "gap", "seed": 3}, log))
    )
    thread.start()
    deadline = time.time() + 300
    while 1 not in log.epochs() and time.time() < deadline:  # wait for the epoch-1 checkpoint
        time.sleep(0.2)
    victims = _train_workers()
    assert victims, "no Ray Train worker process found"
    killed = victims[0].pid
    os.kill(killed, 9)
    thread.join(timeout=600)
    result = box["result"]
    assert result.error is None
    epochs = log.epochs()
    assert epochs == [0, 1, 2, 3], epochs  # each once (epoch 0 too: the restart resumed from epoch 1)
    assert killed not in [p.pid for p in _train_workers()]


@pytest.mark.slow
def test_a_member_held_at_its_rung_goes_on_in_the_same_run_with_a_restarts_results(
    ray_local, tmp_path
) -> None:
    """Seed-group rungs inside a Train run: a member whose sibling is training holds its run at the
    rung (neither ends nor goes on) until the group is decided, then goes on in the same run, with the
    numbers a restart from the rung's checkpoint gives."""
    from gapinit_ray.seedgroup.core import RungBook, Schedule
    from gapinit_ray.seedgroup.slots import start_slots
    from gapinit_ray.seedgroup.state import StateWriter, state_path
    from gapinit_ray.seedgroup.trial_side import MemberRun
    from gapinit_ray.trial import sweep_dir

    ray = ray_local
    params = {"init": "gap", "seed": 5}
    tid = trial_id(params)
    spec = tiny_spec(tmp_path, epochs=2)
    # restarted at the rung: one Train run to epoch 1, a second one from its checkpoint to the end
    for stop_at in (1, None):
        result = build_trainer(spec, params, progress=False, stop_at=stop_at).fit()
        assert result.error is None
    restarted = _reports(result)

    def runs(s) -> list[tuple[int, float | None]]:
        lines = (sweep_dir(s) / "captions" / tid / "train_runs.jsonl").read_text().splitlines()
        return [(r["start_epoch"], r["stop_at"]) for r in map(json.loads, lines)]

    assert runs(spec) == [(0, 1), (1, None)]
    assert [r["epoch"] for r in restarted] == [1, 2]

    # held: the member's group is T1 (this run) and T2, which holds a Train slot and is training.
    # Twice: as it is, and with the worker killed while it holds (Ray Train restarts it from the rung's
    # checkpoint; the scheduler has the rung's report, so the restarted run holds again instead of
    # reporting it a second time, and goes on when the group is promoted)
    from gapinit_ray.faults import fired

    gate = start_slots("test-hold-slots", 2)
    ray.get(gate.acquire.remote("sibling", "g", False, "T2"))
    ray.get(gate.started.remote("T2"))
    for name, faults in (("promoted", []), ("killed-while-held", ["hold"])):
        held = spec.model_copy(update={"name": name})
        held.resources.max_failures = 0
        # this test plays the scheduler: the one state writer, over a book of the group T1, T2
        state = state_path(tmp_path / name)
        writer = StateWriter(state)
        schedule = Schedule(max_t=2, grace_period=1, reduction_factor=2, metric="m", mode="max", group_size=2)
        book = RungBook(schedule, sink=writer.append)
        writer.start(book)
        book.add("T1", "g")
        book.add("T2", "g")
        writer.flush(book)
        log = EpochLog(str(tmp_path / f"{name}_epochs.log"))
        trainer = build_trainer(
            held,
            params,
            callbacks=[log.callback],
            progress=False,
            stop_at=1,
            member=MemberRun(str(state), "T1", "test-hold-slots"),
            faults=faults,
        )
        box: dict = {}
        thread = threading.Thread(target=lambda box=box, trainer=trainer: box.setdefault("r", trainer.fit()))
        thread.start()
        deadline = time.time() + 300
        while log.epochs() != [0, 1] and time.time() < deadline:
            time.sleep(0.2)
        assert log.epochs() == [0, 1]
        book.report("T1", 1, 0.1)  # the scheduler recorded T1 at the rung; T2 has yet to report
        writer.flush(book)
        out_dir = str(sweep_dir(held) / "captions" / tid)
        deadline = time.time() + 120
        while faults and len(runs(held)) < 2 and time.time() < deadline:  # killed, restarted
            time.sleep(0.2)
        time.sleep(8)
        assert thread.is_alive() and log.epochs() == [0, 1]  # holding: neither ended nor went on
        assert book.report("T2", 1, 0.2) == "CONTINUE"  # T2 reported; the group is promoted
        writer.flush(book)
        thread.join(timeout=300)
        assert box["r"].error is None
        continued = _reports(box["r"])
        assert log.epochs() == [0, 1, 2]  # each once: the rung's report was not repeated
        if faults:
            assert fired(out_dir) == ["hold"]
            assert runs(held) == [(0, 1), (1, 1)]  # the restart, from the rung's checkpoint
        else:
            assert runs(held) == [(0, 1)]  # one Train run
        assert [r["epoch"] for r in continued] == [1, 2]
        for a, b in zip(restarted, continued, strict=True):
            # same seed, same data order, same dropout stream: the same numbers either way
            for key in ("train_loss", "val_loss", "val_cider"):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (name, key, a["epoch"])
    ray.kill(gate)


def _in_process_ctx(tmp_path: Path, params: dict, trial_id: str, *, ctx_over: dict, **train_over):
    """A TrialContext for running a TrialWorker in this process (one rank, gloo on a free port), on a
    tiny unpretrained backbone: these tests exercise the worker's restart branches, not the model."""
    import socket

    from gapinit_ray.train import TrialContext
    from gapinit_ray.trial import prepare_artifact, prepare_backbone

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    spec = tiny_spec(tmp_path, **train_over)
    spec.backbones[0].pretrain = False
    tspec, bspec = trial_spec(spec, params)
    path = prepare_backbone(tspec, bspec, progress=False)
    return TrialContext(
        spec=tspec,
        backbone=bspec,
        backbone_path=path,
        artifact_path=prepare_artifact(tspec, bspec, path, progress=False, use_ray=False),
        trial_id=trial_id,
        out_dir=str(tmp_path / "out"),
        **ctx_over,
    )


@pytest.mark.slow
def test_a_run_restarted_at_its_rung_reports_the_checkpoints_numbers_again(tmp_path) -> None:
    """A Train run that restarts from a checkpoint already at its rung (a worker died while the run
    held there, or the driver died right after the report) reports that checkpoint's metrics again,
    the same numbers, without training or evaluating (this branch once crashed on a missing timer)."""
    import shutil

    from ray.train import Checkpoint

    from gapinit_ray.train import TrialWorker

    # the branch, not the model, is under test
    ctx = _in_process_ctx(tmp_path, {"init": "gap", "seed": 5}, "held", ctx_over={"stop_at": 1}, epochs=2)
    first: list[dict] = []
    kept = tmp_path / "ckpt"

    def report(metrics, checkpoint=None):
        first.append(metrics)
        if checkpoint is not None:
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(checkpoint.path, kept)

    TrialWorker(ctx, report, lambda: None).run()
    assert [m["epoch"] for m in first] == [0, 1]  # epoch 0, then the rung, where the run ends
    again: list[tuple[dict, object]] = []
    TrialWorker(
        ctx, lambda m, checkpoint=None: again.append((m, checkpoint)), lambda: Checkpoint(str(kept))
    ).run()
    assert len(again) == 1
    metrics, checkpoint = again[0]
    assert checkpoint is None and metrics == first[1]  # the very numbers of the epoch-1 report


@pytest.mark.slow
def test_a_restart_from_a_checkpoint_whose_report_was_lost_reports_it_again(tmp_path) -> None:
    """The driver (with the Train controller) killed between a checkpoint's upload and its report's
    delivery: the results store lacks that epoch's row. The run restarted from the checkpoint reports
    it again, the very numbers, then trains on; a restart whose row the store has does not repeat it.
    (Found by the sequential driver-kill test: a trial's epoch-0 row missing after resume.)"""
    import shutil

    from ray.train import Checkpoint

    from gapinit_ray.results import ResultsStore
    from gapinit_ray.train import TrialWorker

    params = {"init": "random", "seed": 5}
    ctx = _in_process_ctx(
        tmp_path, params, "lost", ctx_over={"results_store": True}, epochs=1, max_steps_per_epoch=2
    )
    tspec = ctx.spec
    first: list[dict] = []
    kept = tmp_path / "ckpt0"

    def report(metrics, checkpoint=None):
        first.append(metrics)
        if checkpoint is not None and not kept.exists():  # the epoch-0 checkpoint
            shutil.copytree(checkpoint.path, kept)

    TrialWorker(ctx, report, lambda: None).run()
    assert [m["epoch"] for m in first] == [0, 1] and kept.exists()

    def restart() -> list[tuple[dict, object]]:
        got: list[tuple[dict, object]] = []
        TrialWorker(
            ctx, lambda m, checkpoint=None: got.append((m, checkpoint)), lambda: Checkpoint(str(kept))
        ).run()
        return got

    lost = restart()  # the store has no row of this trial: epoch 0's report is delivered again
    assert [m["epoch"] for m, _ in lost] == [0, 1]
    same = json.dumps(lost[0][0], sort_keys=True, default=str) == json.dumps(
        first[0], sort_keys=True, default=str
    )
    assert (
        lost[0][1] is None and same
    )  # the very numbers (NaN alignment of B = 0 included), no new checkpoint
    ResultsStore(tspec.storage, tspec.name).write_report("lost", {"init": "random", "seed": 5}, first[0])
    kept_row = restart()  # the store has it: not repeated
    assert [m["epoch"] for m, _ in kept_row] == [1]
