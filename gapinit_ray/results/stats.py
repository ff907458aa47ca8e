"""Small-sample statistics for comparing arms over seeds: exact permutation tests, t intervals, Holm,
sample sizes, and the robust aggregates rliable recommends for few runs. Pure numpy/scipy, no I/O.

Why these and not a bootstrap: at 3-5 seeds a percentile bootstrap has very few distinct resamples (10
at n = 3) and its interval is far too narrow; it is used here only from :data:`BOOTSTRAP_MIN_N` seeds
on. The exact sign-flip test enumerates all 2^n sign patterns of the paired differences, so its p-value
is exact at any n, and it says plainly when n is too small for any verdict: at n = 3 the smallest
two-sided p it can give is 2/8 = 0.25.

Every function takes plain sequences of floats and returns floats (NaN when the statistic is undefined:
fewer than 2 values, a zero spread where one is divided by).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

#: the percentile bootstrap is reported only from this many seeds per arm on. Below it the percentile
#: interval of a mean under-covers badly (it ignores the t distribution's heavier tails and has few
#: distinct resamples: 10 at n = 3, 126 at n = 5, 92,378 at n = 10); from ~20 on its coverage of a
#: mean is close to nominal for the well-behaved metrics here (Efron & Tibshirani 1993, ch. 13-14).
BOOTSTRAP_MIN_N = 20
#: up to this many sign patterns / relabelings the permutation tests enumerate all of them (exact);
#: above it they draw this many at random (Monte Carlo, seeded)
EXACT_LIMIT = 200_000
ALPHA = 0.05
POWER = 0.80


def _arr(x: Sequence[float]) -> np.ndarray:
    return np.asarray(list(x), dtype=float)


# --------------------------------------------------------------------------------- exact tests


def _two_sided(null: np.ndarray, observed: float, exact: bool) -> float:
    """scipy's two-sided permutation p-value: twice the smaller tail, capped at 1; values within a
    relative 1e-12 of the observed statistic count as ties (sums of the same floats in another order).
    Exact: the share of the null distribution; Monte Carlo: (count + 1) / (draws + 1)."""
    gamma = abs(observed) * 1e-12 + 1e-15
    less, greater = np.sum(null <= observed + gamma), np.sum(null >= observed - gamma)
    if exact:
        tails = less / len(null), greater / len(null)
    else:
        tails = (less + 1) / (len(null) + 1), (greater + 1) / (len(null) + 1)
    return float(min(1.0, 2 * min(tails)))


def sign_flip_test(d: Sequence[float], *, n_random: int = EXACT_LIMIT, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of mean(d) = 0.

    Under H0 (no difference between the arms) each paired difference is as likely to have either sign;
    the null distribution is the mean of d under every one of the 2^n sign patterns (the observed one
    included). Exact for 2^n <= ``n_random``, else Monte Carlo with ``n_random`` seeded draws. Equals
    ``scipy.stats.permutation_test((d,), mean, permutation_type="samples")``."""
    d = _arr(d)
    n = len(d)
    if n == 0:
        return math.nan
    if 2**n <= n_random:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        return _two_sided(signs @ d / n, float(d.mean()), exact=True)
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_random, n))
    return _two_sided(signs @ d / n, float(d.mean()), exact=False)


def min_sign_flip_p(n: int) -> float:
    """The smallest two-sided p-value the exact sign-flip test can give with n pairs: 2 / 2^n."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


def permutation_test(
    x: Sequence[float], y: Sequence[float], *, n_random: int = EXACT_LIMIT, seed: int = 0
) -> float:
    """Two-sided p-value of the two-sample permutation test of mean(x) = mean(y) (unpaired arms).

    The null distribution is mean(x) − mean(y) over every split of the pooled values into groups of the
    two sizes when there are at most ``n_random`` of them (exact), else over ``n_random`` seeded random
    relabelings. Equals ``scipy.stats.permutation_test((x, y), mean(x) - mean(y),
    permutation_type="independent")``."""
    x, y = _arr(x), _arr(y)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return math.nan
    pooled = np.concatenate([x, y])
    total = pooled.sum()
    observed = float(x.mean() - y.mean())
    if math.comb(n1 + n2, n1) <= n_random:
        idx = np.array(list(itertools.combinations(range(n1 + n2), n1)))
        sums = pooled[idx].sum(axis=1)
        return _two_sided(sums / n1 - (total - sums) / n2, observed, exact=True)
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n_random, n1 + n2)), axis=1)[:, :n1]
    sums = pooled[perms].sum(axis=1)
    return _two_sided(sums / n1 - (total - sums) / n2, observed, exact=False)


def min_permutation_p(n1: int, n2: int) -> float:
    """The smallest two-sided p-value the exact two-sample permutation test can give (its null has
    C(n1+n2, n1) equally likely splits; at best one, and its mirror when n1 = n2, are as extreme)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))


