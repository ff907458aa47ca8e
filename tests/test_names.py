"""gapinit_ray.names: the names several modules share agree with the models and registries using them."""

from __future__ import annotations

from typing import get_args

from gapinit_ray import names
from gapinit_ray.results.store import METRICS
from gapinit_ray.schedulers import SCHEDULER_KINDS
from gapinit_ray.spec import SchedulerSpec


def test_metric_names_have_one_form() -> None:
    assert names.val_metric("cider") == names.DEFAULT_METRIC == "val_cider"
    assert names.metric_of_val(names.val_metric("bleu4")) == "bleu4"
    assert names.split_metric("nocaps", "cider") == "nocaps_cider"
    assert {names.val_metric(m) for m in names.CAPTION_METRICS} <= set(METRICS)


def test_every_scheduler_name_the_spec_accepts_builds_its_scheduler() -> None:
    """Each name the spec accepts is one the factory builds, as the scheduler it means (not a check of
    the name tuple against itself), and the factory refuses a name the spec would refuse."""
    import pytest
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    from gapinit_ray.schedulers import make_scheduler
    from gapinit_ray.seedgroup.tune import SeedGroupASHA

    expected = {
        names.FIFO: FIFOScheduler,
        names.ASHA: AsyncHyperBandScheduler,
        names.SEED_GROUP_ASHA: SeedGroupASHA,
    }
    accepted = get_args(SchedulerSpec.model_fields["type"].annotation)
    assert set(accepted) == set(expected) == set(SCHEDULER_KINDS)
    for name in accepted:
        assert SchedulerSpec(type=name).type == name
        built = make_scheduler(name, metric="val_cider", mode="max", max_t=3, group_size=2)
        assert type(built) is expected[name], name
    assert SchedulerSpec().type == names.SEED_GROUP_ASHA
    with pytest.raises(ValueError, match="unknown scheduler kind 'hyperband'"):
        make_scheduler("hyperband", metric="val_cider", mode="max", max_t=3)
