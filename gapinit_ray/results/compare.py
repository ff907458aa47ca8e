"""Honest comparisons between arms of a sweep (``init=gap`` vs ``init=random``) at the few seeds a sweep
can afford: exact permutation tests, t intervals, Holm's correction, robust aggregates, how many seeds
would resolve the difference, and a verdict written from the test that was used.

Why: with 3-5 seeds a mean ± std table invites reading noise as an effect. The same seed gives the same
batch order and dropout stream whatever the init (train.py), so two arms that ran the same seeds are
compared seed by seed: the **exact sign-flip test** on the paired differences (all 2^n sign patterns;
at n = 3 its smallest two-sided p is 0.25, so no verdict of a difference is possible, and the verdict
says so), the paired-t interval of the mean difference, d_z and ``ttest_rel``. Arms with different seed
sets use the exact two-sample permutation test, Welch's interval and test, and Cohen's d. Several
comparisons in one call are Holm-adjusted (per point of ``at``); the verdict uses the adjusted p. The
percentile bootstrap is reported only from :data:`~gapinit_ray.results.stats.BOOTSTRAP_MIN_N` seeds per
arm on (below that it under-covers; see :mod:`gapinit_ray.results.stats`). Next to mean ± std: the
interquartile mean and P(arm1 > arm2) with its interval (rliable's aggregates for few runs), and
``seeds_needed``: about how many seeds a t-test would need for 80 % power at the observed difference
and spread (and at a given ``min_effect``). The paper's std comparison (random init 7.10 vs Gap-Init
1.44) is ``sd_ratio`` with its F-distribution interval (normal values assumed).

Values per trial are picked exactly as :func:`~gapinit_ray.results.aggregate.aggregate` picks them
(``at="last" | "best" | "epoch=N"``, through :func:`~gapinit_ray.results.aggregate.select`), so a
comparison and the aggregate table next to it describe the same numbers. ``at="curve"`` compares the
arms at every reported epoch (one row per epoch).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gapinit_ray.names import DEFAULT_METRIC
from gapinit_ray.results._fs import ResultsError
from gapinit_ray.results.aggregate import _sort_key, check_metric, format_table, resolve_by, select
from gapinit_ray.results.arm_stats import NOT_ENOUGH as NOT_ENOUGH  # re-exported: callers import it from here
from gapinit_ray.results.arm_stats import compare_values, sample_size_line, verdict
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
    "iqm1",
    "iqm2",
    "diff",
    "ci_kind",
    "diff_ci_low",
    "diff_ci_high",
    "effect_size",
    "effect_kind",
    "test",
    "p_exact",
    "p_min",
    "p_holm",
    "p_paired",
    "p_welch",
    "p_superior",
    "p_superior_ci_low",
    "p_superior_ci_high",
    "boot_ci_low",
    "boot_ci_high",
    "sd_ratio",
    "sd_ratio_ci_low",
    "sd_ratio_ci_high",
    "seeds_needed",
    "min_effect",
    "seeds_needed_min_effect",
    "verdict",
    "av_e_value",
    "av_cs_low",
    "av_cs_high",
    "av_alpha",
    "av_verdict",
    "note",
)
_TYPES = {
    "arm1": pa.string(),
    "arm2": pa.string(),
    "paired": pa.bool_(),
    "n1": pa.int64(),
    "n2": pa.int64(),
    "ci_kind": pa.string(),
    "effect_kind": pa.string(),
    "test": pa.string(),
    "verdict": pa.string(),
    "av_verdict": pa.string(),
    "note": pa.string(),
}


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
        if column == "seed":
            raise CompareError(
                f"compare: arm {text!r}: arms are compared over their seeds, so an arm cannot be one seed; "
                "compare arms of another axis (e.g. init=gap,init=random)"
            )
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


def _short(arm: Arm, other: Arm) -> str:
    """``gap`` when both arms vary the same axis, else the whole ``init=gap``."""
    return str(arm.value) if arm.column == other.column else arm.text


# ----------------------------------------------------------------------------------------- tables


def _epochs(metrics: pa.Table, metric: str) -> list[float]:
    valid = pc.and_(pc.is_valid(metrics.column(metric)), pc.invert(pc.is_nan(metrics.column(metric))))
    return sorted(e for e in pc.unique(metrics.filter(valid).column("epoch")).to_pylist() if e is not None)


def compare(
    metrics: pa.Table,
    arms: Sequence[str] | str = ("init=gap", "init=random"),
    *,
    metric: str = DEFAULT_METRIC,
    at: str = "last",
    mode: str = "max",
    by: Sequence[str] | None = None,
    n_boot: int = 10000,
    seed: int = 0,
    digits: int = 2,
    min_effect: float | None = None,
) -> pa.Table:
    """The first arm against each other arm, per stratum of ``by`` (e.g. ``rank``: gap vs random at
    every rank); ``at="curve"`` adds an ``epoch`` column and compares at every reported epoch.

    One row per (stratum, [epoch,] pair): the ``by`` columns, then :data:`COLUMNS` (see
    :func:`compare_values`): the arms, whether the comparison is paired by seed, n / mean / std / IQM
    per arm, ``diff`` = mean1 − mean2 with its t interval, effect size, the exact test's p and its
    Holm-adjusted p over all rows at the same point (``p_holm``, the family being the comparisons of
    this call), the t-tests' p, P(arm1 > arm2), the bootstrap interval where n allows it, sd1/sd2,
    ``seeds_needed`` (and at ``min_effect``), a verdict from ``p_holm``, and a note when an arm holds
    several trials per seed (other axes vary inside it: add them to ``by``).

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
    if seed_col and "seed" in cols:
        raise CompareError(
            "compare: by 'seed': a comparison pairs its arms over the seeds, so the seed cannot also be a "
            "stratum; drop seed from --by"
        )
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
                st = compare_values(x, y, n_boot=n_boot, seed=seed, min_effect=min_effect)
                paired = isinstance(x, dict) and isinstance(y, dict) and set(x) == set(y)
                st["_d"] = [x[k] - y[k] for k in sorted(x, key=str)] if paired else None
                st["_min_effect"] = min_effect
                st["note"] = "; ".join(note)
                st["arm1"], st["arm2"] = first.text, other.text
                st["_names"] = (_short(first, other), _short(other, first))
                row = {**dict(zip(cols, stratum, strict=True)), **({"epoch": epoch} if at == "curve" else {})}
                row.update(st)
                rows.append(((_sort_key(stratum), epoch or 0.0, pair), row))
        _holm_and_verdicts([r for _, r in rows if r.get("epoch") == epoch], digits)
    rows.sort(key=lambda kr: kr[0])
    names = [*cols, *(["epoch"] if at == "curve" else []), *COLUMNS]
    types = {c: metrics.schema.field(c).type for c in cols}
    types.update(_TYPES, epoch=pa.float64())
    return pa.Table.from_arrays(
        [pa.array([r[c] for _, r in rows], types.get(c, pa.float64())) for c in names], names=names
    )


