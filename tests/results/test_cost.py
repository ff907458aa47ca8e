"""Cost accounting: device-seconds per report measured in the Train workers (compared with what psutil
sees of those processes), totals per arm and sweep, and ASHA's saving by hand."""

from __future__ import annotations

import pyarrow as pa
import pytest

from gapinit_ray.results.cost import cost_summary, format_cost, trial_costs


def _metrics(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def test_asha_saving_by_hand() -> None:
    # trial a: trained to max_t = 4; trial b: stopped at epoch 1 by seed-group ASHA; c: failed at 2
    rows = []
    for tid, init, last, per_epoch in (
        ("a", "gap", 4, 10.0),
        ("b", "random", 1, 12.0),
        ("c", "random", 2, 8.0),
    ):
        rows.append(
            {
                "trial_id": tid,
                "init": init,
                "epoch": 0.0,
                "device_s": 3.0,
                "wall_s": 2.0,
                "samples": 0.0,
                "tokens": 0.0,
            }
        )
        for e in range(1, last + 1):
            rows.append(
                {
                    "trial_id": tid,
                    "init": init,
                    "epoch": float(e),
                    "device_s": per_epoch,
                    "wall_s": 5.0,
                    "samples": 64.0,
                    "tokens": 640.0,
                }
            )
    trials = pa.Table.from_pylist(
        [
            {"trial_id": "a", "stop_reason": None},
            {"trial_id": "b", "stop_reason": "seed-group asha rung 0 (epoch 1)"},
            {"trial_id": "c", "stop_reason": "error after 2 attempts (resources.max_failures=1)"},
        ]
    )
    costs = {c.trial_id: c for c in trial_costs(_metrics(rows), trials, 4.0, ["init"])}
    assert costs["a"].device_s == 3 + 4 * 10 and costs["a"].saved_device_s == 0
    assert costs["b"].device_s == 3 + 12 and costs["b"].saved_device_s == 12 * 3  # 3 epochs not trained
    assert costs["c"].saved_device_s == 0  # an error is not a saving
    summary = cost_summary(list(costs.values()))
    used = 43 + 15 + 3 + 16
    assert summary["sweep"]["device_s"] == used
    assert summary["sweep"]["asha_saved_share"] == pytest.approx(36 / (used + 36))
    assert summary["arms"][("random",)]["samples"] == 64 * 3
    text = format_cost(summary, ["init"], "CPU")
    assert "ASHA stopped 1 trial(s) early: saved 36 s CPU (32 % of" in text


@pytest.mark.slow
def test_device_seconds_match_what_psutil_measures_of_the_train_workers(clean_tiny_trial) -> None:
    # the trial ran with psutil sampling its Ray Train worker's CPU time (see conftest.clean_tiny_trial)
    result, reports, seen = clean_tiny_trial.result, clean_tiny_trial.reports, clean_tiny_trial.cpu_s
    assert result.error is None
    ours = sum(r["device_s"] for r in reports)
    measured = sum(seen.values())
    assert len(seen) == 1 and measured > 0
    print(f"device-seconds: reports {ours:.2f}, psutil {measured:.2f}, ratio {ours / measured:.3f}")
    assert ours == pytest.approx(measured, rel=0.10), (ours, measured)
    assert sum(r["samples"] for r in reports) == 2 * 4 * 8  # 2 epochs x 4 steps x batch 8
    assert all(r["wall_s"] > 0 for r in reports)
