"""Anytime-valid decisions for a sequential seed comparison: look after every seed, stop when it is clear.

A sweep compares two arms over paired seeds, d_i = metric(A, seed i) − metric(B, seed i), and looks
after every new seed. A fixed-n test (:func:`~gapinit_ray.results.stats.t_interval_paired`) looked at
after every seed is wrong far more often than its nominal α: with 50 looks at α = 0.05 a true null is
"significant" at some look about a quarter of the time. What is used here instead is a *confidence
sequence*: intervals CS_n that cover the true mean at every n at once with probability ≥ 1 − α, so a
verdict read off any look -- the first clear one, or any other chosen by any rule that only uses what has
been seen -- is wrong with probability ≤ α.

The method: the t-mixture confidence sequence (Lai 1976, "On confidence sequences"). Its Bayes factor is
the "safe t-test" e-variable (Grünwald, de Heide & Koolen; Pérez-Ortiz, Lardy, de Heide & Grünwald 2024,
"E-statistics, group invariance and anytime-valid testing"), and Rouder et al. (2009)'s Bayes factor
with a normal instead of a Cauchy prior: a Gaussian prior N(0, g) on the standardized effect μ/σ and the
right-Haar prior 1/σ on σ under both hypotheses. With n ≥ 2 differences, mean m, sd s (ddof = 1),
ν = n − 1 and t(μ0) = (m − μ0) / (s/√n), the e-value against H0: mean = μ0 is

    E_n(μ0) = (1 + n g)^(-1/2) · [ (1 + t²/ν) / (1 + t²/(ν (1 + n g))) ]^(n/2).

Under H0 and normal differences it is the likelihood ratio of the maximal scale invariant (the vector
of the d_i − μ0 up to a common positive factor), so it is a nonnegative martingale with E_1 = 1 in the
filtration that invariant generates, and Ville's inequality gives P(∃ n: E_n(μ) ≥ 1/α) ≤ α.

Inverting it. Write x = t²/ν and G = 1 + n g. The bracket (1 + x)/(1 + x/G) increases with x from 1 to
G, so E_n(μ0) ≥ 1/α  ⇔  (1 + x)/(1 + x/G) ≥ r with r = ((1/α) √G)^(2/n)  ⇔  x (1 − r/G) ≥ r − 1. Since
r > 1, that has a solution only when r < G, and then it is x ≥ (r − 1)/(1 − r/G). Hence

    CS_n = {μ0: E_n(μ0) < 1/α} = m ± √c_n · s/√n,   c_n = ν (r − 1) / (1 − r/(1 + n g))   if r < 1 + n g,

and the whole line otherwise (no μ0 can be rejected at that n: the largest E_n can ever reach is
G^((n−1)/2), short of 1/α). For n < 2 the invariant carries no information, E = 1 and the CS is the
whole line. (This c_n is the radius of Lindon et al. 2024's linear-model CS specialised to one intercept.)

A mixture over scales. With one g, the evidence n differences can give is capped at (1 + n g)^((n−1)/2):
at g = 0.5 no verdict is possible before 6 seeds at α = 0.05 (7 at 0.025) however large the difference,
while an init that does not train against one that does differs by 10-50 sd. The prior can therefore be
a mixture, g = ((g_1, w_1), …, (g_K, w_K)) with w_j > 0 and Σ w_j = 1, and

    E_n(μ0) = Σ_j w_j · E_n(μ0; g_j).

An average of e-processes on the same (scale-invariant) filtration is an e-process (it is the Bayes factor
of the mixture prior, and again a nonnegative martingale with E_1 = 1), so Ville's inequality still gives
P(∃ n: E_n(μ) ≥ 1/α) ≤ α. Every term increases with x = t²/ν, so the CS is again m ± √c_n · s/√n, now
with c_n = ν x_n where Σ_j w_j E_n(x_n; g_j) = 1/α, solved numerically (bisection on log x, bracketed by
the single-scale closed forms: x_n lies between min_j x_j(α) and min_j x_j(α w_j)), and the whole line
when Σ_j w_j (1 + n g_j)^((n−1)/2) ≤ 1/α. A small weight on a large g makes an early verdict possible for
a huge effect at a small cost elsewhere: the weight w on g = 0.5 costs log(1/w) of evidence there, as if
α were α·w for that component alone. A plain float g is one scale, with the closed form above.

Decisions, at looks with n ≥ ``min_seeds`` (and sticky: the first decisive look ends the comparison):
"a_higher" when the CS lies above 0, "b_higher" when below 0, "equivalent" when a smallest effect that
matters δ is given and the CS lies inside (−δ, δ), else "open". As the CS covers the true mean at all n
simultaneously with probability ≥ 1 − α, each verdict is wrong with probability ≤ α whatever the
stopping rule. K comparisons at once use α/K each (:func:`alpha_each`, Bonferroni), valid under any
dependence, e.g. comparisons that share an arm.

What it assumes: normal differences (any mean, any sd, unknown). ``python -m benchmarks.sequential_sim``
(benchmarks/results/sequential_sim.json) measures it with the default mixture at α = 0.05 over up to 50
looks: with identical arms (differences symmetric) the false directional rate stayed at 0.8-2.3 % for
normal, t(3), log-normal and "some seeds collapse" noise, and 1.0-1.9 % family-wise for 3 and 6
comparisons at once (Bonferroni). Skewed differences with mean 0 break it: centred log-normal differences
gave 6.9 % (σ_log = 0.5) and 21 % (σ_log = 1) false "B higher" (the rare large positive differences are
missing from most early prefixes, whose mean is then below 0 with a small sd). Equal means with
different shapes (one arm's runs sometimes collapse) gave 2.6 %. Where two arms may differ in shape, not
only in location, read a verdict together with the distribution of the differences. A verdict at 3-4
seeds (possible with the mixture) rests on an sd estimated from 2-3 degrees of freedom: exact for
normal differences, but a metric that is rounded or saturates can give differences that are nearly
equal by accident, and then a small sd reads as a huge effect.

Independent implementations: ``savvi`` 0.3.1 (Lindon et al.'s anytime-valid linear models; last release
October 2024, no commit since November 2024) has the same Bayes factor and CS for a regression
coefficient; tests/results/test_anytime.py checks its formula against this one (savvi's
``LinearRegression`` class itself uses ν = n − p − 1 degrees of freedom, one fewer than the t statistic
it divides by, so its intercept-only CS differs from this at small n). ``expectation`` 0.6.1 uses a
normal mixture with a plug-in variance (not the t-mixture; not anytime-valid with unknown σ) and
``confseq`` 0.0.11 has no t-test. The tests therefore also check the e-value against numerical
quadrature of the two marginal likelihoods.

Conventions as in :mod:`~gapinit_ray.results.stats`: plain sequences of floats in, floats out; NaN where
a statistic is undefined; a CS that excludes nothing is (−inf, inf). Pure numpy, no I/O.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

A_HIGHER, B_HIGHER, EQUIVALENT, OPEN, UNRESOLVED = "a_higher", "b_higher", "equivalent", "open", "unresolved"
#: the decision codes of :func:`first_decisions`: DECISIONS[code] is the decision
DECISIONS = (OPEN, A_HIGHER, B_HIGHER, EQUIVALENT)
_OPEN, _A, _B, _EQ = range(4)

#: A prior on the standardized effect μ/σ: one scale g (the variance of a normal prior), or a mixture,
#: a tuple of (g, weight) pairs with weights > 0 summing to 1.
PriorScale = float | tuple[tuple[float, float], ...]

#: The default prior: 80 % on g = 0.5 (prior sd 0.71 σ, between δ and 2δ, the best single scale), 10 % on
#: g = 16 (sd 4 σ) and 10 % on g = 256 (sd 16 σ). From the benchmark (benchmarks/sequential_sim.py, part
#: 4; σ_d = 1, δ = 0.5, 20,000 runs per cell): mean seeds at δ 38.4 against 37.3 for g = 0.5 alone (+3 %,
#: power 85.6 % against 87.1 %) and at 2δ 14.1 against 13.9 (+1 %); a difference of 30 sd is decided at
#: 3.3 seeds on average at α = 0.025 (median 3, never more than 4) and 10 sd at 4.1 (median 4), where
#: g = 0.5 alone needs 7; a verdict is possible from n = 3 at α = 0.05 and 0.025 (4 at 0.05/6). Of the
#: mixtures compared, ((0.5, 0.8), (8, 0.1), (128, 0.1)) costs the same and needs 3.8 seeds at 30 sd;
#: ((0.25, 0.4), (1, 0.4), (32, 0.1), (512, 0.1)) is slightly faster for huge effects (3.2) but costs 4.5 %
#: at δ; 5 % weights on the large scales cost 1.5 % at δ but take 3.9 seeds at 30 sd. The null error
#: rate is the same for all (2.2-2.3 % at α = 0.05, normal). Validity holds for every prior fixed in
#: advance (never tune it on the data at hand).
DEFAULT_PRIOR_SCALE: PriorScale = ((0.5, 0.8), (16.0, 0.1), (256.0, 0.1))


# ------------------------------------------------------------------------------------- checks


def _check(alpha: float | None = None, g: PriorScale | None = None, min_effect: float | None = None) -> None:
    if alpha is not None and not (0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if g is not None:
        _mixture(g)
    if min_effect is not None and not (min_effect > 0 and math.isfinite(min_effect)):
        raise ValueError(f"min_effect must be a finite number > 0 (or None), got {min_effect!r}")


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_scale(g: object) -> float:
    if not (_is_number(g) and g > 0 and math.isfinite(g)):
        raise ValueError(f"the prior scale g must be a finite number > 0, got {g!r}")
    return float(g)


class _Mix(NamedTuple):
    """A prior as arrays: scales g_j and log weights (one scale of log weight 0 for a plain float)."""

    g: np.ndarray
    log_w: np.ndarray

    @property
    def single(self) -> bool:
        return len(self.g) == 1


def _mixture(g: PriorScale) -> _Mix:
    """The prior ``g`` checked and as arrays: a float is one scale of weight 1; a mixture is a non-empty
    sequence of (g, weight) pairs, every g and weight finite and > 0, weights summing to 1 within 1e-9
    (then divided by their sum)."""
    if _is_number(g):
        return _Mix(np.array([_check_scale(g)]), np.zeros(1))
    if isinstance(g, (str, bytes)) or not isinstance(g, Sequence):
        raise ValueError(
            f"the prior scale g must be a finite number > 0 or a tuple of (g, weight) pairs, got {g!r}"
        )
    if len(g) == 0:
        raise ValueError("a mixture prior needs at least one (g, weight) pair, got none")
    scales, weights = [], []
    for pair in g:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"each component of a mixture prior must be a (g, weight) pair, got {pair!r}")
        scale, weight = pair
        scales.append(_check_scale(scale))
        if not (_is_number(weight) and weight > 0 and math.isfinite(weight)):
            raise ValueError(f"mixture weights must be finite numbers > 0, got {weight!r} in {g!r}")
        weights.append(float(weight))
    total = math.fsum(weights)
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"mixture weights must sum to 1 (within 1e-9), got {total!r} in {g!r}")
    return _Mix(np.array(scales), np.log(np.array(weights) / total))


def describe_prior(g: PriorScale = DEFAULT_PRIOR_SCALE) -> str:
    """A short text of the prior for an audit log: "g = 0.5", or "mixture of g = 0.5 (80 %), 16 (10 %),
    256 (10 %)" (the default)."""
    mix = _mixture(g)
    if _is_number(g):
        return f"g = {float(g):g}"
    parts = [f"{gj:g} ({100 * math.exp(lw):.3g} %)" for gj, lw in zip(mix.g, mix.log_w, strict=True)]
    return "mixture of g = " + ", ".join(parts)