def _holm_and_verdicts(rows: list[dict[str, Any]], digits: int) -> None:
    """Holm-adjust the exact p-values of one family of comparisons (one point of ``at``), then write
    each row's verdict from its adjusted p."""
    from gapinit_ray.results.stats import holm

    for row, p in zip(rows, holm([r["p_exact"] for r in rows]), strict=True):
        row["p_holm"] = p
        names = row.pop("_names")
        row["verdict"] = verdict(row, *names, digits)
        _anytime(row, names, len(rows), digits)


def _anytime(row: dict[str, Any], names: tuple[str, str], family: int, digits: int) -> None:
    """The anytime-valid verdict of a paired row (:mod:`gapinit_ray.results.anytime`: the t-mixture
    confidence sequence at α = 0.05 Bonferroni-split over the call's comparisons): unlike the exact
    test's, it stays valid however many times the seeds were looked at before, with more seeds added
    after each look. NaN / "" for unpaired rows (the sequence is for paired seeds)."""
    from gapinit_ray.results import anytime

    d, min_effect = row.pop("_d"), row.pop("_min_effect")
    alpha = anytime.alpha_each(0.05, max(1, family))
    row.update(av_e_value=math.nan, av_cs_low=math.nan, av_cs_high=math.nan, av_alpha=alpha, av_verdict="")
    if d is None or len(d) < 2:
        return
    lk = anytime.look(d, alpha=alpha, min_effect=min_effect)
    row.update(av_e_value=lk.e_value, av_cs_low=lk.cs_low, av_cs_high=lk.cs_high, av_verdict=lk.decision)
    cs = f"{lk.cs_low:+.{digits}f}..{lk.cs_high:+.{digits}f}" if math.isfinite(lk.cs_low) else "unbounded"
    said = {
        anytime.A_HIGHER: f"{names[0]} higher",
        anytime.B_HIGHER: f"{names[1]} higher",
        anytime.EQUIVALENT: f"equivalent within ±{min_effect}",
        anytime.OPEN: "no verdict",
    }[lk.decision]
    row["verdict"] += (
        f"; anytime-valid (however often the seeds were looked at): {said} "
        f"({1 - alpha:.4g} confidence sequence {cs}, e={lk.e_value:.3g}, n={lk.n})"
    )


