"""A sweep's report: learning curves, the final comparison, the aggregate tables, the init comparison
(exact tests, t intervals, verdicts, seeds needed) and the gap-alignment curves (PNG + md + html).

Plots use matplotlib's object API (``Figure`` + the Agg canvas), never pyplot, so writing a report
from a server or a thread touches no global state and needs no display.
"""

from __future__ import annotations

import html
import io
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from gapinit_ray.results._fs import ResultsError, resolve, write_bytes
from gapinit_ray.results.aggregate import aggregate, check_metric, format_table, resolve_by, select
from gapinit_ray.results.compare import COLUMNS as COMPARE_COLUMNS
from gapinit_ray.results.compare import compare as compare_arms
from gapinit_ray.results.compare import describe_arms, parse_arms, sample_size_line
from gapinit_ray.results.store import ResultsStore, column_axis

_SHOWN = ["n", "n_missing", "mean_pm_std", "ci95_low", "ci95_high", "min", "max", "stopped", "status"]
# the comparison table in a report: the numbers the verdicts rest on (the CLI's --format csv/json has all)
_COMPARE_SHOWN = [
    c
    for c in COMPARE_COLUMNS
    if c not in ("std1", "std2", "boot_ci_low", "boot_ci_high", "min_effect", "seeds_needed_min_effect")
]
#: the per-report alignment metric (cos(B[:,0], g), mean over modules) the report plots when present
ALIGNMENT = "align_cos_mean"
BANDS = ("std", "minmax")


def _label(by: list[str], key: tuple) -> str:
    def name(c: str) -> str:
        return column_axis(c) if c.startswith("ax_") else c

    return ", ".join(f"{name(c)}={v}" for c, v in zip(by, key, strict=True)) or "all"