def _check_min_seeds(min_seeds: int) -> None:
    if int(min_seeds) != min_seeds or min_seeds < 1:
        raise ValueError(f"min_seeds must be an integer ≥ 1, got {min_seeds!r}")


def earliest_decision(alpha: float, g: PriorScale = DEFAULT_PRIOR_SCALE) -> int:
    """The smallest n at which the level-``alpha`` CS can exclude anything at all: the first n with
    Σ_j w_j (1 + n g_j)^((n − 1)/2) > 1/α, the most evidence n differences can give (its limit as
    t² → ∞). 3 at α = 0.05 and 0.025 with the default mixture (6 and 7 with g = 0.5 alone); below it
    every look is open, whatever the differences. It is reached only for an enormous t: see the
    benchmark for the seeds a difference of 10 or 30 sd actually needs."""
    _check(alpha=alpha)
    mix = _mixture(g)
    n = 2
    while _log_sup(np.array(float(n)), mix) <= -math.log(alpha):
        n += 1
    return n


def alpha_each(alpha: float, k: int) -> float:
    """The level of each of ``k`` comparisons so that the chance of any wrong verdict is ≤ ``alpha``
    (Bonferroni: valid under any dependence between the comparisons, e.g. ones that share an arm)."""
    _check(alpha=alpha)
    if int(k) != k or k < 1:
        raise ValueError(f"the number of comparisons k must be an integer ≥ 1, got {k!r}")
    return alpha / k


