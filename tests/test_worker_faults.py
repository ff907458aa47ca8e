"""A Train worker killed (SIGKILL) at each point of a trial's life that has its own branch: Ray Train
restarts the worker group from the latest checkpoint (``resources.worker_restarts``; no Tune retry:
``resources.max_failures`` is 0 here), every epoch is reported once, and the numbers equal an unkilled
run's with the same seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gapinit_ray.faults import fired, parse
from gapinit_ray.plan import trial_id
from gapinit_ray.trial import build_trainer, sweep_dir

from .test_train import EpochLog, tiny_spec

KEYS = ("train_loss", "val_loss", "val_cider", "val_bleu4", "align_cos_mean", "lora_A_norm")


def _run(spec, params, faults, tmp_path: Path, tag: str):
    log = EpochLog(str(tmp_path / f"{tag}.jsonl"))
    trainer = build_trainer(spec, params, callbacks=[log.callback], progress=False, faults=faults)
    result = trainer.fit()
    assert result.error is None, result.error
    out_dir = sweep_dir(spec) / "captions" / trial_id(params)
    runs = [json.loads(x) for x in (out_dir / "train_runs.jsonl").read_text().splitlines()]
    return log.reports(), runs, fired(str(out_dir))


def _same_numbers(killed: list[dict], clean: list[dict]) -> None:
    assert [r["epoch"] for r in killed] == [r["epoch"] for r in clean]
    for a, b in zip(killed, clean, strict=True):
        for key in KEYS:
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (key, a["epoch"])


def test_fault_points_parse() -> None:
    assert parse(" setup, mid_epoch:2@1 ,") == ["setup", "mid_epoch:2@1"]
    with pytest.raises(ValueError, match="unknown fault point 'nap'"):
        parse("nap")


@pytest.mark.slow
def test_a_worker_killed_at_every_point_of_a_trial_in_turn(clean_tiny_trial, tmp_path) -> None:
    """One trial, its worker killed four times: before the first report, right after the epoch-1
    report, in the middle of epoch 2, and during the final evaluation."""
    # the unkilled run (same spec and seed, same storage: the same data and GapArtifact)
    params, clean = clean_tiny_trial.params, clean_tiny_trial.reports
    assert clean_tiny_trial.result.error is None
    assert [r["epoch"] for r in clean] == [0, 1, 2]

    spec = clean_tiny_trial.spec.model_copy(update={"name": "killed"}, deep=True)
    spec.resources.max_failures = 0
    spec.resources.worker_restarts = 4
    faults = ["setup", "after_report:1", "mid_epoch:2", "final_eval"]
    killed, runs, points = _run(spec, params, faults, tmp_path, "killed")
    assert points == ["after_report_1", "final_eval", "mid_epoch_2", "setup"]  # each fired, once
    # five worker groups: from scratch twice (the kill before any report left no checkpoint), then
    # three times from the epoch-1 checkpoint
    assert [(r["start_epoch"], r["start_step"]) for r in runs] == [(0, 0), (0, 0), (1, 0), (1, 0), (1, 0)]
    _same_numbers(killed, clean)  # every epoch once, the unkilled run's numbers


@pytest.mark.slow
def test_two_workers_of_one_trial_killed_one_after_the_other(ray_local, tmp_path) -> None:
    params = {"init": "gap", "seed": 4}
    clean_spec = tiny_spec(tmp_path, epochs=2)
    clean_spec.resources.workers_per_trial = 2
    clean, _, _ = _run(clean_spec, params, [], tmp_path, "clean")

    spec = clean_spec.model_copy(update={"name": "killed"}, deep=True)
    spec.resources.max_failures = 0
    # rank 1 dies mid-epoch 1 (the group restarts from the epoch-0 checkpoint), then rank 0 right
    # after the epoch-1 report (from the epoch-1 checkpoint); worker_restarts keeps its default, 3
    killed, runs, points = _run(spec, params, ["mid_epoch:1@1", "after_report:1@0"], tmp_path, "killed")
    assert points == ["after_report_1_rank0", "mid_epoch_1_rank1"]
    assert [(r["start_epoch"], r["start_step"]) for r in runs] == [(0, 0), (0, 0), (1, 0)]
    _same_numbers(killed, clean)
