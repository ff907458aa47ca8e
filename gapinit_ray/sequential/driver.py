"""The sequential phase on Ray Tune: rounds of extra seeds until every comparison is decided, at its
maximum seeds, or the budget is spent (called by :func:`gapinit_ray.sweep.run_sweep` after the grid).

Each round is one Tune experiment, ``<sweep>/tune-seeds-NNN`` (FIFO; the trials are a list of params
under :data:`~gapinit_ray.plan.TRIAL_KEY`), running the same trainable as the grid with the same
calibration artifacts and caches; every report lands in the same results store. The loop:

1. read every trial's outcome from the store; compute every comparison's looks and status
   (:func:`~.comparisons.evaluate`) and rewrite the audit log (:class:`~.log.SequentialLog`);
2. a round the record says was started and whose trials have not all finished (a driver killed while it
   ran) is finished first, restored from its Tune state (running trials continue from checkpoints);
   a round that ended with failed trials ends the phase for this run (``gapinit resume`` retries them);
3. otherwise the next round's trials (:func:`~.comparisons.next_trials`); none: the phase is over;
4. with a budget: the round starts only if the device-hours spent so far plus its estimate (the mean
   cost of a finished trial times its trials) fit; else the phase ends at the budget, recorded, and
   every open comparison is unresolved at budget;
5. the round is recorded before it starts, then run.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from gapinit_ray.errors import GapinitError
from gapinit_ray.names import RAY_OUTPUT_FILE, SEQUENTIAL_TUNE_PREFIX
from gapinit_ray.plan import trial_id
from gapinit_ray.results import anytime
from gapinit_ray.results.looks import SequentialLog
from gapinit_ray.results.looks_text import fmt_num, verdict_text
from gapinit_ray.sequential import comparisons as C
from gapinit_ray.spec import SweepSpec
from gapinit_ray.trial import sweep_dir


def outcomes(spec: SweepSpec) -> tuple[dict[str, C.Outcome], dict[str, float]]:
    """Every stored trial's :class:`~.comparisons.Outcome` (value: the sequential metric at the last
    epoch) and its device-seconds so far."""
    from gapinit_ray.results import ResultsStore
    from gapinit_ray.results._fs import ResultsError

    store = ResultsStore(spec.storage, spec.name)
    metric = C.metric(spec)
    try:
        trials = store.trials().to_pylist()
        table = store.metrics()
    except ResultsError:
        return {}, {}
    rows = table.select([c for c in ("trial_id", "epoch", metric, "device_s") if c in table.column_names])
    values: dict[str, float] = {}
    cost: dict[str, float] = {}
    for r in rows.to_pylist():
        cost[r["trial_id"]] = cost.get(r["trial_id"], 0.0) + float(r.get("device_s") or 0.0)
        if r["epoch"] == spec.max_t and r.get(metric) is not None:
            values[r["trial_id"]] = float(r[metric])
    out: dict[str, C.Outcome] = {}
    for t in trials:
        tid, status = t["trial_id"], t.get("status")
        if status == "TERMINATED":
            v = values.get(tid)
            out[tid] = C.Outcome(C.DONE, v) if v is not None and math.isfinite(v) else C.Outcome(C.NO_VALUE)
        elif status == "STOPPED":
            out[tid] = C.Outcome(C.STOPPED)
        elif status == "ERROR":
            out[tid] = C.Outcome(C.ERROR)
        else:
            out[tid] = C.Outcome(C.PENDING)
    return out, cost


def check_cost_available(spec: SweepSpec) -> None:
    """A budget needs every stored trial's cost: a sweep dir written before reports carried
    ``device_s`` cannot be held to one."""
    from gapinit_ray.results import ResultsStore
    from gapinit_ray.results._fs import ResultsError

    if spec.sequential is None or spec.sequential.budget_device_hours is None:
        return
    try:
        table = ResultsStore(spec.storage, spec.name).metrics()
    except ResultsError:
        return  # nothing stored yet: every report of this version carries its cost
    if table.num_rows and "device_s" not in table.column_names:
        raise GapinitError(
            "sequential.budget_device_hours: the sweep's stored reports carry no cost (device_s; written "
            "by an older version), so a budget cannot be held: remove the budget or use another sweep name"
        )


def _summary(spec: SweepSpec, states: list[C.State], cost: dict[str, float], log: SequentialLog) -> dict:
    seq = spec.sequential
    assert seq is not None
    per_arm: dict[str, set[int]] = {}
    for st in states:
        for value in (st.comparison.a, st.comparison.b):
            key = f"{st.comparison.axis}={value}"
            per_arm.setdefault(key, set()).update(st.seeds)
    spent = sum(cost.values()) / 3600
    return {
        "metric": C.metric(spec),
        "mode": C.mode(spec),
        "epoch": spec.max_t,
        "alpha": seq.alpha,
        "comparisons": len(states),
        "alpha_each": C.alpha_each(spec, len(states)),
        "prior_scale": C.prior_scale(spec),
        "prior": anytime.describe_prior(C.prior_scale(spec)),
        "min_effect": seq.min_effect,
        "min_seeds": C.min_seeds(spec),
        "max_seeds": seq.max_seeds,
        "budget_device_hours": seq.budget_device_hours,
        "spent_device_hours": spent,
        "rounds": len(log.rounds),
        "trials": len(cost),
        "seeds_per_arm": {k: len(v) for k, v in per_arm.items()},
    }


def _estimate_h(trials: list[dict], outcome: dict[str, C.Outcome], cost: dict[str, float]) -> float | None:
    done = [cost[t] for t, o in outcome.items() if o.status == C.DONE and t in cost]
    if not done:
        return None
    return sum(done) / len(done) * len(trials) / 3600


def run_rounds(
    spec: SweepSpec,
    *,
    quiet: bool,
    fn_kwargs: dict[str, Any],
    concurrency: int,
) -> None:
    """The loop of the module docstring. ``fn_kwargs``: the trainable's backbone / artifact / cache
    paths, as the grid's trials got them; ``concurrency``: Train runs at once."""
    seq = spec.sequential
    assert seq is not None
    log = SequentialLog(sweep_dir(spec))
    ran: dict[int, int] = {}  # round -> attempts made by this driver
    said: set[tuple] = set()
    while True:
        outcome, cost = outcomes(spec)
        states = C.evaluate(spec, outcome, budget_ended=bool(log.ended and log.ended["reason"] == "budget"))
        log.record(states, _summary(spec, states, cost, log))
        if not quiet:
            _say_looks(spec, states, said)
        last = log.rounds[-1] if log.rounds else None
        if last is not None and not _finished(last, outcome):
            pending = _pending(last, outcome)
            if any(outcome.get(trial_id(p), C.Outcome(C.PENDING)).status == C.ERROR for p in last["trials"]):
                if last["round"] in ran:
                    return  # failed trials: the CLI lists them; `gapinit resume` re-runs them
                pending = last["trials"]  # a resumed driver: the round's Tune state retries them
            attempt = ran.get(last["round"], -1) + 1
            if attempt > 1:
                names = ", ".join(trial_id(p) for p in pending)
                raise GapinitError(
                    f"sequential round {last['round']}: trial(s) {names} did not run (twice); see "
                    f"{sweep_dir(spec) / RAY_OUTPUT_FILE}, then `gapinit resume` continues the round"
                )
            ran[last["round"]] = attempt
            # attempt 0: the round's own Tune experiment (restored when a killed driver left one);
            # 1: a new one for the trials that restore did not run (an experiment state saved before
            # its trials were created holds none)
            _run_round(
                spec,
                last,
                last["trials"] if attempt == 0 else pending,
                attempt,
                quiet,
                fn_kwargs,
                concurrency,
            )
            continue
        if log.ended is not None:
            return
        todo = C.next_trials(spec, states, outcome)
        if not todo:
            return
        spent = sum(cost.values()) / 3600
        estimate = _estimate_h(todo, outcome, cost)
        budget = seq.budget_device_hours
        if budget is not None and spent + (estimate or 0.0) > budget:
            log.end("budget", spent, estimate, budget)
            if not quiet:
                print(
                    f"gapinit: sequential: budget reached ({spent:.3g} device-hours spent, the next round "
                    f"needs ~{estimate or 0:.3g} of {budget:g}): open comparisons end unresolved",
                    file=sys.stderr,
                )
            continue  # one more pass records the comparisons as unresolved at budget
        rnd = log.start_round(todo, spent, estimate)
        if not quiet:
            print(
                f"gapinit: sequential round {rnd['round']}: seed(s) {', '.join(map(str, rnd['seeds']))} for "
                f"{len(todo)} trial(s) of the open comparisons",
                file=sys.stderr,
            )


