"""The anytime-valid seed comparison: the e-value against quadrature of its definition and a value by
hand, the closed-form CS radius against the e-value it inverts, an independent implementation (savvi)
when installed, error control under continuous monitoring, the vectorized path against the per-look
one, and the edge cases (sticky decisions, min_seeds, zero spread, bad arguments); each for one prior
scale g and for mixtures over scales (the default)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import integrate, stats

from gapinit_ray.results import anytime as at
from gapinit_ray.results.stats import t_interval_paired

#: one scale (the closed form), the default mixture, and a mixture of four scales
SINGLE = 0.5
MIXTURE_4 = ((0.25, 0.4), (1.0, 0.4), (32.0, 0.1), (512.0, 0.1))
PRIORS = [SINGLE, at.DEFAULT_PRIOR_SCALE, MIXTURE_4]

# ------------------------------------------------------------------------------------ the e-value


def _e_by_quadrature(d, mu0: float, g: float) -> float:
    """The Bayes factor from its definition: marginal likelihoods of the data under H1 (standardized
    effect δ ~ N(0, g), σ with the prior 1/σ) and H0 (δ = 0, same prior on σ), by numerical integration.
    σ = exp(u) turns dσ/σ into du. The data are centred at mu0 and scaled by their sd first: a common
    factor cancels in the ratio (both priors on σ are the same right-Haar prior)."""
    x = (np.asarray(d, dtype=float) - mu0) / np.std(d, ddof=1)
    n, s1, s2 = len(x), float(x.sum()), float((x * x).sum())

    def lik(delta: float, u: float) -> float:
        # Π_i φ((x_i − δσ)/σ)/σ up to (2π)^(-n/2), which cancels; Σ (x_i/σ − δ)² from the sums
        sigma = math.exp(u)
        return math.exp(-0.5 * (s2 / sigma**2 - 2 * delta * s1 / sigma + n * delta**2) - n * u)

    prior_sd = math.sqrt(g)
    h1, _ = integrate.dblquad(
        lambda delta, u: lik(delta, u) * stats.norm.pdf(delta, 0, prior_sd),
        -6,
        6,
        -10 * prior_sd,
        10 * prior_sd,
        epsabs=0,
        epsrel=1e-9,
    )
    h0, _ = integrate.quad(lambda u: lik(0.0, u), -6, 6, epsabs=0, epsrel=1e-12, limit=200)
    return h1 / h0


@pytest.mark.parametrize(
    ("d", "mu0", "g"),
    [
        ([1.0, 2.0, 3.0], 0.0, 1.0),
        ([0.3, -0.1, 0.8, 0.5, 0.2], 0.0, 0.5),
        ([2.1, 1.7, 2.6, 1.2, 2.2, 1.9, 2.4], 1.5, 0.25),
        ([-0.4, 0.3, -0.2, 0.1], 0.0, 2.0),
    ],
)
def test_e_value_equals_quadrature_of_its_definition(d, mu0, g):
    assert at.e_value(d, mu0=mu0, g=g) == pytest.approx(_e_by_quadrature(d, mu0, g), rel=1e-6)


def test_e_value_by_hand():
    # d = 1, 2, 3: n = 3, m = 2, s = 1, t = 2√3, t² = 12, ν = 2; with g = 1, 1 + n g = 4:
    # E = 4^(-1/2) · [(1 + 12/2) / (1 + 12/(2·4))]^(3/2) = 0.5 · (7/2.5)^1.5 = 0.5 · 2.8^1.5
    assert at.e_value([1.0, 2.0, 3.0], g=1.0) == pytest.approx(0.5 * 2.8**1.5, rel=1e-14)
    assert pytest.approx(2.342648074, rel=1e-9) == 0.5 * 2.8**1.5


def test_mixture_e_value_is_the_weighted_sum_of_its_scales():
    rng = np.random.default_rng(11)
    for mix in (at.DEFAULT_PRIOR_SCALE, MIXTURE_4, ((2.0, 1.0),)):
        for n, mu0 in [(2, 0.0), (3, 0.2), (7, -0.5), (40, 0.1)]:
            d = rng.normal(0.3, 1.0, n)
            expected = math.fsum(w * at.e_value(d, mu0=mu0, g=g) for g, w in mix)
            assert at.e_value(d, mu0=mu0, g=mix) == pytest.approx(expected, rel=1e-12)
    # one pair of weight 1 is that scale exactly
    d = [0.3, -0.1, 0.8, 0.5, 0.2]
    assert at.e_value(d, g=((2.0, 1.0),)) == at.e_value(d, g=2.0)
    # the largest it can reach (t → ∞) is the weighted sum of (1 + n g)^((n − 1)/2)
    d = [1.0, 1.0 + 1e-12, 1.0 - 1e-12]
    sup = math.fsum(w * (1 + 3 * g) for g, w in at.DEFAULT_PRIOR_SCALE)
    assert at.e_value(d) == pytest.approx(sup, rel=1e-6)


def test_mixture_e_value_equals_quadrature_at_each_scale():
    d, mu0 = [0.3, -0.1, 0.8, 0.5, 0.2], 0.0
    quad = math.fsum(w * _e_by_quadrature(d, mu0, g) for g, w in at.DEFAULT_PRIOR_SCALE)
    assert at.e_value(d, mu0=mu0) == pytest.approx(quad, rel=1e-6)


def test_e_value_is_scale_and_location_equivariant():
    d = [0.3, -0.1, 0.8, 0.5, 0.2]
    e = at.e_value(d, mu0=0.1)
    assert at.e_value([7 * x + 3 for x in d], mu0=7 * 0.1 + 3) == pytest.approx(e, rel=1e-12)


def test_e_value_undefined_cases():
    assert at.e_value([]) == 1.0 and at.e_value([2.5]) == 1.0
    assert math.isnan(at.e_value([0.4, 0.4, 0.4]))


# ------------------------------------------------------------------------------ the closed form


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30, 200])
@pytest.mark.parametrize("alpha", [0.05, 0.0083])
@pytest.mark.parametrize("g", [0.25, 1.0, at.DEFAULT_PRIOR_SCALE, MIXTURE_4])
def test_radius_is_where_the_e_value_reaches_one_over_alpha(n, alpha, g):
    d = np.random.default_rng(n).normal(0.3, 2.0, n)
    low, high = at.confidence_sequence(d, alpha, g=g)
    pairs = ((g, 1.0),) if isinstance(g, float) else g
    if math.isinf(high):  # no μ0 excluded: the largest E_n can reach, Σ w (1 + n g)^((n−1)/2), is ≤ 1/α
        assert math.fsum(w * (1 + n * gj) ** ((n - 1) / 2) for gj, w in pairs) <= 1 / alpha
        assert at.e_value(d, mu0=1e6, g=g) < 1 / alpha
        return
    width = high - low
    for bound in (low, high):
        assert at.e_value(d, mu0=bound, g=g) == pytest.approx(1 / alpha, rel=1e-9)
    assert at.e_value(d, mu0=low + 1e-6 * width, g=g) < 1 / alpha
    assert at.e_value(d, mu0=high - 1e-6 * width, g=g) < 1 / alpha
    assert at.e_value(d, mu0=high + 1e-6 * width, g=g) > 1 / alpha
    assert at.cs_radius(n, float(np.std(d, ddof=1)), alpha, g=g) == pytest.approx(width / 2, rel=1e-12)


def test_radius_edge_cases():
    assert at.cs_radius(1, 1.0, 0.05) == math.inf
    assert at.cs_radius(2, 1.0, 0.05) == math.inf  # (1 + 2g)^(1/2) < 20 at g = 0.5
    assert at.cs_radius(10, math.nan, 0.05) == math.inf
    assert at.cs_radius(10, 0.0, 0.05) == math.inf
    assert at.confidence_sequence([1.0], 0.05) == (-math.inf, math.inf)
    # wider than the fixed-n t interval (the price of looking at every n), and shrinking with n
    d = np.random.default_rng(0).normal(0, 1, 40)
    lo, hi = at.confidence_sequence(d, 0.05)
    tlo, thi = t_interval_paired(d, 0.95)
    assert hi - lo > thi - tlo
    radii = [at.cs_radius(n, 1.0, 0.05) for n in range(5, 200)]
    assert all(a > b for a, b in itertools.pairwise(radii))


def test_matches_savvi_when_installed():
    """savvi (Lindon et al.'s anytime-valid linear models) has the same Bayes factor, written with
    φ = 1/g and z² = n for one intercept. Its LinearRegression class uses ν = n − p − 1, one degree of
    freedom fewer than here, so only its Bayes factor function is compared."""
    linear_regression = pytest.importorskip("savvi.linear_regression")
    rng = np.random.default_rng(3)
    for n, g in [(3, 1.0), (8, 0.5), (25, 0.25)]:
        d = rng.normal(0.4, 1.3, n)
        t = d.mean() / (d.std(ddof=1) / math.sqrt(n))
        log_bf = linear_regression.log_bf(t * t, n - 1, 1 / g, n)
        assert at.e_value(d, g=g) == pytest.approx(math.exp(log_bf), rel=1e-12)


# ---------------------------------------------------------------------------- error control


@pytest.mark.parametrize("g", [SINGLE, at.DEFAULT_PRIOR_SCALE])
def test_false_directional_rate_under_the_null_is_at_most_alpha(g):
    rng = np.random.default_rng(2024)
    reps, alpha = 2000, 0.05
    D = rng.normal(0.0, 1.0, (reps, 30))
    codes, _ = at.first_decisions(D, alpha=alpha, min_seeds=3, g=g)
    wrong = np.isin(codes, [1, 2]).mean()
    assert wrong <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)
    # the check can fail: the fixed-n t interval looked at after every seed is wrong far more often
    n = np.arange(1, 31)
    mean = np.cumsum(D, axis=1) / n
    sd = np.sqrt((np.cumsum(D * D, axis=1) - n * mean**2) / np.maximum(n - 1, 1))
    half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    naive = ((np.abs(mean) > half)[:, 2:]).any(axis=1).mean()
    assert naive > alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)


def test_alpha_each_is_bonferroni():
    assert at.alpha_each(0.05, 1) == 0.05
    assert at.alpha_each(0.05, 5) == pytest.approx(0.01)


# ------------------------------------------------------------------------- looks and decisions


@pytest.mark.parametrize("g", PRIORS)
def test_looks_agree_with_the_vectorized_decisions(g):
    rng = np.random.default_rng(7)
    rows = np.concatenate(
        [rng.normal(mu, 1.0, (40, 25)) for mu in (-1.2, -0.5, 0.0, 0.1, 0.5, 1.2)]
        + [rng.standard_t(3, (20, 25)), rng.normal(0.05, 0.1, (20, 25))]
        + [rng.normal(mu, 1.0, (10, 25)) for mu in (-30.0, 10.0, 30.0)]
    )
    for min_effect, min_seeds in [(None, 2), (0.5, 3), (0.3, 6)]:
        codes, n_at = at.first_decisions(rows, alpha=0.05, min_effect=min_effect, min_seeds=min_seeds, g=g)
        seen = set()
        for row, code, n in zip(rows, codes, n_at, strict=True):
            seq = at.looks(row, alpha=0.05, min_effect=min_effect, min_seeds=min_seeds, g=g)
            assert seq[-1].decision == at.DECISIONS[code] and seq[-1].n == n
            assert all(lk.decision == at.OPEN for lk in seq[:-1])
            seen.add(seq[-1].decision)
        assert seen >= {at.A_HIGHER, at.B_HIGHER, at.OPEN}
        if min_effect is not None:
            assert at.EQUIVALENT in seen


def test_decisions_are_sticky():
    # clearly A higher early, then the sign turns: the first decisive look ends it
    d = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02, 0.98] + [-5.0] * 30
    seq = at.looks(d, alpha=0.05)
    assert seq[-1].decision == at.A_HIGHER and seq[-1].n <= 8
    assert at.look(d, alpha=0.05).decision != at.A_HIGHER  # a look at all of it would not say so
    codes, n_at = at.first_decisions(np.array([d]), alpha=0.05)
    assert at.DECISIONS[codes[0]] == at.A_HIGHER and n_at[0] == seq[-1].n


def test_min_seeds_is_respected():
    d = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0]
    g = SINGLE
    assert at.looks(d, alpha=0.05, min_seeds=2, g=g)[-1].n == at.earliest_decision(0.05, g) == 6
    seq = at.looks(d, alpha=0.05, min_seeds=9, g=g)
    assert [lk.n for lk in seq] == [2, 3, 4, 5, 6, 7, 8, 9] and seq[-1].decision == at.A_HIGHER
    assert at.look(d[:8], alpha=0.05, min_seeds=9, g=g).decision == at.OPEN
    assert at.look(d[:8], alpha=0.05, min_seeds=8, g=g).decision == at.A_HIGHER
    assert at.first_decisions(np.array([d]), alpha=0.05, min_seeds=9, g=g)[1][0] == 9
    # the default mixture decides these (a difference of 100 sd) at its earliest n, 3
    assert at.looks(d, alpha=0.05, min_seeds=2)[-1].n == at.earliest_decision(0.05) == 3
    assert at.looks(d, alpha=0.05, min_seeds=5)[-1].n == 5
    assert at.first_decisions(np.array([d]), alpha=0.05, min_seeds=5)[1][0] == 5


def test_earliest_decision():
    for alpha, g in [
        (0.05, 0.5),
        (0.05 / 6, 0.5),
        (0.01, 2.0),
        (0.2, 0.1),
        (0.05, at.DEFAULT_PRIOR_SCALE),
        (0.025, at.DEFAULT_PRIOR_SCALE),
        (0.05 / 6, at.DEFAULT_PRIOR_SCALE),
        (0.001, MIXTURE_4),
    ]:
        n = at.earliest_decision(alpha, g)
        assert math.isinf(at.cs_radius(n - 1, 1.0, alpha, g)) and math.isfinite(
            at.cs_radius(n, 1.0, alpha, g)
        )
    assert at.earliest_decision(0.05 / 6, 0.5) == 8
    assert at.earliest_decision(0.025, 0.5) == 7
    # the default mixture: a verdict is possible from 3 seeds at α = 0.05 and 0.025 (4 at 0.05/6)
    assert [at.earliest_decision(a) for a in (0.05, 0.025, 0.05 / 6)] == [3, 3, 4]


def test_a_huge_difference_is_decided_within_four_seeds():
    # mean 30 sd (sample sd exactly 1), n = 4, α = 0.025: the mixture decides, g = 0.5 alone cannot yet
    z = np.array([-1.5, -0.5, 0.5, 1.5])
    d = 30.0 + z / z.std(ddof=1)
    lk = at.look(d, alpha=0.025, min_seeds=3)
    assert lk.decision == at.A_HIGHER and lk.cs_low > 0
    assert at.looks(d, alpha=0.025, min_seeds=3)[-1].n <= 4
    assert at.look(d, alpha=0.025, min_seeds=3, g=SINGLE).decision == at.OPEN
    # 10 sd at n = 4 too (the CS half-width there is about 4 sd at α = 0.025)
    assert at.look(10.0 + z / z.std(ddof=1), alpha=0.025, min_seeds=3).decision == at.A_HIGHER
    assert at.cs_radius(4, 1.0, 0.025) < 10 < at.cs_radius(3, 1.0, 0.025)


def test_describe_prior():
    assert at.describe_prior(0.5) == "g = 0.5"
    assert at.describe_prior() == "mixture of g = 0.5 (80 %), 16 (10 %), 256 (10 %)"
    assert at.describe_prior(MIXTURE_4) == "mixture of g = 0.25 (40 %), 1 (40 %), 32 (10 %), 512 (10 %)"
    assert at.describe_prior(((1.0, 1 / 3), (4.0, 2 / 3))) == "mixture of g = 1 (33.3 %), 4 (66.7 %)"


def test_equivalence_needs_the_cs_inside_the_band():
    d = np.random.default_rng(5).normal(0.0, 0.2, 60)
    seq = at.looks(d, alpha=0.05, min_effect=0.3)
    last = seq[-1]
    assert last.decision == at.EQUIVALENT and last.cs_low > -0.3 and last.cs_high < 0.3
    assert at.looks(d, alpha=0.05)[-1].decision == at.OPEN  # without a band it stays open


def test_zero_spread_is_undefined_not_certain():
    lk = at.look([0.5] * 10, alpha=0.05)
    assert lk.sd == 0.0 and math.isnan(lk.t) and math.isnan(lk.e_value)
    assert (lk.cs_low, lk.cs_high, lk.decision) == (-math.inf, math.inf, at.OPEN)
    assert at.first_decisions(np.full((1, 10), 0.5), alpha=0.05)[0][0] == 0
    assert math.isnan(at.seeds_still_needed(lk))


def test_look_fields_and_json():
    lk = at.look([0.2, 0.5, -0.1, 0.4], alpha=0.01)
    d = np.array([0.2, 0.5, -0.1, 0.4])
    assert lk.n == 4 and lk.mean == pytest.approx(d.mean()) and lk.sd == pytest.approx(d.std(ddof=1))
    assert lk.t == pytest.approx(stats.ttest_1samp(d, 0).statistic)
    assert lk.e_value == pytest.approx(at.e_value(d)) and lk.alpha == 0.01
    out = lk.as_dict()
    assert json.loads(json.dumps(out, allow_nan=False))["n"] == 4
    empty = at.look([], alpha=0.05).as_dict()
    assert empty["mean"] is None and empty["cs_low"] is None and empty["e_value"] == 1.0
    assert at.looks([1.0], alpha=0.05) == []


def test_seeds_still_needed():
    lk = at.look([0.3, 0.9, 0.1, 0.7], alpha=0.05)  # mean 0.5, open at n = 4
    assert lk.decision == at.OPEN
    need = at.seeds_still_needed(lk)
    assert need > 4 and math.isfinite(need)
    # at that n the projected CS excludes 0, one seed earlier it does not
    assert at.cs_radius(int(need), lk.sd, 0.05) < lk.mean <= at.cs_radius(int(need) - 1, lk.sd, 0.05)
    # one scale: a wide band is fitted into as soon as the CS is finite at all
    assert at.seeds_still_needed([lk], min_effect=10.0, g=SINGLE) == at.earliest_decision(0.05, SINGLE)
    # a mixture's first finite CS (n = 3) can be wider than the band: then the projection goes on
    two = at.look([0.3, 0.9], alpha=0.05)  # mean 0.6, sd 0.42
    assert at.seeds_still_needed(two, min_effect=5.0, g=SINGLE) == at.earliest_decision(0.05, SINGLE)
    assert at.cs_radius(3, two.sd, 0.05) > 5.0 - two.mean > at.cs_radius(4, two.sd, 0.05)
    assert at.seeds_still_needed(two, min_effect=5.0) == 4
    zero = at.look([0.1, -0.1, 0.2, -0.2], alpha=0.05)
    assert at.seeds_still_needed(zero) == math.inf
    assert at.seeds_still_needed(zero, min_effect=0.5) < math.inf
    assert at.seeds_still_needed(lk, limit=5) == math.inf
    decided = at.looks([1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0], alpha=0.05)[-1]
    assert decided.decision == at.A_HIGHER
    assert at.seeds_still_needed(decided) == decided.n


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: at.look([1.0, 2.0], alpha=0.0), "alpha must be in"),
        (lambda: at.looks([1.0, 2.0], alpha=1.0), "alpha must be in"),
        (lambda: at.confidence_sequence([1.0, 2.0], alpha=-0.1), "alpha must be in"),
        (lambda: at.cs_radius(3, 1.0, 1.5), "alpha must be in"),
        (lambda: at.look([1.0, 2.0], alpha=0.05, min_effect=0.0), "min_effect must be"),
        (lambda: at.look([1.0, 2.0], alpha=0.05, min_effect=-1.0), "min_effect must be"),
        (lambda: at.first_decisions(np.zeros((2, 3)), alpha=0.05, min_effect=-1), "min_effect must be"),
        (lambda: at.e_value([1.0, 2.0], g=0.0), "prior scale g must be"),
        (lambda: at.look([1.0, 2.0], alpha=0.05, g=-1.0), "prior scale g must be"),
        (lambda: at.look([1.0, 2.0], alpha=0.05, min_seeds=0), "min_seeds must be"),
        (lambda: at.e_value([1.0, 2.0], g=((0.5, 0.5), (8.0, 0.4))), "weights must sum to 1"),
        (lambda: at.e_value([1.0, 2.0], g=((0.5, 0.5), (8.0, 0.5 + 1e-8))), "weights must sum to 1"),
        (lambda: at.cs_radius(5, 1.0, 0.05, g=((0.5, 0.9), (0.0, 0.1))), "prior scale g must be"),
        (lambda: at.looks([1.0, 2.0], alpha=0.05, g=((-1.0, 0.5), (2.0, 0.5))), "prior scale g must be"),
        (lambda: at.earliest_decision(0.05, ((math.inf, 1.0),)), "prior scale g must be"),
        (
            lambda: at.first_decisions(np.zeros((2, 3)), alpha=0.05, g=((0.5, 1.0), (2.0, 0.0))),
            "weights must be",
        ),
        (lambda: at.confidence_sequence([1.0, 2.0], 0.05, g=((0.5, 1.5), (2.0, -0.5))), "weights must be"),
        (lambda: at.describe_prior(()), "at least one"),
        (lambda: at.e_value([1.0, 2.0], g=((0.5,), (2.0, 1.0))), r"\(g, weight\) pair"),
        (lambda: at.e_value([1.0, 2.0], g="0.5"), "finite number > 0 or a tuple"),
        (lambda: at.alpha_each(0.05, 0), "number of comparisons k"),
        (lambda: at.alpha_each(2.0, 3), "alpha must be in"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
