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

Decisions, at looks with n ≥ ``min_seeds`` (and sticky: the first decisive look ends the comparison):
"a_higher" when the CS lies above 0, "b_higher" when below 0, "equivalent" when a smallest effect that
matters δ is given and the CS lies inside (−δ, δ), else "open". As the CS covers the true mean at all n
simultaneously with probability ≥ 1 − α, each verdict is wrong with probability ≤ α whatever the
stopping rule. K comparisons at once use α/K each (:func:`alpha_each`, Bonferroni), valid under any
dependence, e.g. comparisons that share an arm.

What it assumes: normal differences (any mean, any sd, unknown). ``python -m benchmarks.sequential_sim``
(benchmarks/results/sequential_sim.json) measures it at α = 0.05 over up to 50 looks: with identical arms
(differences symmetric) the false directional rate stayed at 0.8-2.4 % for normal, t(3), log-normal and
"some seeds collapse" noise. Skewed differences with mean 0 break it: centred log-normal differences
gave 6.7 % (σ_log = 0.5) and 20 % (σ_log = 1) false "B higher" (the rare large positive differences are
missing from most early prefixes, whose mean is then below 0 with a small sd). Equal means with
different shapes (one arm's runs sometimes collapse) gave 2.7 %. Where two arms may differ in shape, not
only in location, read a verdict together with the distribution of the differences.

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

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

A_HIGHER, B_HIGHER, EQUIVALENT, OPEN, UNRESOLVED = "a_higher", "b_higher", "equivalent", "open", "unresolved"
#: the decision codes of :func:`first_decisions`: DECISIONS[code] is the decision
DECISIONS = (OPEN, A_HIGHER, B_HIGHER, EQUIVALENT)
_OPEN, _A, _B, _EQ = range(4)

#: g, the variance of the prior on the standardized effect μ/σ. It sets where the CS is tightest: effects
#: near √g·σ are found soonest, and how early any verdict is possible (:func:`earliest_decision`). The
#: benchmark (benchmarks/sequential_sim.py, part 3; σ = 1, δ = 0.5, α = 0.05, 20,000 runs per cell)
#: compared g = 0.1 … 2: mean seeds at δ 40.7 / 37.8 / 37.3 / 37.9 / 39.1 and at 2δ 18.5 / 15.2 / 13.9 /
#: 13.4 / 13.3 for g = 0.1 / 0.25 / 0.5 / 1 / 2. g = 0.5 (prior sd 0.71 σ, between δ and 2δ) is the
#: fewest at δ and within 4 % of the fewest at 2δ; the seeds vary by < 10 % over 0.25-2, so the choice
#: is not delicate. Validity holds for every g fixed in advance (never tune it on the data at hand).
DEFAULT_PRIOR_SCALE = 0.5


# ------------------------------------------------------------------------------------- checks


def _check(alpha: float | None = None, g: float | None = None, min_effect: float | None = None) -> None:
    if alpha is not None and not (0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if g is not None and not (g > 0 and math.isfinite(g)):
        raise ValueError(f"the prior scale g must be a finite number > 0, got {g!r}")
    if min_effect is not None and not (min_effect > 0 and math.isfinite(min_effect)):
        raise ValueError(f"min_effect must be a finite number > 0 (or None), got {min_effect!r}")


def _check_min_seeds(min_seeds: int) -> None:
    if int(min_seeds) != min_seeds or min_seeds < 1:
        raise ValueError(f"min_seeds must be an integer ≥ 1, got {min_seeds!r}")


def earliest_decision(alpha: float, g: float = DEFAULT_PRIOR_SCALE) -> int:
    """The smallest n at which the level-``alpha`` CS can exclude anything at all: the first n with
    (1 + n g)^((n − 1)/2) > 1/α, the most evidence n differences can give (6 at α = 0.05 and the
    default g; 8 at α = 0.05/6). Below it every look is open, whatever the differences."""
    _check(alpha=alpha, g=g)
    n = 2
    while 0.5 * (n - 1) * math.log1p(n * g) <= -math.log(alpha):
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


def _log_e(t2: np.ndarray, n: np.ndarray, g: float) -> np.ndarray:
    """log E_n for squared t statistics ``t2`` at sizes ``n`` (≥ 2), elementwise; t2 = inf gives the
    limit (n−1)/2 · log(1 + n g)."""
    t2, n = np.asarray(t2, dtype=float), np.asarray(n, dtype=float)
    nu = n - 1
    big = 1 + n * g
    with np.errstate(invalid="ignore", divide="ignore"):
        finite = -0.5 * np.log(big) + 0.5 * n * (np.log1p(t2 / nu) - np.log1p(t2 / (nu * big)))
    return np.where(np.isinf(t2), 0.5 * nu * np.log(big), finite)


def _radii(n: np.ndarray, sd: np.ndarray, alpha: float, g: float = DEFAULT_PRIOR_SCALE) -> np.ndarray:
    """The CS half-widths √c_n · sd/√n, elementwise over sizes ``n`` and sds ``sd`` (broadcast); inf where
    n < 2, where sd is not > 0 (NaN, or 0: see :func:`cs_radius`) and where r ≥ 1 + n g."""
    n = np.asarray(n, dtype=float)
    sd = np.asarray(sd, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        log1png = np.log1p(n * g)
        log_r = (2.0 / n) * (-math.log(alpha) + 0.5 * log1png)
        # r − 1 and 1 − r/(1+ng), each without cancellation
        c = (n - 1) * np.expm1(log_r) / -np.expm1(log_r - log1png)
        rad = np.sqrt(c) * sd / np.sqrt(n)
    ok = (n >= 2) & (sd > 0) & (log_r < log1png)
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
    g: float = DEFAULT_PRIOR_SCALE,
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


def e_value(d: Sequence[float], mu0: float = 0.0, g: float = DEFAULT_PRIOR_SCALE) -> float:
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


def cs_radius(n: int, sd: float, alpha: float, g: float = DEFAULT_PRIOR_SCALE) -> float:
    """Half-width of the level-``alpha`` confidence sequence after ``n`` differences of sd ``sd``:
    √c_n · sd/√n (module docstring); inf when n < 2, when no μ0 can be excluded at this n, and when sd
    is NaN or 0."""
    # sd = 0 (every difference equal) is treated as undefined, not as a zero-width CS: a metric that did
    # not move between paired runs gives no evidence of its noise, and the t statistic it would give
    # (±inf) would turn two identical rounded values into a certain verdict.
    _check(alpha=alpha, g=g)
    return float(_radii(n, sd, alpha, g))


def confidence_sequence(
    d: Sequence[float], alpha: float, g: float = DEFAULT_PRIOR_SCALE
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
    g: float = DEFAULT_PRIOR_SCALE,
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
    g: float = DEFAULT_PRIOR_SCALE,
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
    g: float = DEFAULT_PRIOR_SCALE,
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