# ------------------------------------------------------------------------------------ intervals


def t_interval_paired(d: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean paired difference: mean ± t_{n-1} · sd / √n."""
    from scipy import stats

    d = _arr(d)
    n = len(d)
    if n < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / math.sqrt(n)
    return float(d.mean() - half), float(d.mean() + half)


def welch_interval(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Welch interval of mean(x) − mean(y), Welch–Satterthwaite degrees of freedom (the interval that
    goes with ``scipy.stats.ttest_ind(x, y, equal_var=False)``)."""
    from scipy import stats

    x, y = _arr(x), _arr(y)
    n1, n2 = len(x), len(y)
    if n1 < 2 or n2 < 2:
        return math.nan, math.nan
    v1, v2 = x.var(ddof=1) / n1, y.var(ddof=1) / n2
    se = math.sqrt(v1 + v2)
    diff = float(x.mean() - y.mean())
    if se == 0:
        return diff, diff
    df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    return diff - half, diff + half


# ------------------------------------------------------------------------------ multiple tests


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaNs stay NaN and do not
    count as tests."""
    p = _arr(pvalues)
    out = np.full(len(p), math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]


# ---------------------------------------------------------------------------------- sample size


def seeds_needed(
    effect: float,
    sd: float,
    *,
    paired: bool = True,
    alpha: float = ALPHA,
    power: float = POWER,
    limit: int = 10_000,
) -> float:
    """How many seeds (pairs, or per arm when unpaired) a two-sided t-test at ``alpha`` needs to detect
    a difference ``effect`` with probability ``power`` when the (paired-difference, or per-arm) sd is
    ``sd``. Exact noncentral-t power (as G*Power computes it), not the normal approximation. NaN when
    undefined (no spread estimate), inf when the effect is 0 or more than ``limit`` seeds would be needed.
    """
    from scipy import stats

    if not (sd > 0) or math.isnan(effect):
        return math.nan
    if effect == 0:
        return math.inf
    d = abs(effect) / sd
    for n in range(2, limit + 1):
        if paired:
            df, nc = n - 1, d * math.sqrt(n)
        else:
            df, nc = 2 * n - 2, d * math.sqrt(n / 2)
        crit = stats.t.ppf(1 - alpha / 2, df)
        achieved = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
        if achieved >= power:
            return float(n)
    return math.inf


# ----------------------------------------------------------------------------- robust aggregates


def iqm(x: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50 % (``scipy.stats.trim_mean(x, 0.25)``), the
    aggregate rliable (Agarwal et al. 2021) recommends over the mean for few runs. At n < 4 nothing is
    trimmed and it is the mean."""
    from scipy import stats

    x = _arr(x)
    return float(stats.trim_mean(x, 0.25)) if len(x) else math.nan


def prob_superior(
    x: Sequence[float], y: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """P(X > Y) for a random run of each arm (ties count 1/2: the Mann-Whitney U / (n1·n2), rliable's
    "probability of improvement"), with the Hanley-McNeil (1982) normal-approximation interval, clipped
    to [0, 1]. At 3 seeds per arm that interval is wide, as it should be."""
    from scipy import stats

    x, y = _arr(x), _arr(y)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return math.nan, math.nan, math.nan
    diff = x[:, None] - y[None, :]
    a = float(np.mean((diff > 0) + 0.5 * (diff == 0)))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2)
    half = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(max(var, 0.0))
    if half == 0:  # all-or-nothing at tiny n: the approximation degenerates; say so by the widest bound
        half = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(0.25 / min(n1, n2))
    return a, max(0.0, a - half), min(1.0, a + half)
