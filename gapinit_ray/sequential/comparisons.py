"""Which comparisons a sequential spec asks for, and where each stands given the trials' outcomes.

Pure (no Ray, no I/O): :func:`comparisons` reads the spec; :func:`evaluate` takes each trial's outcome
(finished with a value, stopped by the scheduler, failed, not run yet) and returns every comparison's
looks (one per paired seed, in seed order, from :func:`gapinit_ray.results.anytime.looks`) and status;
:func:`next_trials` the trials of the next round. The same outcomes always give the same states, which
is why a resumed driver reaches the verdicts an uninterrupted one does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gapinit_ray.plan import grid_points, trial_id
from gapinit_ray.results import anytime
from gapinit_ray.results.looks import AT_BUDGET, AT_MAX, DECIDED, FAILED, NOT_COMPARED, OPEN
from gapinit_ray.spec import SweepSpec
from gapinit_ray.spec.sequential import arms, min_seeds, seed_sequence

# trial outcomes
DONE, STOPPED, ERROR, PENDING, NO_VALUE = "done", "stopped", "error", "pending", "no value"


@dataclass(frozen=True)
class Comparison:
    """Arm ``a`` against arm ``b`` (values of ``axis``) within one stratum of the other axes."""

    axis: str
    a: Any
    b: Any
    stratum: tuple[tuple[str, Any], ...]
    config_a: tuple[tuple[str, Any], ...]  # the arm's params without the seed
    config_b: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        where = f" ({', '.join(f'{k}={v}' for k, v in self.stratum)})" if self.stratum else ""
        return f"{self.axis}={self.a} vs {self.axis}={self.b}{where}"

    def params(self, arm: str, seed: int) -> dict[str, Any]:
        return {**dict(self.config_a if arm == "a" else self.config_b), "seed": seed}

    def trial(self, arm: str, seed: int) -> str:
        return trial_id(self.params(arm, seed))


@dataclass(frozen=True)
class Outcome:
    """A trial as the comparisons see it: ``status`` one of done / stopped / error / pending / no value,
    and its metric value at the last epoch when done."""

    status: str
    value: float | None = None


@dataclass
class State:
    """Where one comparison stands: its paired seeds and differences (a − b), its looks, status and
    verdict (an :mod:`~gapinit_ray.results.anytime` decision, ``unresolved`` or ``not compared``)."""

    comparison: Comparison
    seeds: list[int] = field(default_factory=list)
    diffs: list[float] = field(default_factory=list)
    looks: list[anytime.Look] = field(default_factory=list)
    status: str = OPEN
    verdict: str = anytime.OPEN
    reason: str = ""  # why it is not compared / failed: the trial concerned
    still_needed: float = math.nan  # open / unresolved: seeds the estimates say a verdict needs

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def last(self) -> anytime.Look | None:
        return self.looks[-1] if self.looks else None


def comparisons(spec: SweepSpec) -> list[Comparison]:
    """The first arm against each other arm, within every combination of the other (non-seed) axes,
    in grid order."""
    axis, values = arms(spec)
    configs: list[tuple[tuple[str, Any], ...]] = []
    for point in grid_points(spec):
        config = tuple((k, v) for k, v in sorted(point.items()) if k != "seed")
        if config not in configs:
            configs.append(config)

    def stratum(config: tuple) -> tuple:
        return tuple((k, v) for k, v in config if k != axis)

    def value(config: tuple) -> Any:
        return dict(config).get(axis)

    out = []
    for ca in configs:
        if value(ca) != values[0]:
            continue
        for b in values[1:]:
            for cb in configs:
                if value(cb) == b and stratum(cb) == stratum(ca):
                    out.append(Comparison(axis, values[0], b, stratum(ca), ca, cb))
    return out


def alpha_each(spec: SweepSpec, n_comparisons: int) -> float:
    assert spec.sequential is not None
    return anytime.alpha_each(spec.sequential.alpha, max(1, n_comparisons))


def prior_scale(spec: SweepSpec) -> float:
    assert spec.sequential is not None
    return spec.sequential.prior_scale or anytime.DEFAULT_PRIOR_SCALE


def evaluate(spec: SweepSpec, outcomes: dict[str, Outcome], *, budget_ended: bool = False) -> list[State]:
    """Every comparison's state from the trials' outcomes (trial id -> :class:`Outcome`; a trial not in
    it has not run). Seeds are paired in the fixed seed order; a comparison looks at the prefix of seeds
    both arms finished, so a seed finished out of order is looked at only when its predecessors are."""
    seq = spec.sequential
    assert seq is not None
    comps = comparisons(spec)
    alpha, g, low = alpha_each(spec, len(comps)), prior_scale(spec), min_seeds(spec)
    states = []
    for comp in comps:
        st = State(comp)
        blocked: tuple[str, str] | None = None  # (outcome status, trial id) that ends the prefix
        for seed in seed_sequence(spec):
            oa = outcomes.get(comp.trial("a", seed), Outcome(PENDING))
            ob = outcomes.get(comp.trial("b", seed), Outcome(PENDING))
            if oa.status == DONE and ob.status == DONE:
                st.seeds.append(seed)
                st.diffs.append(float(oa.value) - float(ob.value))  # type: ignore[arg-type]
                continue
            bad = next(
                ((o.status, comp.trial(arm, seed)) for arm, o in (("a", oa), ("b", ob)) if o.status != DONE)
            )
            blocked = bad
            break
        st.looks = anytime.looks(st.diffs, alpha=alpha, min_effect=seq.min_effect, min_seeds=low, g=g)
        decision = st.last.decision if st.last else anytime.OPEN
        if decision != anytime.OPEN:
            st.status, st.verdict = DECIDED, decision
            # the looks end at the decisive one: the seeds after it are not part of this comparison
            st.seeds, st.diffs = st.seeds[: st.last.n], st.diffs[: st.last.n]
            states.append(st)
            continue
        if st.last is not None:
            st.still_needed = anytime.seeds_still_needed(st.last, min_effect=seq.min_effect, g=g)
        if blocked is not None and blocked[0] == STOPPED:
            st.status, st.verdict = NOT_COMPARED, NOT_COMPARED
            st.reason = f"trial {blocked[1]} was stopped by the scheduler at a rung"
        elif blocked is not None and blocked[0] in (ERROR, NO_VALUE):
            st.status, st.verdict = FAILED, anytime.UNRESOLVED
            st.reason = (
                f"trial {blocked[1]} failed"
                if blocked[0] == ERROR
                else f"trial {blocked[1]} has no {metric(spec)} at epoch {spec.max_t}"
            )
        elif st.n >= seq.max_seeds:
            st.status, st.verdict = AT_MAX, anytime.UNRESOLVED
        elif budget_ended:
            st.status, st.verdict = AT_BUDGET, anytime.UNRESOLVED
        states.append(st)
    return states


def next_trials(spec: SweepSpec, states: list[State], outcomes: dict[str, Outcome]) -> list[dict[str, Any]]:
    """The params of the next round: for every open comparison, its next ``seeds_per_round`` seeds (up
    to ``max_seeds``) on both arms, each trial once, skipping trials already run (a shared first arm)."""
    seq = spec.sequential
    assert seq is not None
    seeds = seed_sequence(spec)
    todo: dict[str, dict[str, Any]] = {}
    for st in states:
        if st.status != OPEN:
            continue
        for seed in seeds[st.n : min(st.n + seq.seeds_per_round, seq.max_seeds)]:
            for arm in ("a", "b"):
                tid = st.comparison.trial(arm, seed)
                if outcomes.get(tid, Outcome(PENDING)).status == PENDING and tid not in todo:
                    todo[tid] = st.comparison.params(arm, seed)
    return list(todo.values())


def metric(spec: SweepSpec) -> str:
    assert spec.sequential is not None
    return spec.sequential.metric or spec.scheduler.metric


def mode(spec: SweepSpec) -> str:
    assert spec.sequential is not None
    return spec.sequential.mode or spec.scheduler.mode
