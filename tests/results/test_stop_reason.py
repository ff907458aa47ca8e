"""Stop reasons: one typed value, the same text written by the sweep and parsed by the readers."""

from __future__ import annotations

import pyarrow as pa
import pytest

from gapinit_ray.results.aggregate import aggregate
from gapinit_ray.results.stop_reason import StopReason, asha_stop, error_stop, parse, seed_group_stop
from gapinit_ray.schedulers import asha_milestones


@pytest.mark.parametrize(
    "reason",
    [
        seed_group_stop(0, 2.0),
        seed_group_stop(2, 4.0),
        asha_stop(3.0, [1.0, 2.0]),
        error_stop(2, 1),
        error_stop(1, 0),
        StopReason("asha", rung=1),
    ],
)
def test_text_parses_back_to_the_same_value(reason: StopReason) -> None:
    assert parse(reason.text()) == reason


def test_forms() -> None:
    assert seed_group_stop(0, 2.0).text() == "seed-group asha rung 1 (epoch 2)"
    # per-trial ASHA: the rung is the highest milestone the trial's last report reached
    assert asha_stop(3.0, asha_milestones(1, 9, 3)).text() == "asha rung 2 (epoch 3)"
    assert error_stop(2, 1).text() == "error after 2 attempts (resources.max_failures=1)"
    assert error_stop(1, 0).text() == "error after 1 attempt (resources.max_failures=0)"
    assert parse(None) is None and parse("") is None and parse("stopped by a person") is None
    assert parse("seed-group asha rung 3").seed_group and not parse("asha rung 3").seed_group


def test_the_aggregate_table_labels_what_the_sweep_writes() -> None:
    metrics = pa.table(
        {
            "trial_id": ["a", "b", "c"],
            "init": ["gap", "gap", "gap"],
            "epoch": [2.0, 2.0, 3.0],
            "val_cider": [0.5, 0.6, 0.7],
        }
    )
    trials = pa.table(
        {
            "trial_id": ["a", "b", "c"],
            "status": ["STOPPED", "STOPPED", "TERMINATED"],
            "stop_reason": [seed_group_stop(0, 2.0).text(), asha_stop(2.0, [2.0]).text(), None],
            "rung_reached": pa.array([1, 1, None], pa.int32()),
        }
    )
    (row,) = aggregate(metrics, by=["init"], metric="val_cider", trials=trials).to_pylist()
    assert row["stopped"] == "1 stopped at rung 1; 1 stopped at rung 1 (seed-group)"
