"""Honest comparisons between arms of a sweep (``init=gap`` vs ``init=random``): difference of means with
a bootstrap CI over seeds, effect size, t-test p-values, spread ratio and a plain verdict.

Why: with 3-5 seeds a mean ± std table invites reading noise as an effect. The same seed gives the same
batch order and dropout stream whatever the init (train.py), so two arms that ran the same seeds are
compared seed by seed (paired bootstrap, d_z, ``ttest_rel``); arms with different seed sets fall back to
independent resampling, Cohen's d and Welch's test. The paper's std comparison (random init 7.10 vs
Gap-Init 1.44) gets its own bootstrap CI, as a ratio of standard deviations.

Values per trial are picked exactly as :func:`~gapinit_ray.results.aggregate.aggregate` picks them
(``at="last" | "best" | "epoch=N"``, through :func:`~gapinit_ray.results.aggregate.select`), so a
comparison and the aggregate table next to it describe the same numbers. ``at="curve"`` compares the
arms at every reported epoch (one row per epoch).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gapinit_ray.results._fs import ResultsError
from gapinit_ray.results.aggregate import _sort_key, check_metric, format_table, resolve_by, select
from gapinit_ray.results.store import column_axis

#: the columns of :func:`compare`'s table after the stratum (``by``) and ``epoch`` columns
COLUMNS = (
    "arm1",
    "arm2",
    "paired",
    "n1",
    "n2",
    "mean1",
    "mean2",
    "std1",
    "std2",
    "diff",
    "diff_ci_low",
    "diff_ci_high",
    "effect_size",
    "effect_kind",
    "p_welch",
    "p_paired",
    "sd_ratio",
    "sd_ratio_ci_low",
    "sd_ratio_ci_high",
    "verdict",
    "note",
)
_TYPES = {
    "arm1": pa.string(),
    "arm2": pa.string(),
    "paired": pa.bool_(),
    "n1": pa.int64(),
    "n2": pa.int64(),
    "effect_kind": pa.string(),
    "verdict": pa.string(),
    "note": pa.string(),
}
NOT_ENOUGH = "not enough seeds"


class CompareError(ResultsError):
    """A comparison argument is invalid: a malformed or unknown arm, an unknown axis value, ``at``."""


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: the trials whose ``column`` equals ``value`` (``text`` as given)."""

    text: str
    column: str
    value: Any


def parse_arms(metrics: pa.Table, arms: Sequence[str] | str) -> list[Arm]:
    """``["init=gap", "init=random"]`` (or one comma-separated string) -> :class:`Arm` s, each value
    converted to its column's type and checked to occur in ``metrics``."""
    if isinstance(arms, str):
        arms = [a for a in (s.strip() for s in arms.split(",")) if a]
    arms = [a.strip() for a in arms]
    if len(arms) < 2:
        raise CompareError(f"compare needs at least two arms (axis=value), got {', '.join(arms) or 'none'}")
    dup = [a for a, n in Counter(arms).items() if n > 1]
    if dup:
        raise CompareError(f"compare: arm {dup[0]!r} given twice")
    out = []
    for text in arms:
        axis, sep, raw = text.partition("=")
        axis, raw = axis.strip(), raw.strip()
        if not sep or not axis or not raw:
            raise CompareError(f"compare: arm {text!r} is not axis=value (e.g. init=gap, rank=8)")
        try:
            (column,) = resolve_by(metrics, [axis])
        except ResultsError as e:
            raise CompareError(f"compare: arm {text!r}: {e}") from None
        values = [v for v in pc.unique(metrics.column(column)).to_pylist() if v is not None]
        value = _convert(raw, metrics.schema.field(column).type)
        if value not in values:
            shown = ", ".join(str(v) for v in sorted(values, key=str)) or "(none)"
            raise CompareError(f"compare: arm {text!r}: no trial has {axis}={raw}; values: {shown}")
        out.append(Arm(text, column, value))
    return out