# ------------------------------------------------------------------------------- vectorized core


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """log Σ exp(a) over the last axis (exactly a[..., 0] for one column)."""
    m = np.max(a, axis=-1)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return np.where(np.isfinite(m), m_safe + np.log(np.sum(np.exp(a - m_safe[..., None]), axis=-1)), m)


def _log_sup(n: np.ndarray, mix: _Mix) -> np.ndarray:
    """log of the largest E_n can reach (t² → ∞): log Σ_j w_j (1 + n g_j)^((n − 1)/2)."""
    n = np.asarray(n, dtype=float)
    return _logsumexp(mix.log_w + 0.5 * (n[..., None] - 1) * np.log1p(n[..., None] * mix.g))


def _log_e_single(t2: np.ndarray, n: np.ndarray, g: float) -> np.ndarray:
    """log E_n at one scale g (the module docstring's closed form)."""
    t2, n = np.asarray(t2, dtype=float), np.asarray(n, dtype=float)
    nu = n - 1
    big = 1 + n * g
    with np.errstate(invalid="ignore", divide="ignore"):
        finite = -0.5 * np.log(big) + 0.5 * n * (np.log1p(t2 / nu) - np.log1p(t2 / (nu * big)))
    return np.where(np.isinf(t2), 0.5 * nu * np.log(big), finite)


