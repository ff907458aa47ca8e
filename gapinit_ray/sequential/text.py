"""The sequential phase as text: one line per look while it runs, the verdict table (``gapinit run``'s
end, ``gapinit results``, the report) and the audit log of every look (``gapinit results --looks``).
Reads :class:`~.comparisons.State` while running and the record (:class:`~.log.SequentialLog`) after.
"""

from __future__ import annotations

import math
from typing import Any

from gapinit_ray.results import anytime
from gapinit_ray.sequential import comparisons as C
from gapinit_ray.sequential.log import SequentialLog, from_json


def _num(v: Any, fmt: str = "+.3g") -> str:
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
        return f"equivalent within ±{min_effect:g}, decided at {n} seeds"
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


def look_line(st: C.State) -> str:
    """One line for the live log of a sweep: where a comparison stands after its latest look."""
    lk = st.last
    head = f"sequential: {st.comparison.name}: "
    if lk is None:
        return head + verdict_text(_record(st))
    return (
        f"{head}{lk.n} seeds, diff {_num(lk.mean)}, CS [{_num(lk.cs_low)}, {_num(lk.cs_high)}] "
        f"(α {lk.alpha:.3g}), e {_num(lk.e_value, '.3g')}: {verdict_text(_record(st))}"
    )


def _record(st: C.State) -> dict[str, Any]:
    c = st.comparison
    return {
        "a": c.a,
        "b": c.b,
        "verdict": st.verdict,
        "status": st.status,
        "n": st.n,
        "reason": st.reason,
        "seeds_still_needed": st.still_needed,
    }


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
                "diff": _num(v.get("mean")),
                "cs_low": _num(v.get("cs_low")),
                "cs_high": _num(v.get("cs_high")),
                "e_value": _num(v.get("e_value"), ".3g"),
                "verdict": verdict_text(v, s.get("min_effect"), s.get("mode", "max")),
            }
        )
    head = (
        f"sequential comparisons ({s.get('metric')} at epoch {s.get('epoch')}, diff = first arm − other; "
        f"anytime-valid t-mixture confidence sequences at α = {s.get('alpha')} family-wise over "
        f"{s.get('comparisons')} comparison(s), {_num(s.get('alpha_each'), '.3g')} each):"
    )
    table = format_table(pa.Table.from_pylist(rows), "table").rstrip("\n") if rows else "(no comparisons)"
    arms = ", ".join(f"{k} {n}" for k, n in (s.get("seeds_per_arm") or {}).items())
    budget = s.get("budget_device_hours")
    cost = f"{_num(s.get('spent_device_hours'), '.3g')} device-hours spent" + (
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
            "mean": _num(lk.get("mean")),
            "sd": _num(lk.get("sd"), ".3g"),
            "t": _num(lk.get("t"), ".3g"),
            "e_value": _num(lk.get("e_value"), ".3g"),
            "p_anytime": _num(lk.get("p_anytime"), ".3g"),
            "cs_low": _num(lk.get("cs_low")),
            "cs_high": _num(lk.get("cs_high")),
            "alpha": _num(lk.get("alpha"), ".3g"),
            "decision": lk["decision"],
        }
        for lk in log.looks
    ]
    if not rows:
        return "sequential looks: none yet (a comparison is first looked at with 2 paired seeds)"
    return "sequential looks (every look, in seed order):\n" + format_table(
        pa.Table.from_pylist(rows), "table"
    )