def _convert(raw: str, typ: pa.DataType) -> Any:
    try:
        if pa.types.is_integer(typ):
            return int(raw)
        if pa.types.is_floating(typ):
            return float(raw)
        if pa.types.is_boolean(typ):
            return {"true": True, "false": False}[raw.lower()]
    except (ValueError, KeyError):
        return raw  # reported as an unknown value, with the values that exist
    return raw


# ------------------------------------------------------------------------------------ statistics


def _std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else math.nan


def _div(num: float, den: float) -> float:
    """num / den, with x/0 = ±inf and 0/0 = NaN (a zero spread), never an exception."""
    if den > 0:
        return num / den
    return math.nan if num == 0 or math.isnan(num) else math.copysign(math.inf, num)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise num / den of non-negative spreads: 0/0 = NaN, x/0 = inf, without warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, np.inf, np.nan))


def _ci(samples: np.ndarray) -> tuple[float, float]:
    """Percentile 95 % interval; NaN resamples (0/0 spread ratios) dropped; ``inverted_cdf`` picks
    actual resampled values, so an infinite ratio stays an honest ``inf`` bound instead of a NaN."""
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return math.nan, math.nan
    lo, hi = np.quantile(samples, [0.025, 0.975], method="inverted_cdf")
    return float(lo), float(hi)


