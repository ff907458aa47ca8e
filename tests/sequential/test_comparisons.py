"""The sequential phase's bookkeeping, pure: comparisons from a spec, their states from hand-made trial
outcomes, the next round's trials. No Ray, no training."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gapinit_ray.errors import SpecError
from gapinit_ray.results import anytime
from gapinit_ray.results.looks import SequentialLog
from gapinit_ray.results.looks_text import looks_table, plot_looks, verdict_table
from gapinit_ray.sequential import comparisons as C
from gapinit_ray.spec import spec_from_dict
from gapinit_ray.spec.sequential import seed_sequence

from ..conftest import QUICKSTART


def _spec(**seq):
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["search"] = {"init": ["gap", "random", "mica"], "lora.rank": [1, 4], "seed": [1, 2, 3]}
    raw["scheduler"] = {"type": "fifo", "metric": "val_cider", "mode": "max"}
    raw["sequential"] = {"max_seeds": 8, **seq}
    return spec_from_dict(raw)


def _outcomes(spec, values: dict[tuple[str, int], list[float]]) -> dict[str, C.Outcome]:
    """(init, rank) -> value per seed, in seed order."""
    out = {}
    for (init, rank), vs in values.items():
        for seed, v in zip(seed_sequence(spec), vs, strict=False):
            tid = C.Comparison("init", init, init, (), (("init", init), ("lora.rank", rank)), ()).trial(
                "a", seed
            )
            out[tid] = C.Outcome(C.DONE, v) if not isinstance(v, str) else C.Outcome(v)
    return out


def test_comparisons_are_the_first_arm_against_each_other_within_each_stratum() -> None:
    spec = _spec()
    names = [c.name for c in C.comparisons(spec)]
    assert names == [
        "init=gap vs init=random (lora.rank=1)",
        "init=gap vs init=mica (lora.rank=1)",
        "init=gap vs init=random (lora.rank=4)",
        "init=gap vs init=mica (lora.rank=4)",
    ]
    spec = _spec(compare=["init=mica", "init=gap"])
    assert [c.name for c in C.comparisons(spec)] == [
        "init=mica vs init=gap (lora.rank=1)",
        "init=mica vs init=gap (lora.rank=4)",
    ]
    # the seeds every arm runs: search.seed first, then the next integers, up to max_seeds
    assert seed_sequence(spec) == [1, 2, 3, 4, 5, 6, 7, 8]


def test_states_decisions_and_next_round() -> None:
    spec = _spec(compare=["init=gap", "init=random", "init=mica"])
    noisy = [0.50, 0.61, 0.47, 0.55]
    values = {
        ("gap", 1): noisy,
        ("random", 1): [0.52, 0.58, 0.49, 0.53],  # no clear difference: stays open
        ("mica", 1): [0.10, 0.11, 0.09, 0.10],  # far below: decided as soon as the CS allows
        ("gap", 4): noisy[:3],
        ("random", 4): [C.STOPPED, C.STOPPED, C.STOPPED],  # stopped at a rung: not compared
        ("mica", 4): [0.1, C.ERROR],  # a failed trial ends the prefix: open, says why
    }
    spec_alpha = C.alpha_each(spec, 4)
    assert spec_alpha == pytest.approx(0.05 / 4)
    states = {s.comparison.name: s for s in C.evaluate(spec, _outcomes(spec, values))}
    clear = states["init=gap vs init=mica (lora.rank=1)"]
    unclear = states["init=gap vs init=random (lora.rank=1)"]
    assert unclear.status == C.OPEN and unclear.n == 4 and [lk.n for lk in unclear.looks] == [2, 3, 4]
    assert unclear.seeds == [1, 2, 3, 4]
    assert unclear.diffs == pytest.approx(
        [a - b for a, b in zip(noisy, [0.52, 0.58, 0.49, 0.53], strict=True)]
    )
    expected = anytime.looks(clear.diffs, alpha=spec_alpha, min_seeds=3, g=C.prior_scale(spec))
    assert [lk.decision for lk in clear.looks] == [lk.decision for lk in expected]
    if clear.status == C.DECIDED:
        assert clear.verdict == anytime.A_HIGHER and clear.n == clear.looks[-1].n
    stopped = states["init=gap vs init=random (lora.rank=4)"]
    assert stopped.status == C.NOT_COMPARED and "stopped by the scheduler" in stopped.reason
    failed = states["init=gap vs init=mica (lora.rank=4)"]
    assert failed.status == C.FAILED and failed.n == 1 and "failed" in failed.reason
    # the next round: seed 5 for both arms of every open comparison, gap's trial once
    todo = C.next_trials(spec, list(states.values()), _outcomes(spec, values))
    want = {("gap", 1, 5), ("random", 1, 5)} | (
        set() if clear.status == C.DECIDED else {("mica", 1, clear.n + 1)}
    )
    assert {(p["init"], p["lora.rank"], p["seed"]) for p in todo} == want


def test_a_huge_clear_difference_is_decided_early_and_a_zero_one_is_not() -> None:
    spec = _spec(compare=["init=gap", "init=mica"], min_effect=0.05)
    gap = [0.80, 0.84, 0.79, 0.83, 0.81, 0.82, 0.80, 0.85]
    values = {("gap", r): gap for r in (1, 4)}
    values[("mica", 1)] = [0.24] * 8  # does not move from its epoch-0 value
    values[("mica", 4)] = [v + 0.001 * (-1) ** i for i, v in enumerate(gap)]  # the same within noise
    states = {s.comparison.name: s for s in C.evaluate(spec, _outcomes(spec, values))}
    clear = states["init=gap vs init=mica (lora.rank=1)"]
    assert clear.status == C.DECIDED and clear.verdict == anytime.A_HIGHER
    assert clear.n < 8  # stopped before the maximum: it gets no more seeds
    same = states["init=gap vs init=mica (lora.rank=4)"]
    assert same.verdict in (anytime.EQUIVALENT, anytime.UNRESOLVED, anytime.OPEN)
    assert same.verdict != anytime.A_HIGHER and same.verdict != anytime.B_HIGHER


def test_every_verdict_has_its_live_line_and_its_text(tmp_path: Path) -> None:
    """The driver's line after a look and the record's text, for each kind of verdict (an equivalent
    one once crashed the live line: it needs δ)."""
    from gapinit_ray.results.looks_text import verdict_text
    from gapinit_ray.sequential.driver import look_line

    spec = _spec(compare=["init=gap", "init=random", "init=mica"], min_effect=0.05, max_seeds=20)
    gap = [0.80 + 0.01 * ((i * 7) % 5) for i in range(20)]
    values = {("gap", 1): gap, ("random", 1): [v + 0.001 * (-1) ** i for i, v in enumerate(gap)]}
    values[("mica", 1)] = [0.24] * 20
    values[("gap", 4)], values[("random", 4)] = gap[:3], [C.STOPPED] * 3
    values[("mica", 4)] = [0.5, C.ERROR]
    states = C.evaluate(spec, _outcomes(spec, values))
    verdicts = {s.verdict for s in states}
    assert {anytime.EQUIVALENT, anytime.A_HIGHER, C.NOT_COMPARED} <= verdicts
    for st in states:
        line = look_line(st, 0.05, "max")
        assert line.startswith(f"sequential: {st.comparison.name}: ")
    log = SequentialLog(tmp_path)
    log.record(states, {"min_effect": 0.05, "mode": "max"})
    texts = [verdict_text(v, 0.05, "max") for v in log.verdicts]
    assert any(t.startswith("equivalent within ±0.05, decided at") for t in texts)
    assert any(t.startswith("gap higher (better), decided at") for t in texts)
    assert any(t.startswith("not compared: trial") for t in texts)
    assert any(t.startswith("open: trial") for t in texts)


def test_seeds_finished_out_of_order_wait_for_their_predecessors() -> None:
    spec = _spec(compare=["init=gap", "init=random"])
    values = {("gap", 1): [0.5, 0.6, 0.5, 0.7], ("random", 1): [0.4, 0.5, C.PENDING, 0.6]}
    (st, _) = C.evaluate(spec, _outcomes(spec, values))
    assert st.n == 2 and st.seeds == [1, 2]  # seed 4 is done, seed 3 is not: only the prefix counts


def test_max_seeds_and_budget_end_open_comparisons_unresolved(tmp_path: Path) -> None:
    spec = _spec(compare=["init=gap", "init=random"], max_seeds=4)
    values = {("gap", r): [0.5, 0.6, 0.5, 0.7] for r in (1, 4)}
    values[("random", 1)] = [0.52, 0.58, 0.49, 0.69]
    values[("random", 4)] = [0.52, 0.58, 0.49]
    states = C.evaluate(spec, _outcomes(spec, values), budget_ended=True)
    by = {s.comparison.name: s for s in states}
    assert by["init=gap vs init=random (lora.rank=1)"].status == C.AT_MAX
    assert by["init=gap vs init=random (lora.rank=4)"].status == C.AT_BUDGET
    assert all(s.verdict == anytime.UNRESOLVED for s in states)
    assert C.next_trials(spec, states, _outcomes(spec, values)) == []
    # the record and its text: every look, every verdict
    log = SequentialLog(tmp_path)
    log.record(states, {"metric": "val_cider", "alpha": 0.05, "comparisons": 2, "seeds_per_arm": {}})
    again = SequentialLog.read(tmp_path)
    assert again is not None and len(again.looks) == 3 + 2 and len(again.verdicts) == 2
    text = verdict_table(again)
    assert "unresolved at max_seeds" in text and "unresolved at budget" in text
    assert looks_table(again).count("init=gap vs init=random") == 5
    assert all(0 < lk["p_anytime"] <= 1 for lk in again.looks)
    png = plot_looks(again)
    assert png is not None and png.startswith(b"\x89PNG")


def test_a_corrupt_record_is_one_error_naming_it(tmp_path: Path) -> None:
    from gapinit_ray.errors import GapinitError

    (tmp_path / "sequential.json").write_text("{not json")
    with pytest.raises(GapinitError, match=r"sequential\.json: cannot read"):
        SequentialLog(tmp_path)


@pytest.mark.parametrize(
    ("seq", "message"),
    [
        ({"alpha": 0}, "sequential.alpha: Input should be greater than 0"),
        ({"alpha": 1.5}, "sequential.alpha: Input should be less than 1"),
        ({"max_seeds": 4, "min_seeds": 6}, "sequential.max_seeds: 4 is below min_seeds 6"),
        ({"max_seeds": 2}, "is below the 3 seeds search.seed runs first"),
        ({"min_effect": 0}, "sequential.min_effect: Input should be greater than 0"),
        ({"min_effect": -0.1}, "sequential.min_effect: Input should be greater than 0"),
        ({"compare": ["init=gap", "init=lora"]}, "no trial has init=lora"),
        ({"compare": ["init=gap", "lora.rank=4"]}, "every arm must vary the same axis"),
        ({"compare": ["seed=1", "seed=2"]}, "seed is what is paired"),
        ({"compare": ["init=gap"]}, "at least two arms"),
        ({"budget_device_hours": 0}, "sequential.budget_device_hours: Input should be greater than 0"),
        ({"metric": "val_nope"}, "sequential.metric: 'val_nope' is never reported"),
    ],
)
def test_bad_sequential_sections_name_the_field(seq: dict, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        _spec(**seq)


def test_plain_asha_and_sampled_axes_are_refused() -> None:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["sequential"] = {"max_seeds": 6}
    raw["scheduler"]["type"] = "asha"
    with pytest.raises(SpecError, match=r"scheduler\.type asha stops single seeds"):
        spec_from_dict(raw)
    raw["scheduler"]["type"] = "fifo"
    raw["search"]["train.lr"] = {"loguniform": [1e-4, 1e-2]}
    with pytest.raises(SpecError, match="needs a grid search"):
        spec_from_dict(raw)
    assert anytime.describe_prior(C.prior_scale(_spec())).startswith("mixture of g = 0.5")
    assert anytime.describe_prior(C.prior_scale(_spec(prior_scale=2.0))) == "g = 2"
