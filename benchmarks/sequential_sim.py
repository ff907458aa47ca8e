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
3. Huge effects (an arm that does not train against one that does): differences of mean 10 and 30 sd
   (sd of the differences 1), α = 0.05 and 0.025, min_seeds 3, max 20 seeds: the distribution of the
   seeds to a verdict, the projection with the sd at its true value, and the earliest n any verdict is
   possible (:func:`gapinit_ray.results.anytime.earliest_decision`).
4. The prior: single scales g and mixtures over scales, seeds used at δ, 2δ, 10 sd and 30 sd, the
   earliest verdict and the null error rate of each; the default is chosen from these rows.

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
HUGE_EFFECTS = (10.0, 30.0)
HUGE_ALPHAS = (0.05, 0.025)
HUGE_MAX_SEEDS = 20
#: the priors compared in part 4: single scales, then mixtures (the default among them)
PRIORS = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    ((0.5, 0.8), (8.0, 0.1), (128.0, 0.1)),
    ((0.5, 0.8), (8.0, 0.1), (256.0, 0.1)),
    ((0.5, 0.8), (16.0, 0.1), (256.0, 0.1)),
    ((0.5, 0.8), (16.0, 0.1), (512.0, 0.1)),
    ((0.5, 0.9), (16.0, 0.05), (256.0, 0.05)),
    ((0.5, 0.85), (32.0, 0.15)),
    ((0.25, 0.4), (1.0, 0.4), (32.0, 0.1), (512.0, 0.1)),
)


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


def null_rates(D: np.ndarray, alpha: float, g: at.PriorScale = at.DEFAULT_PRIOR_SCALE) -> dict:
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


def naive_peeking(reps: int) -> dict:
    """What this module replaces: the fixed-n tests re-run after every seed from ``MIN_SEEDS`` on, the
    sweep stopped at the first p < α. Under the null (identical normal arms) the chance of a false
    "difference" at some look grows with the number of looks; the paired t-test at every look, and the
    exact sign-flip test at every look (its p is exact at each n, not across looks)."""
    rng = np.random.default_rng(400)
    xa, xb = arms(rng, reps, NULL_MAX_SEEDS, ["normal", "normal"], [0.0, 0.0])
    d = xa - xb
    n = np.arange(1, NULL_MAX_SEEDS + 1)
    mean = np.cumsum(d, axis=1) / n
    var = (np.cumsum(d * d, axis=1) - n * mean**2) / np.maximum(n - 1, 1)
    t = mean / np.sqrt(np.maximum(var, 1e-300) / n)
    p = 2 * stats.t.sf(np.abs(t), np.maximum(n - 1, 1))
    out = {}
    for looks_up_to in (5, 10, 20, NULL_MAX_SEEDS):
        cols = slice(MIN_SEEDS - 1, looks_up_to)
        hit = (p[:, cols] < ALPHA).any(axis=1)
        out[f"paired_t_every_seed_up_to_{looks_up_to}"] = rate(int(hit.sum()), reps)
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


def savings(reps: int, g: at.PriorScale = at.DEFAULT_PRIOR_SCALE, cases=None) -> tuple[dict, dict]:
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
        "prior": at.describe_prior(g),
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


def huge_effects(reps: int, g: at.PriorScale = at.DEFAULT_PRIOR_SCALE) -> dict:
    """Seeds to a verdict when the arms differ by 10 or 30 sd of the differences."""
    out = {}
    for i, effect in enumerate(HUGE_EFFECTS):
        rng = np.random.default_rng(600 + i)
        xa, xb = arms(rng, reps, HUGE_MAX_SEEDS, ["normal", "normal"], [effect, 0.0])
        D = (xa - xb - effect) / math.sqrt(2) + effect
        for alpha in HUGE_ALPHAS:
            codes, n_at = at.first_decisions(D, alpha=alpha, min_seeds=MIN_SEEDS, g=g)
            n = np.arange(MIN_SEEDS, HUGE_MAX_SEEDS + 1)
            clear = np.flatnonzero([at.cs_radius(int(k), 1.0, alpha, g) < effect for k in n])
            values, counts = np.unique(n_at, return_counts=True)
            out[f"{effect:g}sd_alpha_{alpha:g}"] = {
                "difference_in_sd": effect,
                "alpha": alpha,
                "earliest_decision": at.earliest_decision(alpha, g),
                "seeds_if_sd_as_true": int(n[clear[0]]) if len(clear) else None,
                "seeds_used": {
                    "mean": round(float(n_at.mean()), 2),
                    "median": float(np.median(n_at)),
                    "p10": float(np.percentile(n_at, 10)),
                    "p90": float(np.percentile(n_at, 90)),
                    "max": int(n_at.max()),
                    "histogram": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
                },
                "decided_a_higher": rate(int(np.sum(codes == 1)), reps),
            }
    return out