def compare_values(
    x: Sequence[float] | dict[Any, float],
    y: Sequence[float] | dict[Any, float],
    *,
    n_boot: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Statistics of arm x vs arm y (one value per seed each).

    Paired when both are dicts with the same keys (seeds): the bootstrap resamples seeds, keeping each
    seed's two values together; effect size d_z = mean(x−y) / sd(x−y); ``p_paired`` from
    ``scipy.stats.ttest_rel``. Otherwise x and y are resampled independently and the effect size is
    Cohen's d (pooled sd). ``p_welch`` (``ttest_ind(equal_var=False)``) is given either way. Any arm
    with fewer than 2 values gives NaN statistics. Same inputs and ``seed`` ⇒ same result."""
    from scipy import stats

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
        "effect_kind": "d_z" if paired else "d",
    }
    out["diff"] = out["mean1"] - out["mean2"]
    nan = dict.fromkeys(
        ["diff_ci_low", "diff_ci_high", "effect_size", "p_welch", "p_paired", "sd_ratio"], math.nan
    )
    out.update(nan, sd_ratio_ci_low=math.nan, sd_ratio_ci_high=math.nan)
    if n1 < 2 or n2 < 2:
        return out
    out["sd_ratio"] = _div(out["std1"], out["std2"])
    with warnings.catch_warnings():  # zero or tiny spread: scipy warns and may return NaN, fine here
        warnings.simplefilter("ignore", RuntimeWarning)
        out["p_welch"] = float(stats.ttest_ind(xa, ya, equal_var=False).pvalue)
        if paired:
            out["p_paired"] = float(stats.ttest_rel(xa, ya).pvalue)
    if paired:
        out["effect_size"] = _div(out["diff"], _std(xa - ya))
    else:
        pooled = math.sqrt(((n1 - 1) * out["std1"] ** 2 + (n2 - 1) * out["std2"] ** 2) / (n1 + n2 - 2))
        out["effect_size"] = _div(out["diff"], pooled)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n1, size=(n_boot, n1))
    j = i if paired else rng.integers(0, n2, size=(n_boot, n2))
    bx, by = xa[i], ya[j]
    out["diff_ci_low"], out["diff_ci_high"] = _ci(bx.mean(axis=1) - by.mean(axis=1))
    ratios = _ratio(np.std(bx, axis=1, ddof=1), np.std(by, axis=1, ddof=1))
    out["sd_ratio_ci_low"], out["sd_ratio_ci_high"] = _ci(ratios)
    return out


def _short(arm: Arm, other: Arm) -> str:
    """``gap`` when both arms vary the same axis, else the whole ``init=gap``."""
    return str(arm.value) if arm.column == other.column else arm.text


def verdict(stats_: dict[str, Any], name1: str, name2: str, digits: int = 2) -> str:
    """One plain sentence: not enough seeds / within noise (the 95 % CI of the difference contains 0) /
    ``"gap higher by 3.1 (95% CI 0.4..5.9)"``."""
    n1, n2 = stats_["n1"], stats_["n2"]
    n = f"n={n1}" if n1 == n2 else f"n={n1} vs {n2}"
    if n1 < 2 or n2 < 2:
        return f"{NOT_ENOUGH} ({name1} n={n1}, {name2} n={n2}; need 2 each)"
    lo, hi = stats_["diff_ci_low"], stats_["diff_ci_high"]
    if not (lo > 0 or hi < 0):  # includes NaN
        return f"difference within noise at {n}"
    word = "higher" if stats_["diff"] > 0 else "lower"
    return (
        f"{name1} {word} than {name2} by {abs(stats_['diff']):.{digits}f} "
        f"(95% CI {lo:.{digits}f}..{hi:.{digits}f}, {n})"
    )


# ----------------------------------------------------------------------------------------- tables


def _epochs(metrics: pa.Table, metric: str) -> list[float]:
    valid = pc.and_(pc.is_valid(metrics.column(metric)), pc.invert(pc.is_nan(metrics.column(metric))))
    return sorted(e for e in pc.unique(metrics.filter(valid).column("epoch")).to_pylist() if e is not None)


def compare(
    metrics: pa.Table,
    arms: Sequence[str] | str = ("init=gap", "init=random"),
    *,
    metric: str = "val_cider",
    at: str = "last",
    mode: str = "max",
    by: Sequence[str] | None = None,
    n_boot: int = 10000,
    seed: int = 0,
    digits: int = 2,
) -> pa.Table:
    """The first arm against each other arm, per stratum of ``by`` (e.g. ``rank``: gap vs random at
    every rank); ``at="curve"`` adds an ``epoch`` column and compares at every reported epoch.

    One row per (stratum, [epoch,] pair): the ``by`` columns, then :data:`COLUMNS`: the arms, whether
    the comparison is paired by seed, n / mean / std per arm, ``diff`` = mean1 − mean2 with its
    bootstrap 95 % CI (``n_boot`` resamples from ``seed``), effect size (d_z paired, else Cohen's d),
    Welch's and (paired) the paired t-test p-value, sd1/sd2 with a bootstrap 95 % CI, a verdict, and a
    note when an arm holds several trials per seed (other axes vary inside it: add them to ``by``).

    Raises:
        CompareError: malformed / unknown arm or value, an arm axis also in ``by``.
        ResultsError: unknown metric, ``by`` name, ``at`` or ``mode`` (as :func:`aggregate`).
    """
    check_metric(metrics, metric)
    parsed = parse_arms(metrics, arms)
    cols = resolve_by(metrics, list(by or []))
    clash = [a.text for a in parsed if a.column in cols]
    if clash:
        raise CompareError(f"compare: arm {clash[0]!r} varies an axis that is also in by; drop it from by")
    if n_boot < 100:
        raise CompareError(f"compare: n_boot must be ≥ 100, got {n_boot}")
    seed_col = ["seed"] if "seed" in metrics.column_names else []
    arm_cols = list(dict.fromkeys(a.column for a in parsed))
    mask = None
    for a in parsed:
        m = pc.equal(metrics.column(a.column), pa.scalar(a.value, metrics.schema.field(a.column).type))
        mask = m if mask is None else pc.or_(mask, m)
    rows_t = metrics.filter(pc.fill_null(mask, False))
    if at == "curve":
        points: list[tuple[float | None, str]] = [(e, f"epoch={e!r}") for e in _epochs(rows_t, metric)]
    else:
        select(rows_t.slice(0, 0), by=[], metric=metric, at=at, mode=mode)  # validates at / mode
        points = [(None, at)]
    key_cols = [*arm_cols, *cols, *seed_col]
    rows: list[tuple[tuple, dict[str, Any]]] = []  # (stratum sort key, epoch, pair), row
    for epoch, at_one in points:
        sel = select(rows_t, by=key_cols, metric=metric, at=at_one, mode=mode)
        # stratum -> arm -> seed (or trial id) -> values
        strata: dict[tuple, dict[str, list[tuple[Any, float]]]] = {}
        for key, members in sel.values.items():
            kv = dict(zip(key_cols, key, strict=True))
            stratum = tuple(kv[c] for c in cols)
            per_arm = strata.setdefault(stratum, {a.text: [] for a in parsed})
            for a in parsed:
                if kv[a.column] == a.value:
                    for tid, v in members.items():
                        if v is not None:
                            per_arm[a.text].append((kv[seed_col[0]] if seed_col else tid, v))
        for stratum, per_arm in strata.items():
            first = parsed[0]
            for pair, other in enumerate(parsed[1:]):
                xs, ys = per_arm[first.text], per_arm[other.text]
                x, y, note = _as_seeded(xs, first, bool(seed_col)), _as_seeded(ys, other, bool(seed_col)), []
                for arm, vals in ((first, xs), (other, ys)):
                    n_seeds = len({s for s, _ in vals})
                    if seed_col and n_seeds < len(vals):
                        note.append(
                            f"{arm.text}: {len(vals)} trials over {n_seeds} seeds (other axes vary inside "
                            "the arm; add them to by)"
                        )
                st = compare_values(x, y, n_boot=n_boot, seed=seed)
                st["verdict"] = verdict(st, _short(first, other), _short(other, first), digits)
                st["note"] = "; ".join(note)
                st["arm1"], st["arm2"] = first.text, other.text
                row = {**dict(zip(cols, stratum, strict=True)), **({"epoch": epoch} if at == "curve" else {})}
                row.update((c, st[c]) for c in COLUMNS)
                rows.append(((_sort_key(stratum), epoch or 0.0, pair), row))
    rows.sort(key=lambda kr: kr[0])
    names = [*cols, *(["epoch"] if at == "curve" else []), *COLUMNS]
    types = {c: metrics.schema.field(c).type for c in cols}
    types.update(_TYPES, epoch=pa.float64())
    return pa.Table.from_arrays(
        [pa.array([r[c] for _, r in rows], types.get(c, pa.float64())) for c in names], names=names
    )


def _as_seeded(values: list[tuple[Any, float]], arm: Arm, has_seed: bool) -> dict | list:
    """A seed -> value dict (pairable) when every seed occurs once, else a plain list of values."""
    seeds = [s for s, _ in values]
    if has_seed and len(set(seeds)) == len(seeds):
        return dict(values)
    return [v for _, v in values]


def format_comparison(table: pa.Table, fmt: str = "table") -> str:
    """Render :func:`compare`'s table like ``gapinit results`` renders aggregates (``table``, ``csv``,
    ``json``, ``markdown``); an all-empty ``note`` column is left out of the text forms."""
    shown = fmt in ("table", "markdown")
    if shown and "note" in table.column_names and not any(table.column("note").to_pylist()):
        table = table.drop_columns(["note"])
    return format_table(table, fmt)


def describe_arms(arms: Sequence[Arm]) -> str:
    """``init: gap vs random, random-direction`` for report headings."""
    first = arms[0]
    if all(a.column == first.column for a in arms):
        name = column_axis(first.column) if first.column.startswith("ax_") else first.column
        return f"{name}: {first.value} vs {', '.join(str(a.value) for a in arms[1:])}"
    return f"{first.text} vs {', '.join(a.text for a in arms[1:])}"
