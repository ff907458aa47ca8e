"""gapinit_ray.plan: a validated spec -> its trials, each trial's spec validated once per process."""

from __future__ import annotations

from pathlib import Path

import pytest

from gapinit_ray.plan import SEED_KEY, grid_points, params_of, plan, plan_trial, result_config, trial_spec
from gapinit_ray.results.store import group_key
from gapinit_ray.spec import SweepSpec, grid_size, spec_from_dict

from .test_sweep import sweep_raw


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts SweepSpec validations (every path to a validated spec goes through model_validate)."""
    calls = [0]
    original = SweepSpec.model_validate.__func__

    def counting(cls, *args, **kwargs):
        calls[0] += 1
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(SweepSpec, "model_validate", classmethod(counting))
    return calls


def test_plan_lists_every_grid_trial_with_its_ids(tmp_path: Path) -> None:
    spec = spec_from_dict(sweep_raw(tmp_path, name="planned"))
    trials = plan(spec)
    assert len(trials) == grid_size(spec) == len(grid_points(spec)) == 4
    assert len({t.trial_id for t in trials}) == 4
    by_init: dict[str, set[str]] = {}
    for t in trials:
        assert t.seed == t.params["seed"] == t.spec.seed
        assert t.spec.lora.init == t.params["init"] and t.backbone.key == spec.backbones[0].key
        assert t.group_id == group_key(result_config(spec, t.params))
        by_init.setdefault(t.params["init"], set()).add(t.group_id)
    # one group per configuration, shared by its seeds
    assert all(len(g) == 1 for g in by_init.values()) and len(set().union(*by_init.values())) == 2
    assert params_of({SEED_KEY: 2, "init": "gap"}, spec) == {"seed": 2, "init": "gap"}


def test_a_trial_is_validated_once_not_per_run_or_result(tmp_path: Path, validations: list[int]) -> None:
    spec = spec_from_dict(sweep_raw(tmp_path, name="once"))
    validations[0] = 0
    params = {"init": "random", "seed": 7}
    first = plan_trial(spec, params)
    once = validations[0]
    assert once >= 1
    # what a trial process and the driver's callback ask for, per Train run and per result
    for _ in range(20):
        assert trial_spec(spec, params) == (first.spec, first.backbone)
        assert result_config(spec, dict(reversed(params.items()))) == first.config
    assert validations[0] == once
    # a spec changed since is validated again
    spec.train.lr = 5e-3
    assert plan_trial(spec, params).spec.train.lr == 5e-3
    assert validations[0] > once


def test_trial_processes_take_the_drivers_plan_without_validating(
    tmp_path: Path, validations: list[int]
) -> None:
    """The trainable gets the driver's validated spec and plan (pickled, as ``tune.with_parameters``
    hands them over) and the Train worker its trial's validated specs (pickled, as Ray Train hands its
    ``train_loop_config`` over): neither validates a spec again."""
    import ray.cloudpickle as cloudpickle

    from gapinit_ray import plan as plan_module
    from gapinit_ray.plan import remember
    from gapinit_ray.train import TrialContext, TrialWorker

    spec = spec_from_dict(sweep_raw(tmp_path, name="handed"))
    trials = plan(spec)
    spec_there, trials_there = cloudpickle.loads(cloudpickle.dumps((spec, trials)))
    plan_module._PLANNED.clear()  # a fresh trial process
    validations[0] = 0
    remember(spec_there, trials_there)
    for t in trials:
        assert plan_trial(spec_there, dict(reversed(t.params.items()))) == t
    assert validations[0] == 0
    # a point off the grid (a sampled axis's value) is validated in the trial process, once
    off_grid = plan_trial(spec_there, {"init": "gap", "seed": 99})
    assert validations[0] >= 1 and off_grid.seed == 99

    validations[0] = 0
    t = trials[0]
    ctx = TrialContext(t.spec, t.backbone, None, None, t.trial_id, str(tmp_path / "out"))
    worker = TrialWorker(cloudpickle.loads(cloudpickle.dumps(ctx)), print, lambda: None, checkpoint_from=str)
    assert worker.spec == t.spec and worker.bspec == t.backbone
    assert validations[0] == 0