def _pending(rnd: dict, outcome: dict[str, C.Outcome]) -> list[dict]:
    """The round's trials that have not run to an outcome (not finished, stopped or failed)."""
    return [p for p in rnd["trials"] if outcome.get(trial_id(p), C.Outcome(C.PENDING)).status == C.PENDING]


def _finished(rnd: dict, outcome: dict[str, C.Outcome]) -> bool:
    # a failed trial leaves its round unfinished: a resumed driver restores the round, which retries it
    ended = (C.DONE, C.STOPPED, C.NO_VALUE)
    return all(outcome.get(trial_id(p), C.Outcome(C.PENDING)).status in ended for p in rnd["trials"])


def _say_looks(spec: SweepSpec, states: list[C.State], said: set[tuple]) -> None:
    for st in states:
        key = (st.comparison.name, st.n, st.status)
        if key in said or (not st.looks and st.status == C.OPEN):
            continue
        said.add(key)
        assert spec.sequential is not None
        print(f"gapinit: {look_line(st, spec.sequential.min_effect, C.mode(spec))}", file=sys.stderr)


def _run_round(
    spec: SweepSpec,
    rnd: dict,
    trials: list[dict],
    attempt: int,
    quiet: bool,
    fn_kwargs: dict[str, Any],
    concurrency: int,
) -> None:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from gapinit_ray.plan import TRIAL_KEY, plan_trial
    from gapinit_ray.sweep_callback import SweepProgress
    from gapinit_ray.sweep_trainable import trainable

    root = sweep_dir(spec)
    fn = tune.with_resources(
        tune.with_parameters(
            trainable,
            spec=spec,
            planned=[plan_trial(spec, p) for p in trials],
            state_path=None,
            slots=None,
            **fn_kwargs,
        ),
        {"CPU": 0, "memory": 2**20},
    )
    name = f"{SEQUENTIAL_TUNE_PREFIX}{rnd['round']:03d}" + (f"-{attempt}" if attempt else "")
    path = root / name
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=fn, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            fn,
            param_space={TRIAL_KEY: tune.grid_search([json.dumps(p, sort_keys=True) for p in trials])},
            tune_config=tune.TuneConfig(
                metric=spec.scheduler.metric,
                mode=spec.scheduler.mode,
                max_concurrent_trials=concurrency,
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(root),
                callbacks=[SweepProgress(spec, FIFOScheduler(), quiet, None)],
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                verbose=0,
            ),
        )
    try:
        tuner.fit()
    except RuntimeError as e:  # see gapinit_ray.sweep._run: a trial that never got a directory
        if "trial_fs_path" not in str(e):
            raise


def look_line(st: C.State, min_effect: float | None = None, mode: str = "max") -> str:
    """One line for the live log of a sweep: where a comparison stands after its latest look."""
    lk = st.last
    head = f"sequential: {st.comparison.name}: "
    said = verdict_text(_record(st), min_effect, mode)
    if lk is None:
        return head + said
    return (
        f"{head}{lk.n} seeds, diff {fmt_num(lk.mean)}, CS [{fmt_num(lk.cs_low)}, {fmt_num(lk.cs_high)}] "
        f"(α {lk.alpha:.3g}), e {fmt_num(lk.e_value, '.3g')}: {said}"
    )


def _record(st: C.State) -> dict[str, Any]:
    c = st.comparison
    return {
        "a": c.a,
        "b": c.b,
        "verdict": st.verdict,
        "status": st.status,
        "n": st.n,
        "reason": st.reason,
        "seeds_still_needed": st.still_needed,
    }