def _log_e(t2: np.ndarray, n: np.ndarray, g: PriorScale | _Mix) -> np.ndarray:
    """log E_n for squared t statistics ``t2`` at sizes ``n`` (≥ 2), elementwise; t2 = inf gives the
    limit log Σ_j w_j (1 + n g_j)^((n−1)/2)."""
    mix = g if isinstance(g, _Mix) else _mixture(g)
    if mix.single:
        return _log_e_single(t2, n, float(mix.g[0]))
    t2, n = np.broadcast_arrays(np.asarray(t2, dtype=float), np.asarray(n, dtype=float))
    per = _log_e_single(t2[..., None], n[..., None], mix.g)  # broadcasts over the scales
    return _logsumexp(mix.log_w + per)


def _log_e_of_log_x(u: np.ndarray, n: np.ndarray, mix: _Mix) -> np.ndarray:
    """log Σ_j w_j E_n(g_j) as a function of u = log(t²/ν), overflow-free for any u (u, n: same
    shape)."""
    n = n[..., None]
    log_big = np.log1p(n * mix.g)
    per = -0.5 * log_big + 0.5 * n * (
        np.logaddexp(0.0, u[..., None]) - np.logaddexp(0.0, u[..., None] - log_big)
    )
    return _logsumexp(mix.log_w + per)


