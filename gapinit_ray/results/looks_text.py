"""The sequential phase's record as text and a figure: the verdict table (``gapinit run``'s end,
``gapinit results``, the report), the audit log of every look (``gapinit results --looks``) and the
evidence against seeds (``report``). Reads the record (:class:`~gapinit_ray.results.looks.SequentialLog`).
"""

from __future__ import annotations

import math
from typing import Any

from gapinit_ray.results import anytime
from gapinit_ray.results import looks as C
from gapinit_ray.results.looks import SequentialLog, from_json


def fmt_num(v: Any, fmt: str = "+.3g") -> str:
    v = from_json(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "+inf" if v > 0 else "-inf"
    return format(v, fmt)


def verdict_text(v: dict[str, Any], min_effect: float | None = None, mode: str = "max") -> str:
    """A verdict record (``SequentialLog.verdicts`` item) in words."""
    a, b, verdict, n = v["a"], v["b"], v["verdict"], v["n"]
    better = {"max": "better", "min": "worse"}[mode]
    if verdict == anytime.A_HIGHER:
        return f"{a} higher ({better}), decided at {n} seeds"
    if verdict == anytime.B_HIGHER:
        return f"{b} higher ({better}), decided at {n} seeds"
    if verdict == anytime.EQUIVALENT:
        within = f"±{min_effect:g}" if min_effect is not None else "±min_effect"
        return f"equivalent within {within}, decided at {n} seeds"
    if v["status"] == C.NOT_COMPARED:
        return f"not compared: {v['reason']}"
    need = from_json(v.get("seeds_still_needed"))
    more = ""
    if isinstance(need, int | float) and not math.isnan(need):
        more = (
            f"; ≈{max(0, int(need) - n)} more seeds if the estimates hold"
            if math.isfinite(need)
            else "; no verdict in sight at this spread"
        )
    if v["status"] == C.FAILED:
        return f"open: {v['reason']} (`gapinit resume` retries it)"
    if v["status"] == C.OPEN:
        return f"open at {n} seeds{more}"
    return f"{v['status']} ({n} seeds){more}"


def verdict_table(log: SequentialLog) -> str:
    """The verdicts, one row per comparison, with the phase's summary lines."""
    import pyarrow as pa

    from gapinit_ray.results.aggregate import format_table

    s = log.summary
    rows = []
    for v in log.verdicts:
        rows.append(
            {
                "comparison": v["comparison"],
                "seeds": v["n"],
                "diff": fmt_num(v.get("mean")),
                "cs_low": fmt_num(v.get("cs_low")),
                "cs_high": fmt_num(v.get("cs_high")),
                "e_value": fmt_num(v.get("e_value"), ".3g"),
                "verdict": verdict_text(v, s.get("min_effect"), s.get("mode", "max")),
            }
        )
    head = (
        f"sequential comparisons ({s.get('metric')} at epoch {s.get('epoch')}, diff = first arm − other; "
        f"anytime-valid t-mixture confidence sequences at α = {s.get('alpha')} family-wise over "
        f"{s.get('comparisons')} comparison(s), {fmt_num(s.get('alpha_each'), '.3g')} each; prior "
        f"{s.get('prior', '?')}):"
    )
    table = format_table(pa.Table.from_pylist(rows), "table").rstrip("\n") if rows else "(no comparisons)"
    arms = ", ".join(f"{k} {n}" for k, n in (s.get("seeds_per_arm") or {}).items())
    budget = s.get("budget_device_hours")
    cost = f"{fmt_num(s.get('spent_device_hours'), '.3g')} device-hours spent" + (
        f" of a {budget:g} budget" if budget else ""
    )
    ended = log.ended
    tail = "; ended at the budget" if ended and ended.get("reason") == "budget" else ""
    return "\n".join(
        [head, table, f"seeds per arm: {arms or '-'}; {len(log.rounds)} extra round(s); {cost}{tail}"]
    )


def looks_table(log: SequentialLog) -> str:
    """The audit log: every look of every comparison."""
    import pyarrow as pa

    from gapinit_ray.results.aggregate import format_table

    rows = [
        {
            "comparison": lk["comparison"],
            "n": lk["n"],
            "seed": lk["seed"],
            "mean": fmt_num(lk.get("mean")),
            "sd": fmt_num(lk.get("sd"), ".3g"),
            "t": fmt_num(lk.get("t"), ".3g"),
            "e_value": fmt_num(lk.get("e_value"), ".3g"),
            "p_anytime": fmt_num(lk.get("p_anytime"), ".3g"),
            "cs_low": fmt_num(lk.get("cs_low")),
            "cs_high": fmt_num(lk.get("cs_high")),
            "alpha": fmt_num(lk.get("alpha"), ".3g"),
            "decision": lk["decision"],
        }
        for lk in log.looks
    ]
    if not rows:
        return "sequential looks: none yet (a comparison is first looked at with 2 paired seeds)"
    return "sequential looks (every look, in seed order):\n" + format_table(
        pa.Table.from_pylist(rows), "table"
    )


def plot_looks(log: SequentialLog) -> bytes | None:
    """One panel per comparison: the confidence sequence (band) and the mean difference against seeds,
    0 and ±δ marked, a vertical line where a decided comparison stopped. PNG bytes; None without looks."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    verdicts = log.verdicts
    if not log.looks or not verdicts:
        return None
    s = log.summary
    fig = Figure(figsize=(6.5, 2.4 * len(verdicts)), layout="constrained")
    axes = fig.subplots(len(verdicts), 1, squeeze=False)[:, 0]
    for ax, v in zip(axes, verdicts, strict=True):
        looks = [lk for lk in log.looks if lk["comparison"] == v["comparison"]]
        n = [lk["n"] for lk in looks]
        mean = [lk["mean"] for lk in looks]
        spread = max((abs(m) for m in mean if m is not None), default=1.0) * 4 or 1.0
        low = [spread * -1 if lk["cs_low"] is None else lk["cs_low"] for lk in looks]
        high = [spread if lk["cs_high"] is None else lk["cs_high"] for lk in looks]
        ax.fill_between(n, low, high, alpha=0.25, label="confidence sequence")
        ax.plot(n, mean, marker="o", label="mean difference")
        ax.axhline(0, color="0.4", lw=0.8)
        if s.get("min_effect"):
            for y in (s["min_effect"], -s["min_effect"]):
                ax.axhline(y, color="0.6", lw=0.8, ls="--")
        if v["status"] == C.DECIDED and n:
            ax.axvline(n[-1], color="tab:green", lw=1)
        ax.set_ylim(-spread, spread)
        ax.set_title(
            f"{v['comparison']}: {verdict_text(v, s.get('min_effect'), s.get('mode', 'max'))}", fontsize=8
        )
        ax.set_xlabel("seeds")
        ax.set_ylabel("difference")
    axes[0].legend(fontsize=7, loc="upper right")
    FigureCanvasAgg(fig)  # the object API, never pyplot (as the report's figures)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()