def prior_scales(reps: int) -> dict:
    rows = {}
    cases = [("delta", DELTA, "normal"), ("2delta", 2 * DELTA, "normal")]
    for g in PRIORS:
        _, sv = savings(reps, g=g, cases=cases)
        huge = huge_effects(reps, g=g)
        rng = np.random.default_rng(500)
        D = rng.standard_normal((reps, NULL_MAX_SEEDS))
        null = null_rates(D, ALPHA, g=g)
        rows[at.describe_prior(g)] = {
            "prior": g,
            "mean_seeds_at_delta": sv["delta_normal"]["seeds_used"]["mean"],
            "power_at_delta": sv["delta_normal"]["verdicts"][at.A_HIGHER]["rate"],
            "false_equivalent_at_delta": sv["delta_normal"]["verdicts"][at.EQUIVALENT]["rate"],
            "mean_seeds_at_2delta": sv["2delta_normal"]["seeds_used"]["mean"],
            **{f"mean_seeds_at_{k}": v["seeds_used"]["mean"] for k, v in huge.items()},
            **{f"p90_seeds_at_{k}": v["seeds_used"]["p90"] for k, v in huge.items()},
            "null_false_directional_normal_50_seeds": null["false_directional"],
            "earliest_decision_alpha_0.05": at.earliest_decision(ALPHA, g),
            "earliest_decision_alpha_0.025": at.earliest_decision(0.025, g),
            "earliest_decision_alpha_0.05_over_6": at.earliest_decision(ALPHA / 6, g),
        }
    base = rows[at.describe_prior(0.5)]
    for r in rows.values():
        r["seeds_at_delta_over_g_0.5"] = round(r["mean_seeds_at_delta"] / base["mean_seeds_at_delta"], 3)
        r["seeds_at_2delta_over_g_0.5"] = round(r["mean_seeds_at_2delta"] / base["mean_seeds_at_2delta"], 3)
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
    huge = huge_effects(args.reps)
    naive = naive_peeking(args.reps)
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
        f"prior {setup['prior']})"
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
    print(
        f"\nHuge effects (σ_d = 1, min_seeds {MIN_SEEDS}, max {HUGE_MAX_SEEDS}, {at.describe_prior()}): "
        "seeds to a verdict"
    )
    for name, r in huge.items():
        s = r["seeds_used"]
        hist = " ".join(f"{k}:{v}" for k, v in s["histogram"].items())
        print(
            f"  {name:20s} earliest {r['earliest_decision']}  with sd as true {r['seeds_if_sd_as_true']}  "
            f"mean {s['mean']:.2f} med {s['median']:.0f} p90 {s['p90']:.0f} max {s['max']}  "
            f"decided {100 * r['decided_a_higher']['rate']:.2f} %  ({hist})"
        )
    print(
        "\nPrior: mean seeds at δ, 2δ (α = 0.05), 10 sd and 30 sd (α = 0.025), null false directional (normal)"
    )
    for name, r in scales.items():
        print(
            f"  {name:58s} δ {r['mean_seeds_at_delta']:5.1f} ({r['seeds_at_delta_over_g_0.5']:.3f}, "
            f"power {100 * r['power_at_delta']:.1f} %)  2δ {r['mean_seeds_at_2delta']:5.1f} "
            f"({r['seeds_at_2delta_over_g_0.5']:.3f})  10sd {r['mean_seeds_at_10sd_alpha_0.025']:5.2f}  "
            f"30sd {r['mean_seeds_at_30sd_alpha_0.025']:5.2f}  null {_ci(r['null_false_directional_normal_50_seeds'])}  "
            f"earliest n = {r['earliest_decision_alpha_0.05']}/{r['earliest_decision_alpha_0.025']}/"
            f"{r['earliest_decision_alpha_0.05_over_6']} (α 0.05/0.025/0.05÷6)"
        )
    print(
        f"\nThe fixed-n paired t-test re-run after every seed from {MIN_SEEDS} on (α = {ALPHA}), null, normal:"
    )
    for name, r in naive.items():
        print(f"  {name:36s} ≥ 1 false 'difference' {_ci(r)}")
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
            "prior": at.describe_prior(),
            **errors,
        },
        "seeds_saved": {"setup": setup, "cases": saved},
        "naive_peeking": {
            "what": "the fixed-n paired t-test at α re-run after every seed from min_seeds on, stopping at the "
            "first p < α, identical normal arms: the false-verdict rate this module's looks avoid",
            **naive,
        },
        "assumption_warning": warning,
        "huge_effects": {
            "setup": {
                "sd_of_differences": 1.0,
                "min_seeds": MIN_SEEDS,
                "max_seeds": HUGE_MAX_SEEDS,
                "prior": at.describe_prior(),
                "seeds_if_sd_as_true_is": "the first n ≥ min_seeds with cs_radius(n, 1, α) < the difference",
            },
            "cases": huge,
        },
        "prior_scale": {
            "rows": scales,
            "chosen": at.DEFAULT_PRIOR_SCALE,
            "chosen_is": at.describe_prior(),
            "reason": PRIOR_REASON,
        },
        "targets": {
            "mean_seeds_at_2delta_le_0.7_n_fixed": saved["2delta_normal"]["mean_seeds_over_n_fixed"] <= 0.7,
            "false_equivalent_at_delta_le_0.2": saved["delta_normal"]["verdicts"][at.EQUIVALENT]["rate"]
            <= 0.2,
            "earliest_decision_alpha_0.025_le_4": at.earliest_decision(0.025) <= 4,
            "median_seeds_at_30sd_alpha_0.025_le_4": huge["30sd_alpha_0.025"]["seeds_used"]["median"] <= 4,
            "median_seeds_at_10sd_alpha_0.025_le_4": huge["10sd_alpha_0.025"]["seeds_used"]["median"] <= 4,
            "seeds_at_delta_and_2delta_within_10_percent_of_g_0.5": all(
                scales[at.describe_prior()][k] <= 1.1
                for k in ("seeds_at_delta_over_g_0.5", "seeds_at_2delta_over_g_0.5")
            ),
        },
    }
    print(f"\n-> {write_result('sequential_sim', result)} ({wall:.1f} s)")