def _log_x_single(n: np.ndarray, log_big: np.ndarray, log_level: float) -> np.ndarray:
    """log x with x = t²/ν where one scale's E_n reaches exp(log_level): x = (r − 1)/(1 − r/G),
    r = (exp(log_level) √G)^(2/n), G = exp(log_big); inf where r ≥ G (never reached)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        log_r = (2.0 / n) * (log_level + 0.5 * log_big)
        x = np.expm1(log_r) / -np.expm1(log_r - log_big)
        return np.where(log_r < log_big, np.log(x), math.inf)


def _c_mixture(n: np.ndarray, alpha: float, mix: _Mix, iterations: int = 80) -> np.ndarray:
    """c_n = ν x_n with Σ_j w_j E_n(g_j)(x_n) = 1/α, by bisection on u = log x over the distinct n
    (≥ 2, where the supremum exceeds 1/α; inf elsewhere). Bracket: below min_j x_j(α) every E_j < 1/α
    (so the average is too); at min_j x_j(α w_j) one term alone reaches 1/α (falling back to u = 2000
    when no single term can)."""
    n = np.asarray(n, dtype=float)
    out = np.full(n.shape, math.inf)
    level = -math.log(alpha)
    valid = n >= 2
    if not valid.any():
        return out
    un, inv = np.unique(n[valid], return_inverse=True)
    ok = _log_sup(un, mix) > level
    c = np.full(un.shape, math.inf)
    if ok.any():
        m = un[ok]
        log_big = np.log1p(m[:, None] * mix.g)
        lo = np.min(_log_x_single(m[:, None], log_big, level), axis=1)
        hi = np.min(_log_x_single(m[:, None], log_big, level - mix.log_w), axis=1)
        hi = np.where(np.isfinite(hi), hi, 2000.0)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            above = _log_e_of_log_x(mid, m, mix) >= level
            hi = np.where(above, mid, hi)
            lo = np.where(above, lo, mid)
        with np.errstate(over="ignore"):
            c[ok] = (m - 1) * np.exp(0.5 * (lo + hi))
    out[valid] = c[inv.ravel()]
    return out


@functools.lru_cache(maxsize=4096)
def _c_one(n: float, alpha: float, g: tuple[float, ...], log_w: tuple[float, ...]) -> float:
    """:func:`_c_mixture` at one n, cached."""
    return float(_c_mixture(np.array(n), alpha, _Mix(np.array(g), np.array(log_w))))


def _radii(n: np.ndarray, sd: np.ndarray, alpha: float, g: PriorScale = DEFAULT_PRIOR_SCALE) -> np.ndarray:
    """The CS half-widths √c_n · sd/√n, elementwise over sizes ``n`` and sds ``sd`` (broadcast); inf where
    n < 2, where sd is not > 0 (NaN, or 0: see :func:`cs_radius`) and where no μ0 can be excluded (the
    supremum of E_n is ≤ 1/α). One scale: the closed form; a mixture: :func:`_c_mixture`."""
    mix = _mixture(g)
    n = np.asarray(n, dtype=float)
    sd = np.asarray(sd, dtype=float)
    if mix.single:
        g1 = float(mix.g[0])
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            log1png = np.log1p(n * g1)
            log_r = (2.0 / n) * (-math.log(alpha) + 0.5 * log1png)
            # r − 1 and 1 − r/(1+ng), each without cancellation
            c = (n - 1) * np.expm1(log_r) / -np.expm1(log_r - log1png)
            rad = np.sqrt(c) * sd / np.sqrt(n)
        ok = (n >= 2) & (sd > 0) & (log_r < log1png)
        return np.where(ok, rad, math.inf)
    if n.ndim == 0:  # one look: its c_n is cached, a sequence of looks asks for each n once
        c = np.asarray(_c_one(float(n), float(alpha), tuple(mix.g.tolist()), tuple(mix.log_w.tolist())))
    else:
        c = _c_mixture(n, alpha, mix)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        rad = np.sqrt(c) * sd / np.sqrt(n)
    ok = (n >= 2) & (sd > 0) & np.isfinite(c)
    return np.where(ok, rad, math.inf)


def _decide(low: np.ndarray, high: np.ndarray, min_effect: float | None) -> np.ndarray:
    """Decision codes from CS bounds, elementwise (no min_seeds here)."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    code = np.full(np.broadcast(low, high).shape, _OPEN, dtype=np.int8)
    if min_effect is not None:
        code[(low > -min_effect) & (high < min_effect)] = _EQ
    code[low > 0] = _A
    code[high < 0] = _B
    return code


