"""Statistics of two arms' per-seed values, and the sentences written from them.

:func:`compare_values` is the pure core of :func:`~gapinit_ray.results.compare.compare` (which picks the
values per arm and stratum from a sweep's metrics); :func:`verdict` and :func:`sample_size_line` turn a
row of its statistics into text. See :mod:`gapinit_ray.results.compare` for why these tests.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

NOT_ENOUGH = "not enough seeds"


def _std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else math.nan


def _div(num: float, den: float) -> float:
    """num / den, with x/0 = ±inf and 0/0 = NaN (a zero spread), never an exception."""
    if den > 0:
        return num / den
    return math.nan if num == 0 or math.isnan(num) else math.copysign(math.inf, num)


def _ci(samples: np.ndarray) -> tuple[float, float]:
    """Percentile 95 % interval; NaN resamples (0/0 spread ratios) dropped; ``inverted_cdf`` picks
    actual resampled values, so an infinite ratio stays an honest ``inf`` bound instead of a NaN."""
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return math.nan, math.nan
    lo, hi = np.quantile(samples, [0.025, 0.975], method="inverted_cdf")
    return float(lo), float(hi)


def _sd_ratio_interval(sd1: float, sd2: float, n1: int, n2: int) -> tuple[float, float]:
    """95 % interval of sd1 / sd2 from the F distribution (normal values, independent arms)."""
    from scipy import stats

    if not (sd1 >= 0 and sd2 > 0) or n1 < 2 or n2 < 2:
        return math.nan, math.nan
    ratio2 = (sd1 / sd2) ** 2
    lo = ratio2 / stats.f.ppf(0.975, n1 - 1, n2 - 1)
    hi = ratio2 / stats.f.ppf(0.025, n1 - 1, n2 - 1)
    return math.sqrt(lo), math.sqrt(hi)


def compare_values(
    x: Sequence[float] | dict[Any, float],
    y: Sequence[float] | dict[Any, float],
    *,
    n_boot: int = 10000,
    seed: int = 0,
    min_effect: float | None = None,
) -> dict[str, Any]:
    """Statistics of arm x vs arm y (one value per seed each); see the module docstring for the why.

    Paired when both are dicts with the same keys (seeds): the exact sign-flip test on x − y
    (``p_exact``), the paired-t 95 % interval of the mean difference, d_z = mean(x−y) / sd(x−y),
    ``ttest_rel``; ``seeds_needed`` from the sd of the differences. Otherwise: the exact (or, above
    :data:`~gapinit_ray.results.stats.EXACT_LIMIT` relabelings, seeded Monte Carlo) two-sample
    permutation test, Welch's interval, Cohen's d (pooled sd), ``seeds_needed`` per arm from the pooled
    sd. ``p_welch`` is given either way; ``p_min`` is the smallest p the exact test can give at these
    sizes. ``p_holm`` is set to ``p_exact`` here (one comparison); :func:`compare` adjusts it over its
    rows. The percentile bootstrap interval (``boot_ci_*``, ``n_boot`` resamples from ``seed``) only
    when each arm has at least ``BOOTSTRAP_MIN_N`` values, else NaN. Any arm with fewer than 2 values
    gives NaN statistics. Same inputs and ``seed`` ⇒ same result."""
    from scipy import stats

    from gapinit_ray.results import stats as st

    paired = isinstance(x, dict) and isinstance(y, dict) and set(x) == set(y)
    if paired:
        keys = sorted(x, key=str)
        xa = np.array([x[k] for k in keys], dtype=float)
        ya = np.array([y[k] for k in keys], dtype=float)
    else:
        xa = np.array(list(x.values()) if isinstance(x, dict) else list(x), dtype=float)
        ya = np.array(list(y.values()) if isinstance(y, dict) else list(y), dtype=float)
    n1, n2 = len(xa), len(ya)
    out: dict[str, Any] = {
        "paired": paired,
        "n1": n1,
        "n2": n2,
        "mean1": float(xa.mean()) if n1 else math.nan,
        "mean2": float(ya.mean()) if n2 else math.nan,
        "std1": _std(xa),
        "std2": _std(ya),
        "iqm1": st.iqm(xa),
        "iqm2": st.iqm(ya),
        "effect_kind": "d_z" if paired else "d",
        "ci_kind": "paired t" if paired else "Welch",
        "test": "exact sign-flip" if paired else "exact permutation",
        "min_effect": float(min_effect) if min_effect is not None else math.nan,
    }
    out["diff"] = out["mean1"] - out["mean2"]
    for k in ("diff_ci_low", "diff_ci_high", "effect_size", "p_exact", "p_holm", "p_paired", "p_welch"):
        out[k] = math.nan
    for k in ("boot_ci_low", "boot_ci_high", "sd_ratio", "sd_ratio_ci_low", "sd_ratio_ci_high"):
        out[k] = math.nan
    out["seeds_needed"] = out["seeds_needed_min_effect"] = math.nan
    out["p_superior"], out["p_superior_ci_low"], out["p_superior_ci_high"] = st.prob_superior(xa, ya)
    out["p_min"] = st.min_sign_flip_p(n1) if paired else st.min_permutation_p(n1, n2)
    if n1 < 2 or n2 < 2:
        return out
    out["sd_ratio"] = _div(out["std1"], out["std2"])
    out["sd_ratio_ci_low"], out["sd_ratio_ci_high"] = _sd_ratio_interval(out["std1"], out["std2"], n1, n2)
    with warnings.catch_warnings():  # zero or tiny spread: scipy warns and may return NaN, fine here
        warnings.simplefilter("ignore", RuntimeWarning)
        out["p_welch"] = float(stats.ttest_ind(xa, ya, equal_var=False).pvalue)
        if paired:
            out["p_paired"] = float(stats.ttest_rel(xa, ya).pvalue)
    if paired:
        d = xa - ya
        out["p_exact"] = st.sign_flip_test(d, seed=seed)
        out["diff_ci_low"], out["diff_ci_high"] = st.t_interval_paired(d)
        sd = _std(d)
        out["effect_size"] = _div(out["diff"], sd)
    else:
        exact = math.comb(n1 + n2, n1) <= st.EXACT_LIMIT
        out["test"] = "exact permutation" if exact else "permutation (Monte Carlo)"
        out["p_exact"] = st.permutation_test(xa, ya, seed=seed)
        out["diff_ci_low"], out["diff_ci_high"] = st.welch_interval(xa, ya)
        sd = math.sqrt(((n1 - 1) * out["std1"] ** 2 + (n2 - 1) * out["std2"] ** 2) / (n1 + n2 - 2))
        out["effect_size"] = _div(out["diff"], sd)
    out["p_holm"] = out["p_exact"]
    out["seeds_needed"] = st.seeds_needed(out["diff"], sd, paired=paired)
    if min_effect is not None:
        out["seeds_needed_min_effect"] = st.seeds_needed(min_effect, sd, paired=paired)
    if min(n1, n2) >= st.BOOTSTRAP_MIN_N:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n1, size=(n_boot, n1))
        j = i if paired else rng.integers(0, n2, size=(n_boot, n2))
        out["boot_ci_low"], out["boot_ci_high"] = _ci(xa[i].mean(axis=1) - ya[j].mean(axis=1))
    return out


def _g(v: float) -> str:
    return f"{v:.2g}"


def verdict(stats_: dict[str, Any], name1: str, name2: str, digits: int = 2, alpha: float = 0.05) -> str:
    """One plain sentence written from the exact test (``p_holm``: its p, Holm-adjusted when the
    comparison was one of several) and never contradicting a p-value on the same row:

    * ``not enough seeds`` (an arm has fewer than 2);
    * ``no verdict possible at n=3: ...`` when even the most extreme outcome could not reach ``alpha``
      (the exact test's smallest p is above it), with the t-test's p named as what it is;
    * ``gap higher than random by 0.31 (95% paired-t CI 0.12..0.50; exact sign-flip p=0.008, n=8)``;
    * ``no resolved difference ...`` otherwise."""
    n1, n2 = stats_["n1"], stats_["n2"]
    n = f"n={n1}" if n1 == n2 else f"n={n1} vs {n2}"
    if n1 < 2 or n2 < 2:
        return f"{NOT_ENOUGH} ({name1} n={n1}, {name2} n={n2}; need 2 each)"
    diff, lo, hi = stats_["diff"], stats_["diff_ci_low"], stats_["diff_ci_high"]
    ci = f"95% {stats_['ci_kind']} CI {lo:.{digits}f}..{hi:.{digits}f}"
    p, p_raw, test = stats_["p_holm"], stats_["p_exact"], stats_["test"]
    holm = f", Holm-adjusted {_g(p)}" if not math.isclose(p, p_raw) else ""
    tested = f"{test} p={_g(p_raw)}{holm}, {n}"
    if stats_["p_min"] > alpha:
        t_p = stats_["p_paired"] if stats_["paired"] else stats_["p_welch"]
        t_name = "paired t-test" if stats_["paired"] else "Welch's t-test"
        return (
            f"no verdict possible at {n}: the {test} test's smallest possible p is {_g(stats_['p_min'])} "
            f"> {alpha:g} (observed diff {diff:+.{digits}f}, {ci}; {t_name} p={_g(t_p)} rests on normality "
            f"{n1 if n1 == n2 else 'these'} seeds cannot check)"
        )
    if p <= alpha:
        word = "higher" if diff > 0 else "lower"
        return f"{name1} {word} than {name2} by {abs(diff):.{digits}f} ({ci}; {tested})"
    return f"no resolved difference: diff {diff:+.{digits}f} ({ci}; {tested})"


def sample_size_line(row: dict[str, Any], digits: int = 2, where: str = "") -> str:
    """``init=gap vs init=random: ~14 seeds (paired) for 80% power ...`` (the sample-size line);
    ``where`` names the stratum (``rank=1``) when there are several."""
    where = f"{where + ': ' if where else ''}{row['arm1']} vs {row['arm2']}"
    per = "seeds (paired)" if row["paired"] else "seeds per arm"
    sd_kind = "sd of the paired differences" if row["paired"] else "pooled sd"
    need = row["seeds_needed"]
    if math.isnan(need):
        return f"{where}: seeds needed unknown (fewer than 2 seeds per arm, or no spread)"
    sd = abs(row["diff"]) / abs(row["effect_size"]) if row["effect_size"] not in (0, math.inf) else math.nan
    text = (
        f"{where}: {_n(need)} {per} for 80% power (two-sided t-test, alpha 0.05) at the observed "
        f"difference {abs(row['diff']):.{digits}f} ({sd_kind} {sd:.{digits}g}; now n={row['n1']})"
    )
    if not math.isnan(row.get("seeds_needed_min_effect", math.nan)):
        text += f"; {_n(row['seeds_needed_min_effect'])} at --min-effect {row['min_effect']:g}"
    return text


def _n(v: float) -> str:
    return "more than 10000" if math.isinf(v) else f"~{int(v)}"