PRIOR_REASON = (
    "The default is the mixture 80 % g = 0.5, 10 % g = 16, 10 % g = 256. With one scale g = 0.5 (the best "
    "single scale: fewest seeds at δ, within 4 % of the fewest at 2δ) no verdict is possible before 6 seeds "
    "at α = 0.05 (7 at 0.025) however large the difference, as E_n ≤ (1 + n g)^((n−1)/2). Small weights on "
    "large scales lift that cap: with this mixture a verdict is possible from n = 3 at α = 0.05 and 0.025, "
    "a difference of 30 sd is decided at a median of 3 seeds (at most 4) at α = 0.025 and 10 sd at a median "
    "of 4, while the mean seeds at δ and 2δ stay within 3 % and 1.5 % of g = 0.5 alone (the 80 % weight "
    "costs log(1/0.8) of evidence at moderate effects). Against the other mixtures in the rows: (0.5, 8, "
    "128) costs the same but is slower at 30 sd (g = 256 matches t² ≈ 2700 at n = 3 better); (0.5, 16, "
    "512) is the same within noise; the four-scale mixture is a little faster for huge effects but costs "
    "4.5 % at δ; 5 % weights on the large scales cost less at δ but decide 30 sd later. The null error "
    "rate is the same for all priors. Validity holds for every prior fixed in advance."
)

if __name__ == "__main__":
    main()
