"""Sequential seed comparisons by simulation, through the real decision code: error control under
continuous monitoring, the seeds it saves, and the choice of the prior scale g.

    python -m benchmarks.sequential_sim [--reps 20000]

Every simulated comparison looks after every seed (from 2 on; verdicts from ``min_seeds`` = 3 on) and
stops at its first decisive look, as :func:`gapinit_ray.results.anytime.looks` does; the rows go through
:func:`gapinit_ray.results.anytime.first_decisions` (the same radii and decision code, vectorized; a test
checks it agrees with ``looks``). Per-arm values are X = s_i + e (s_i a seed effect shared by the arms of
one seed), the differences d_i = X_A − X_B.

1. Error control under the null (equal means), max 50 seeds, α = 0.05: the rate of a false "A higher" /
   "B higher" with Clopper–Pearson 95 % intervals, for noise normal, Student t(3), centred log-normal
   (σ_log = 1) and "some seeds collapse" (prob. 0.15 a run lands 5 sd below), identical in both arms;
   then the cases that break the method's assumption (skewed differences with mean 0); then 3 and 6
   comparisons at once (arm 0 against each other arm, Bonferroni, α_family = 0.05): the rate of at least
   one false directional verdict.
2. Seeds it saves: σ_d = 1, smallest effect that matters δ = 0.5, against the fixed-n paired t-test
   planned for δ (α = 0.05, 80 % power: ``stats.seeds_needed``), max seeds 2·n_fixed.
3. Prior scale g: seeds used at δ and 2δ and the null error rate for a few g.

Writes benchmarks/results/sequential_sim.json.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import stats

from benchmarks.common import machine, write_result
from gapinit_ray.results import anytime as at
from gapinit_ray.results.stats import seeds_needed

ALPHA = 0.05
MIN_SEEDS = 3
NULL_MAX_SEEDS = 50
DELTA = 0.5
SEED_EFFECT_SD = 2.0  # shared by the arms of one seed; cancels in the paired difference
NOISES = ("normal", "student_t3", "lognormal", "collapse")
PRIOR_SCALES = (0.1, 0.25, 0.5, 1.0, 2.0)


def noise(rng: np.random.Generator, model: str, shape: tuple[int, ...]) -> np.ndarray:
    """Per-run noise with mean 0 and sd 1 (so that the sd of a difference of two runs is √2)."""
    if model == "normal":
        return rng.standard_normal(shape)
    if model == "student_t3":
        return rng.standard_t(3, shape) / math.sqrt(3.0)
    if model.startswith("lognormal"):  # exp(N(0, σ_log²)), centred and scaled: right-skewed
        sl = float(model.split("_")[1]) if "_" in model else 1.0
        mean, var = math.exp(sl * sl / 2), (math.exp(sl * sl) - 1) * math.exp(sl * sl)
        return (np.exp(sl * rng.standard_normal(shape)) - mean) / math.sqrt(var)
    if model == "collapse":  # with prob 0.15 the run collapses to 5 sd below its normal value
        p, drop = 0.15, 5.0
        x = rng.standard_normal(shape) - drop * (rng.random(shape) < p)
        return (x + p * drop) / math.sqrt(1 + drop**2 * p * (1 - p))
    raise ValueError(model)


def arms(rng: np.random.Generator, reps: int, seeds: int, models: list[str], means: list[float]) -> list:
    """Per-arm values of ``reps`` sequential comparisons × ``seeds`` seeds: one shared seed effect."""
    s = rng.normal(0, SEED_EFFECT_SD, (reps, seeds))
    return [s + mu + noise(rng, m, (reps, seeds)) for m, mu in zip(models, means, strict=True)]


def rate(k: int, n: int) -> dict:
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    return {"rate": k / n, "ci95": [round(ci.low, 5), round(ci.high, 5)], "count": k, "of": n}


def null_rates(D: np.ndarray, alpha: float, g: float = at.DEFAULT_PRIOR_SCALE) -> dict:
    codes, n_at = at.first_decisions(D, alpha=alpha, min_seeds=MIN_SEEDS, g=g)
    reps = len(D)
    a, b = int(np.sum(codes == 1)), int(np.sum(codes == 2))
    return {
        "false_a_higher": rate(a, reps),
        "false_b_higher": rate(b, reps),
        "false_directional": rate(a + b, reps),
        "mean_seeds_at_decision_or_max": round(float(n_at.mean()), 2),
    }


def error_control(reps: int) -> dict:
    out: dict = {"identical_arms": {}, "assumption_broken": {}, "family_wise": {}}
    for i, model in enumerate(NOISES):
        rng = np.random.default_rng(100 + i)
        xa, xb = arms(rng, reps, NULL_MAX_SEEDS, [model, model], [0.0, 0.0])
        out["identical_arms"][model] = null_rates(xa - xb, ALPHA)
    rng = np.random.default_rng(200)
    out["assumption_broken"]["lognormal_differences"] = {
        "what": "d itself centred log-normal (σ_log = 1, skewness 6.2), mean 0: right-skewed differences",
        **null_rates(math.sqrt(2) * noise(rng, "lognormal", (reps, NULL_MAX_SEEDS)), ALPHA),
    }
    rng = np.random.default_rng(202)
    out["assumption_broken"]["lognormal_differences_sigma_0.5"] = {
        "what": "d itself centred log-normal with σ_log = 0.5 (skewness 1.75), mean 0",
        **null_rates(math.sqrt(2) * noise(rng, "lognormal_0.5", (reps, NULL_MAX_SEEDS)), ALPHA),
    }
    rng = np.random.default_rng(201)
    xa, xb = arms(rng, reps, NULL_MAX_SEEDS, ["collapse", "normal"], [0.0, 0.0])
    out["assumption_broken"]["collapse_in_arm_a_only"] = {
        "what": "arm A's runs collapse (p 0.15, 5 sd down), re-centred to mean 0; arm B normal: equal "
        "means, different shapes, left-skewed differences",
        **null_rates(xa - xb, ALPHA),
    }
    for k in (3, 6):
        for model in ("normal", "student_t3"):
            rng = np.random.default_rng(300 + k)
            x = arms(rng, reps, NULL_MAX_SEEDS, [model] * (k + 1), [0.0] * (k + 1))
            each = at.alpha_each(ALPHA, k)
            wrong = np.zeros(reps, dtype=bool)
            for j in range(1, k + 1):
                codes, _ = at.first_decisions(x[0] - x[j], alpha=each, min_seeds=MIN_SEEDS)
                wrong |= np.isin(codes, (1, 2))
            out["family_wise"][f"{k}_comparisons_{model}"] = {
                "alpha_each": each,
                "at_least_one_false_directional": rate(int(wrong.sum()), reps),
            }
    return out


def seed_use(codes: np.ndarray, n_at: np.ndarray, max_seeds: int, n_fixed: float, oracle: float) -> dict:
    reps = len(codes)
    used = n_at.astype(float)
    return {
        "seeds_used": {
            "mean": round(float(used.mean()), 2),
            "median": float(np.median(used)),
            "p10": float(np.percentile(used, 10)),
            "p90": float(np.percentile(used, 90)),
            "max": int(used.max()),
        },
        "verdicts": {
            at.A_HIGHER: rate(int(np.sum(codes == 1)), reps),
            at.B_HIGHER: rate(int(np.sum(codes == 2)), reps),
            at.EQUIVALENT: rate(int(np.sum(codes == 3)), reps),
            f"{at.UNRESOLVED}_at_max": rate(int(np.sum(codes == 0)), reps),
        },
        "mean_seeds_over_n_fixed": round(float(used.mean()) / n_fixed, 3),
        "oracle_fixed_n": oracle,
        "mean_seeds_over_oracle_fixed_n": round(float(used.mean()) / oracle, 3)
        if math.isfinite(oracle)
        else None,
    }


def savings(reps: int, g: float = at.DEFAULT_PRIOR_SCALE, cases=None) -> tuple[dict, dict]:
    n_fixed = seeds_needed(DELTA, 1.0)
    max_seeds = int(2 * n_fixed)
    setup = {
        "sd_of_differences": 1.0,
        "min_effect": DELTA,
        "n_fixed": n_fixed,
        "n_fixed_is": f"stats.seeds_needed({DELTA}, 1.0): paired t-test, α = 0.05, 80 % power at δ",
        "max_seeds": max_seeds,
        "min_seeds": MIN_SEEDS,
        "alpha": ALPHA,
        "prior_scale_g": g,
    }
    cases = cases or [("0", 0.0, "normal"), ("delta", DELTA, "normal"), ("2delta", 2 * DELTA, "normal")]
    out = {}
    for i, (name, diff, model) in enumerate(cases):
        rng = np.random.default_rng(400 + i)
        # differences with sd 1: a difference of two unit-sd runs is scaled by 1/√2
        xa, xb = arms(rng, reps, max_seeds, [model, model], [diff, 0.0])
        D = (xa - xb - diff) / math.sqrt(2) + diff
        codes, n_at = at.first_decisions(D, alpha=ALPHA, min_effect=DELTA, min_seeds=MIN_SEEDS, g=g)
        oracle = seeds_needed(diff, 1.0) if diff else math.inf
        out[f"{name}_{model}"] = {
            "true_difference": diff,
            "noise": model,
            **seed_use(codes, n_at, max_seeds, n_fixed, oracle),
        }
    return setup, out


def prior_scales(reps: int) -> dict:
    rows = {}
    cases = [("delta", DELTA, "normal"), ("2delta", 2 * DELTA, "normal")]
    for g in PRIOR_SCALES:
        _, sv = savings(reps, g=g, cases=cases)
        rng = np.random.default_rng(500)
        D = rng.standard_normal((reps, NULL_MAX_SEEDS))
        null = null_rates(D, ALPHA, g=g)
        rows[str(g)] = {
            "mean_seeds_at_delta": sv["delta_normal"]["seeds_used"]["mean"],
            "power_at_delta": sv["delta_normal"]["verdicts"][at.A_HIGHER]["rate"],
            "false_equivalent_at_delta": sv["delta_normal"]["verdicts"][at.EQUIVALENT]["rate"],
            "mean_seeds_at_2delta": sv["2delta_normal"]["seeds_used"]["mean"],
            "null_false_directional_normal_50_seeds": null["false_directional"],
            "earliest_decision_alpha_0.05": at.earliest_decision(ALPHA, g),
            "earliest_decision_alpha_0.05_over_6": at.earliest_decision(ALPHA / 6, g),
        }
    return rows


def _ci(r: dict) -> str:
    return f"{100 * r['rate']:5.2f} % [{100 * r['ci95'][0]:.2f}, {100 * r['ci95'][1]:.2f}]"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20_000)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    errors = error_control(args.reps)
    setup, saved = savings(
        args.reps,
        cases=[
            ("0", 0.0, "normal"),
            ("delta", DELTA, "normal"),
            ("2delta", 2 * DELTA, "normal"),
            ("2delta", 2 * DELTA, "student_t3"),
        ],
    )
    scales = prior_scales(args.reps)
    wall = time.perf_counter() - t0

    print(
        f"Error control under the null: α = {ALPHA}, looks at every seed up to {NULL_MAX_SEEDS}, "
        f"min_seeds {MIN_SEEDS}, {args.reps} comparisons each (Clopper–Pearson 95 %)"
    )
    for group in ("identical_arms", "assumption_broken"):
        for name, r in errors[group].items():
            print(
                f"  {group:18s} {name:24s} false A>B {_ci(r['false_a_higher'])}  false B>A "
                f"{_ci(r['false_b_higher'])}  any {_ci(r['false_directional'])}"
            )
    for name, r in errors["family_wise"].items():
        print(
            f"  family-wise        {name:24s} ≥ 1 false directional {_ci(r['at_least_one_false_directional'])}"
            f"  (α each {r['alpha_each']:.4f})"
        )
    print(
        f"\nSeeds used (σ_d = 1, δ = {DELTA}, n_fixed = {setup['n_fixed']:.0f}, max {setup['max_seeds']}, "
        f"g = {setup['prior_scale_g']})"
    )
    print(
        f"  {'case':18s} {'mean':>6s} {'med':>5s} {'p10':>5s} {'p90':>5s} {'max':>4s}  {'/n_fixed':>8s} "
        f"{'oracle':>6s}  {'A>B':>6s} {'B>A':>6s} {'equiv':>6s} {'unres':>6s}"
    )
    for name, r in saved.items():
        s, v = r["seeds_used"], r["verdicts"]
        print(
            f"  {name:18s} {s['mean']:6.1f} {s['median']:5.0f} {s['p10']:5.0f} {s['p90']:5.0f} {s['max']:4d}  "
            f"{r['mean_seeds_over_n_fixed']:8.2f} {r['oracle_fixed_n']:6.0f}  "
            + " ".join(f"{100 * x['rate']:5.1f}%" for x in v.values())
        )
    print("\nPrior scale g: mean seeds at δ and 2δ, null false directional (normal)")
    for g, r in scales.items():
        print(
            f"  g = {g:5s} δ: {r['mean_seeds_at_delta']:5.1f} (power {100 * r['power_at_delta']:.1f} %)  "
            f"2δ: {r['mean_seeds_at_2delta']:5.1f}  null {_ci(r['null_false_directional_normal_50_seeds'])}  "
            f"earliest verdict n = {r['earliest_decision_alpha_0.05']} (α/6: {r['earliest_decision_alpha_0.05_over_6']})"
        )
    broken = errors["assumption_broken"]
    warning = (
        "The t-mixture CS assumes normal differences. Identical arms give symmetric differences, where it "
        "held above for every noise model; skewed differences with mean 0 (the assumption_broken rows) "
        "are where a t-based method can fail. False directional rate there: "
        + ", ".join(f"{k} {100 * v['false_directional']['rate']:.2f} %" for k, v in broken.items())
        + f", against α = {100 * ALPHA:.0f} %."
    )
    print("\n" + warning)

    result = {
        "benchmark": "sequential_sim",
        "machine": machine(),
        "method": "t-mixture confidence sequence (gapinit_ray.results.anytime), first decisive look, sticky",
        "wall_s": round(wall, 2),
        "reps_per_case": args.reps,
        "error_control": {
            "alpha": ALPHA,
            "max_seeds": NULL_MAX_SEEDS,
            "min_seeds": MIN_SEEDS,
            "prior_scale_g": at.DEFAULT_PRIOR_SCALE,
            **errors,
        },
        "seeds_saved": {"setup": setup, "cases": saved},
        "assumption_warning": warning,
        "prior_scale": {"rows": scales, "chosen": at.DEFAULT_PRIOR_SCALE, "reason": PRIOR_REASON},
        "targets": {
            "mean_seeds_at_2delta_le_0.7_n_fixed": saved["2delta_normal"]["mean_seeds_over_n_fixed"] <= 0.7,
            "false_equivalent_at_delta_le_0.2": saved["delta_normal"]["verdicts"][at.EQUIVALENT]["rate"]
            <= 0.2,
        },
    }
    print(f"\n-> {write_result('sequential_sim', result)} ({wall:.1f} s)")


PRIOR_REASON = (
    "g = 0.5 (prior sd of the standardized effect 0.71, between δ = 0.5 and 2δ = 1 in units of σ_d) gave "
    "the fewest mean seeds at δ and within 4 % of the fewest at 2δ (larger g is slightly faster there but "
    "slower and less powerful at δ, and smaller g needs more seeds before any verdict is possible: 10 at "
    "g = 0.1 against 6 at g = 0.5, α = 0.05); the expected seeds vary by under 10 % over g = 0.25-2, so "
    "the choice is not delicate. Validity holds for every g fixed in advance."
)

if __name__ == "__main__":
    main()