def _prefix_stats(D: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n, mean and sd (ddof = 1; NaN at n = 1) of every prefix of every row of ``D``. Sums are taken
    about each row's first value, so a row whose values are all equal has sd exactly 0."""
    D = np.atleast_2d(np.asarray(D, dtype=float))
    n = np.arange(1, D.shape[1] + 1, dtype=float)
    x = D - D[:, :1]
    s1, s2 = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
    mean_x = s1 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.maximum(s2 - n * mean_x * mean_x, 0.0) / (n - 1)
    var[:, 0] = math.nan
    return n, mean_x + D[:, :1], np.sqrt(var)


def first_decisions(
    D: np.ndarray,
    *,
    alpha: float,
    min_effect: float | None = None,
    min_seeds: int = 2,
    g: PriorScale = DEFAULT_PRIOR_SCALE,
) -> tuple[np.ndarray, np.ndarray]:
    """The first decision of each row of ``D`` (rows: comparisons, columns: seeds in order, all finite),
    looking after every seed from ``min_seeds`` on, as :func:`looks` would. Returns (codes, n): codes
    index :data:`DECISIONS` (0 = still open after the last column), n is the number of seeds at the
    decision (the number of columns for rows left open)."""
    _check(alpha=alpha, g=g, min_effect=min_effect)
    _check_min_seeds(min_seeds)
    D = np.atleast_2d(np.asarray(D, dtype=float))
    rows, cols = D.shape
    if cols == 0:
        return np.zeros(rows, dtype=np.int8), np.zeros(rows, dtype=int)
    n, mean, sd = _prefix_stats(D)
    rad = _radii(n, sd, alpha, g)
    code = _decide(mean - rad, mean + rad, min_effect)
    code[:, n < min_seeds] = _OPEN
    decided = code != _OPEN
    first = np.where(decided.any(axis=1), decided.argmax(axis=1), cols - 1)
    return code[np.arange(rows), first], first + 1


# ------------------------------------------------------------------------------------ one series


def _moments(d: Sequence[float]) -> tuple[int, float, float]:
    d = np.asarray(list(d), dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    sd = float(np.std(d, ddof=1)) if n > 1 else math.nan
    if n > 1 and np.all(d == d[0]):
        sd = 0.0  # exactly: np.std of equal values can be a few ulp above 0
    return n, mean, sd


def _t(n: int, mean: float, sd: float, mu0: float) -> float:
    if n < 2 or not (sd > 0):
        return math.nan
    return (mean - mu0) / (sd / math.sqrt(n))


def e_value(d: Sequence[float], mu0: float = 0.0, g: PriorScale = DEFAULT_PRIOR_SCALE) -> float:
    """E_n(μ0): the evidence of the differences ``d`` against "their mean is ``mu0``" (see the module
    docstring). 1 for fewer than 2 differences (no evidence either way); NaN when their sd is 0."""
    _check(g=g)
    n, mean, sd = _moments(d)
    if n < 2:
        return 1.0
    t = _t(n, mean, sd, mu0)
    if math.isnan(t):
        return math.nan
    return float(np.exp(_log_e(t * t, n, g)))


def cs_radius(n: int, sd: float, alpha: float, g: PriorScale = DEFAULT_PRIOR_SCALE) -> float:
    """Half-width of the level-``alpha`` confidence sequence after ``n`` differences of sd ``sd``:
    √c_n · sd/√n (module docstring); inf when n < 2, when no μ0 can be excluded at this n, and when sd
    is NaN or 0."""
    # sd = 0 (every difference equal) is treated as undefined, not as a zero-width CS: a metric that did
    # not move between paired runs gives no evidence of its noise, and the t statistic it would give
    # (±inf) would turn two identical rounded values into a certain verdict.
    _check(alpha=alpha, g=g)
    return float(_radii(n, sd, alpha, g))


def confidence_sequence(
    d: Sequence[float], alpha: float, g: PriorScale = DEFAULT_PRIOR_SCALE
) -> tuple[float, float]:
    """The level-``alpha`` confidence sequence for the mean of ``d`` at n = len(d): (low, high),
    (−inf, inf) when undefined."""
    _check(alpha=alpha, g=g)
    n, mean, sd = _moments(d)
    rad = float(_radii(n, sd, alpha, g))
    if math.isinf(rad):
        return -math.inf, math.inf
    return mean - rad, mean + rad


@dataclass(frozen=True)
class Look:
    """What one look at n paired differences says."""

    n: int  # pairs (seeds) used at this look
    mean: float  # mean difference (NaN for n = 0)
    sd: float  # sd of the differences, ddof = 1 (NaN for n < 2)
    t: float  # t statistic against 0 (NaN when undefined: n < 2 or sd = 0)
    e_value: float  # E_n(0): evidence against "no difference" (1 for n < 2, NaN when sd = 0)
    cs_low: float  # the confidence sequence at this n (-inf/inf when undefined)
    cs_high: float
    alpha: float  # the level this comparison uses (alpha_each)
    decision: str  # OPEN, A_HIGHER, B_HIGHER or EQUIVALENT (never UNRESOLVED: a sweep-level outcome)

    def as_dict(self) -> dict:
        """JSON-safe: NaN and ±inf become None (JSON has neither; a None bound means unbounded)."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }


def look(
    d: Sequence[float],
    *,
    alpha: float,
    min_effect: float | None = None,
    min_seeds: int = 2,
    g: PriorScale = DEFAULT_PRIOR_SCALE,
) -> Look:
    """One look at all of ``d``: its statistics, confidence sequence and decision (OPEN below
    ``min_seeds`` differences whatever the CS says)."""
    _check(alpha=alpha, g=g, min_effect=min_effect)
    _check_min_seeds(min_seeds)
    n, mean, sd = _moments(d)
    t = _t(n, mean, sd, 0.0)
    e = 1.0 if n < 2 else (math.nan if math.isnan(t) else float(np.exp(_log_e(t * t, n, g))))
    rad = float(_radii(n, sd, alpha, g))
    low, high = (-math.inf, math.inf) if math.isinf(rad) else (mean - rad, mean + rad)
    decision = OPEN if n < min_seeds else DECISIONS[int(_decide(low, high, min_effect))]
    return Look(n, mean, sd, t, e, low, high, alpha, decision)


def looks(
    d: Sequence[float],
    *,
    alpha: float,
    min_effect: float | None = None,
    min_seeds: int = 2,
    g: PriorScale = DEFAULT_PRIOR_SCALE,
) -> list[Look]:
    """A look at each prefix n = 2 … len(d) in order, ending at (and including) the first decisive one:
    decisions are sticky, seeds after it are not looked at. Empty when len(d) < 2."""
    d = list(d)
    out: list[Look] = []
    for n in range(2, len(d) + 1):
        out.append(look(d[:n], alpha=alpha, min_effect=min_effect, min_seeds=min_seeds, g=g))
        if out[-1].decision != OPEN:
            break
    return out


def seeds_still_needed(
    looks_or_last: Look | Sequence[Look],
    *,
    min_effect: float | None = None,
    min_seeds: int = 2,
    g: PriorScale = DEFAULT_PRIOR_SCALE,
    limit: int = 10_000,
) -> float:
    """For an open comparison: the smallest total number of seeds n' > n at which, if the mean and sd
    stayed as estimated at the (last) look, the CS would exclude 0 or fit inside ±``min_effect``. n
    itself when the look is already decisive; inf when no n' ≤ ``limit`` would do (e.g. a mean of
    exactly 0 and no min_effect); NaN when the sd is undefined (n < 2, or 0). A projection, not a
    promise: the estimates move as seeds come in."""
    last = looks_or_last if isinstance(looks_or_last, Look) else list(looks_or_last)[-1]
    _check(alpha=last.alpha, g=g, min_effect=min_effect)
    _check_min_seeds(min_seeds)
    if last.decision != OPEN:
        return float(last.n)
    if not (last.sd > 0):
        return math.nan
    start = max(last.n + 1, min_seeds)
    if start > limit:
        return math.inf
    n = np.arange(start, limit + 1)
    rad = _radii(n, last.sd, last.alpha, g)
    code = _decide(last.mean - rad, last.mean + rad, min_effect)
    hit = np.flatnonzero(code != _OPEN)
    return float(n[hit[0]]) if len(hit) else math.inf