def _as_seeded(values: list[tuple[Any, float]], arm: Arm, has_seed: bool) -> dict | list:
    """A seed -> value dict (pairable) when every seed occurs once, else a plain list of values."""
    seeds = [s for s, _ in values]
    if has_seed and len(set(seeds)) == len(seeds):
        return dict(values)
    return [v for _, v in values]


#: columns the text forms of :func:`format_comparison` show (csv / json carry every column)
TEXT_COLUMNS = (
    "arm1",
    "arm2",
    "n1",
    "n2",
    "mean1",
    "mean2",
    "iqm1",
    "iqm2",
    "diff",
    "diff_ci_low",
    "diff_ci_high",
    "effect_size",
    "p_exact",
    "p_holm",
    "p_min",
    "p_superior",
    "sd_ratio",
    "seeds_needed",
    "note",
)


def format_comparison(table: pa.Table, fmt: str = "table") -> str:
    """Render :func:`compare`'s table like ``gapinit results`` renders aggregates (``table``, ``csv``,
    ``json``, ``markdown``). The text forms show the main columns (:data:`TEXT_COLUMNS` after the
    strata), then one verdict line and one sample-size line per comparison; an all-empty ``note``
    column is left out."""
    if fmt not in ("table", "markdown"):
        return format_table(table, fmt)
    rows = table.to_pylist()
    keep = [c for c in table.column_names if c not in COLUMNS or c in TEXT_COLUMNS]
    if "note" in keep and not any(table.column("note").to_pylist()):
        keep.remove("note")
    strata = [c for c in table.column_names if c not in COLUMNS and c != "epoch"]
    lines = [format_table(table.select(keep), fmt).rstrip("\n"), ""]
    for r in rows:
        where = ", ".join(f"{c}={r[c]}" for c in strata)
        at = f"epoch {r['epoch']:g}: " if "epoch" in r and r["epoch"] is not None else ""
        lines.append(
            f"{'- ' if fmt == 'markdown' else ''}{at}{where + ': ' if where else ''}"
            f"{r['arm1']} vs {r['arm2']}: {r['verdict']}"
        )
    for r in rows:
        if "epoch" in r and r is not rows[-1] and r["epoch"] != rows[-1]["epoch"]:
            continue  # a curve: the sample size at the last point only
        where = ", ".join(f"{c}={r[c]}" for c in strata)
        lines.append(f"{'- ' if fmt == 'markdown' else ''}{sample_size_line(r, where=where)}")
    return "\n".join(lines)


def describe_arms(arms: Sequence[Arm]) -> str:
    """``init: gap vs random, random-direction`` for report headings."""
    first = arms[0]
    if all(a.column == first.column for a in arms):
        name = column_axis(first.column) if first.column.startswith("ax_") else first.column
        return f"{name}: {first.value} vs {', '.join(str(a.value) for a in arms[1:])}"
    return f"{first.text} vs {', '.join(a.text for a in arms[1:])}"
