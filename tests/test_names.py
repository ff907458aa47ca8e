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


def test_scheduler_names_are_the_spec_and_the_factory_ones() -> None:
    assert get_args(SchedulerSpec.model_fields["type"].annotation) == names.SCHEDULERS == SCHEDULER_KINDS
    assert SchedulerSpec().type == names.SEED_GROUP_ASHA