def _curves(metrics: pa.Table, by: list[str], metric: str) -> dict[tuple, dict[float, list[float]]]:
    """group -> epoch -> the trials' values at that epoch (one per trial: the latest report)."""
    latest: dict[tuple, dict] = {}
    for r in metrics.select(["trial_id", "epoch", metric, *by, "timestamp"]).to_pylist():
        k = (r["trial_id"], r["epoch"])
        if k not in latest or (r["timestamp"] or 0) >= (latest[k]["timestamp"] or 0):
            latest[k] = r
    out: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in latest.values():
        v = r[metric]
        if v is not None and not math.isnan(v):
            out[tuple(r[c] for c in by)][r["epoch"]].append(v)
    return out


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def plot_curves(
    metrics: pa.Table, by: list[str], metric: str, band: str = "std", ylabel: str | None = None
) -> bytes:
    """Mean over seeds of ``metric`` vs epoch per group, with a mean ± std (or min-max) band."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    curves = _curves(metrics, by, metric)
    for key in sorted(curves, key=lambda k: tuple(str(v) for v in k)):
        epochs = sorted(curves[key])
        vals = [curves[key][e] for e in epochs]
        mean = [statistics.fmean(v) for v in vals]
        if band == "minmax":
            lo, hi = [min(v) for v in vals], [max(v) for v in vals]
        else:
            sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            lo, hi = (
                [m - s for m, s in zip(mean, sd, strict=True)],
                [m + s for m, s in zip(mean, sd, strict=True)],
            )
        n = max(len(v) for v in vals)
        (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=f"{_label(by, key)} (n={n})")
        ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel or metric)
    ax.set_title(f"{metric}: mean over seeds, band = {'min-max' if band == 'minmax' else 'mean ± std'}")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="small")
    return _png(fig)


def plot_final(agg: pa.Table, values: dict[tuple, dict], by: list[str], metric: str, at: str) -> bytes:
    """One point per group (mean) with its 95 % CI, and every trial's value as a dot."""
    from matplotlib.figure import Figure

    rows = agg.to_pylist()
    fig = Figure(figsize=(max(5.5, 1.2 * len(rows) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    labels = []
    for i, r in enumerate(rows):
        key = tuple(r[c] for c in by)
        labels.append(_label(by, key))
        members = [v for v in values.get(key, {}).values() if v is not None]
        if members:
            offsets = (
                [0.0]
                if len(members) == 1
                else [-0.15 + 0.3 * j / (len(members) - 1) for j in range(len(members))]
            )
            ax.scatter([i + o for o in offsets], members, s=14, color="0.45", zorder=2)
        if r["mean"] is None:
            continue
        yerr = None
        if r["ci95_low"] is not None:
            yerr = [[r["mean"] - r["ci95_low"]], [r["ci95_high"] - r["mean"]]]
        ax.errorbar([i], [r["mean"]], yerr=yerr, fmt="o", ms=7, capsize=6, color=f"C{i % 10}", zorder=3)
    ax.set_xticks(
        range(len(rows)),
        labels,
        rotation=20 if len(rows) > 3 else 0,
        ha="right" if len(rows) > 3 else "center",
    )
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} at {at}\nmean with 95 % CI (t); dots = seeds", fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _shown(agg: pa.Table, by: list[str]) -> pa.Table:
    return agg.select([c for c in [*by, *_SHOWN] if c in agg.column_names])


def _html_table(table: pa.Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.column_names)
    body = []
    for r in table.to_pylist():
        cells = []
        for c in table.column_names:
            v = r[c]
            text = "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def default_arms(metrics: pa.Table) -> list[str]:
    """``init=<first>`` then ``init=<each other>`` for a sweep of ≥ 2 inits (first: ``gap`` when the
    sweep ran it, else the first name in order); ``[]`` when there is nothing to compare."""
    if "init" not in metrics.column_names:
        return []
    inits = sorted(v for v in pc.unique(metrics.column("init")).to_pylist() if v is not None)
    if len(inits) < 2:
        return []
    first = "gap" if "gap" in inits else inits[0]
    return [f"init={first}", *(f"init={i}" for i in inits if i != first)]


def _has_values(metrics: pa.Table, column: str) -> bool:
    return column in metrics.column_names and metrics.column(column).null_count < metrics.num_rows


def _comparison_text(table: pa.Table, strata: list[str]) -> list[str]:
    """One line per compared pair: ``rank=1: gap higher than random by ...``."""
    lines = []
    for r in table.to_pylist():
        where = _label(strata, tuple(r[c] for c in strata)) if strata else ""
        lines.append((f"{where}: " if where else "") + f"{r['arm1']} vs {r['arm2']}: {r['verdict']}")
    return lines


def write_report(
    store: ResultsStore,
    out_dir: str,
    *,
    by: Sequence[str],
    metric: str,
    mode: str = "max",
    band: str = "std",
    compare: Sequence[str] | str | None = None,
    n_boot: int = 10000,
) -> list[str]:
    """Write ``curves.png``, ``final.png``, ``alignment.png`` (when trials reported
    :data:`ALIGNMENT`), ``report.md`` and ``report.html`` into ``out_dir`` (a local dir or URI; every
    file written atomically) and return their paths.

    The final comparison is at each trial's last reported epoch (what the run ended with, ASHA-stopped
    trials included and flagged in the ``stopped`` column); the best-over-epochs table follows it. Then
    the arms of ``compare`` (``["init=gap", "init=random"]``; ``None`` = :func:`default_arms`, empty =
    none) are compared at the last epoch with :func:`~gapinit_ray.results.compare.compare`, within each
    group of the ``by`` axes the arms do not vary."""
    if band not in BANDS:
        raise ResultsError(f"band {band!r}: expected one of {', '.join(BANDS)}")
    metrics = store.metrics()
    if metrics.num_rows == 0:
        raise ResultsError(f"sweep {store.sweep}: no metric reports under {store.metrics_dir}")
    cols = resolve_by(metrics, by)
    check_metric(metrics, metric)
    trials = store.trials()
    last = aggregate(metrics, by=cols, metric=metric, at="last", mode=mode, trials=trials)
    best = aggregate(metrics, by=cols, metric=metric, at="best", mode=mode, trials=trials)
    values = select(metrics, by=cols, metric=metric, at="last", mode=mode).values
    curves_png = plot_curves(metrics, cols, metric, band)
    final_png = plot_final(last, values, cols, metric, "the last epoch")
    arms = default_arms(metrics) if compare is None else compare
    comparison = strata = None
    if arms:
        arm_cols = {a.column for a in parse_arms(metrics, arms)}
        strata = [c for c in cols if c not in arm_cols]
        comparison = compare_arms(
            metrics, arms, metric=metric, at="last", mode=mode, by=strata, n_boot=n_boot
        )
        comparison = comparison.select(
            [c for c in [*strata, *_COMPARE_SHOWN] if c in comparison.column_names]
        )
        if not any(comparison.column("note").to_pylist()):
            comparison = comparison.drop_columns(["note"])
    align_png = None
    if _has_values(metrics, ALIGNMENT):
        align_png = plot_curves(metrics, cols, ALIGNMENT, band, ylabel="cos(B[:,0], g), mean over modules")

    n_trials = len(set(metrics.column("trial_id").to_pylist()) | set(trials.column("trial_id").to_pylist()))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    better = "higher" if mode == "max" else "lower"
    group_names = ", ".join(column_axis(c) if c.startswith("ax_") else c for c in cols) or "(all trials)"
    intro = (
        f"Metric `{metric}` ({better} is better) over {n_trials} trials, grouped by {group_names}; "
        f"mean ± std over seeds (std with ddof=1), 95 % CI from the t distribution. Generated {stamp}."
    )
    band_text = "min-max" if band == "minmax" else "mean ± std"
    compare_intro = (
        f"{metric} at each trial's last epoch, first arm minus each other arm. Paired by seed when both "
        "arms ran the same seeds: exact sign-flip test over all 2^n sign patterns (p_exact), paired-t "
        "95 % CI of the mean difference, effect size d_z, paired t-test (p_paired); else the exact "
        "two-sample permutation test, Welch's CI and t-test, Cohen's d. The verdicts come from the exact "
        "test's p, Holm-adjusted over the comparisons listed (p_holm); p_min is the smallest p the exact "
        "test can give at these n (0.25 at 3 paired seeds: then no difference can be claimed). iqm: "
        "interquartile mean; p_superior: P(arm1 > arm2) for a random seed of each, with its "
        "Hanley-McNeil interval; sd_ratio = std1 / std2 with its F interval; seeds_needed: seeds for 80 % "
        "power at the observed difference and spread. A bootstrap CI is given only from 20 seeds per arm."
    )
    align_intro = (
        "cos(B[:,0], g) between each LoRA module's first B column and its calibration gap, mean over "
        "modules, per report. Gap-Init starts at 1; peft's default init has B = 0 at step 0 "
        "(undefined, not plotted); the random-direction control starts near 0."
    )
    md_extra: list[str] = []
    html_extra: list[str] = []
    if comparison is not None:
        heading = f"Init comparison ({describe_arms(parse_arms(metrics, arms))})"
        verdicts = _comparison_text(comparison, strata)
        verdicts += [
            sample_size_line(r, where=_label(strata, tuple(r[c] for c in strata)) if strata else "")
            for r in comparison.to_pylist()
        ]
        md_extra += [f"## {heading}", "", compare_intro, "", *(f"- {v}" for v in verdicts), ""]
        md_extra += [format_table(comparison, "markdown")]
        html_extra += [
            f"<h2>{html.escape(heading)}</h2>",
            f"<p>{html.escape(compare_intro)}</p>",
            "<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in verdicts) + "</ul>",
            _html_table(comparison),
        ]
    seq_png = None
    if store.loc.local:
        from gapinit_ray.results.looks import SequentialLog
        from gapinit_ray.results.looks_text import looks_table, plot_looks, verdict_table

        log = SequentialLog.read(os.path.join(store.root, store.sweep))
        if log is not None:
            seq_png = plot_looks(log)
            seq_intro = (
                "Seeds until the answer is known: after every finished seed each comparison's anytime-valid "
                "confidence sequence of the mean paired difference was updated; a comparison stopped at its "
                "first decisive look (the band excludes 0, or lies within ±δ). Valid however often it was "
                "looked at; see the README's 'Comparing inits honestly'."
            )
            text = [verdict_table(log), "", looks_table(log)]
            md_extra += ["## Sequential comparisons", "", seq_intro, "", "```text", *text, "```", ""]
            html_extra += [
                "<h2>Sequential comparisons</h2>",
                f"<p>{html.escape(seq_intro)}</p>",
                f"<pre>{html.escape(chr(10).join(text))}</pre>",
            ]
            if seq_png is not None:
                md_extra += ["![Sequential looks](sequential.png)", ""]
                html_extra += [
                    '<a href="sequential.png"><img src="sequential.png" alt="Sequential looks"></a>'
                ]
    if align_png is not None:
        md_extra += ["## Alignment with the gap", "", align_intro, "", "![Alignment](alignment.png)", ""]
        html_extra += [
            "<h2>Alignment with the gap</h2>",
            f"<p>{html.escape(align_intro)}</p>",
            '<a href="alignment.png"><img src="alignment.png" alt="Alignment"></a>',
        ]
    md = "\n".join(
        [
            f"# Sweep `{store.sweep}`: {metric}",
            "",
            intro,
            "",
            f"## Learning curves (mean over seeds, band = {band_text})",
            "",
            "![Learning curves](curves.png)",
            "",
            "## Final comparison (each trial's last reported epoch)",
            "",
            "![Final comparison](final.png)",
            "",
            format_table(_shown(last, cols), "markdown"),
            f"## Best over epochs ({mode})",
            "",
            format_table(_shown(best, cols), "markdown"),
            *md_extra,
        ]
    )
    title = html.escape(f"Sweep {store.sweep}: {metric}")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
img {{ max-width: 100%; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>{html.escape(intro).replace("`", "")}</p>
<h2>Learning curves (mean over seeds, band = {html.escape(band_text)})</h2>
<a href="curves.png"><img src="curves.png" alt="Learning curves"></a>
<h2>Final comparison (each trial's last reported epoch)</h2>
<a href="final.png"><img src="final.png" alt="Final comparison"></a>
{_html_table(_shown(last, cols))}
<h2>Best over epochs ({html.escape(mode)})</h2>
{_html_table(_shown(best, cols))}
{chr(10).join(html_extra)}
</body>
</html>
"""
    loc = resolve(out_dir)
    written = []
    files = [("curves.png", curves_png), ("final.png", final_png)]
    if align_png is not None:
        files.append(("alignment.png", align_png))
    if seq_png is not None:
        files.append(("sequential.png", seq_png))
    for name, data in (*files, ("report.md", md.encode()), ("report.html", page.encode())):
        path = loc.join(name)
        write_bytes(loc, path, data)
        written.append(path if loc.local and "://" not in out_dir else f"{out_dir.rstrip('/')}/{name}")
    return written
