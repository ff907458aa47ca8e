"""The sequential phase's record in the sweep dir (the driver is :mod:`gapinit_ray.sequential`), ``sequential.json`` (written whole, atomically).

Two kinds of content:

* **decisions the driver took** and must take the same way after a restart: the rounds it started
  (their trials, the device-hours spent and estimated when it started them) and whether it ended the
  phase at the budget. A resumed driver finishes a started round before anything else and never starts
  a round again once the budget ended the phase.
* **the audit log**, derived from the results: every comparison's looks (seeds so far, the statistic,
  the e-value and the confidence sequence, the α it uses, the anytime-valid p, the decision) and its
  verdict. It is recomputed from the stored rows at every look, so it is the same whether or not the
  driver was killed in between; what it held before is kept in ``history`` when a recomputation
  disagrees (it never has: a look is a pure function of the rows).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gapinit_ray.atomic import write_atomic
from gapinit_ray.errors import GapinitError
from gapinit_ray.names import SEQUENTIAL_FILE

VERSION = 1

# a comparison's status in the record (its verdict says more: gapinit_ray.results.anytime's decisions,
# "unresolved" or "not compared")
OPEN, DECIDED, NOT_COMPARED, FAILED, AT_MAX, AT_BUDGET = (
    "open",
    "decided",
    "not compared",
    "failed",
    "unresolved at max_seeds",
    "unresolved at budget",
)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v


def from_json(v: Any) -> Any:
    """Undo :func:`_json_safe` for one value (None -> NaN where a float is expected is the reader's call)."""
    if v == "inf":
        return math.inf
    if v == "-inf":
        return -math.inf
    return v


class SequentialLog:
    """``<sweep dir>/sequential.json``: rounds, the ending, looks and verdicts."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / SEQUENTIAL_FILE
        self.data: dict[str, Any] = {
            "version": VERSION,
            "rounds": [],
            "ended": None,
            "looks": [],
            "verdicts": [],
        }
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as e:
                raise GapinitError(
                    f"{self.path}: cannot read the sequential phase's record ({type(e).__name__}); it is "
                    "corrupt: restore it from a backup, or remove it to recompute the looks (rounds "
                    "already run are kept in the results)"
                ) from None
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise GapinitError(f"{self.path}: not a version-{VERSION} sequential record")
            self.data.update(data)

    @classmethod
    def read(cls, root: str | Path) -> SequentialLog | None:
        """The record of a sweep dir, or None when the sweep has none."""
        return cls(root) if (Path(root) / SEQUENTIAL_FILE).exists() else None

    # ---------------------------------------------------------------------------------- decisions

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.data["rounds"]

    @property
    def ended(self) -> dict[str, Any] | None:
        return self.data["ended"]

    def start_round(self, trials: list[dict[str, Any]], spent_h: float, estimate_h: float | None) -> dict:
        rnd = {
            "round": len(self.rounds) + 1,
            "trials": trials,
            "seeds": sorted({t["seed"] for t in trials}),
            "spent_device_hours": spent_h,
            "estimated_device_hours": estimate_h,
        }
        self.rounds.append(rnd)
        self._write()
        return rnd

    def end(self, reason: str, spent_h: float, estimate_h: float | None, budget_h: float | None) -> None:
        self.data["ended"] = {
            "reason": reason,
            "spent_device_hours": spent_h,
            "next_round_estimated_device_hours": estimate_h,
            "budget_device_hours": budget_h,
        }
        self._write()

    # ---------------------------------------------------------------------------------- audit log

    def record(self, states: list, summary: dict[str, Any]) -> None:
        """Rewrite the looks and verdicts from ``states`` (:class:`~.comparisons.State`)."""
        looks, verdicts = [], []
        for st in states:
            c = st.comparison
            base = {"comparison": c.name, "axis": c.axis, "a": c.a, "b": c.b, "stratum": dict(c.stratum)}
            best = 1.0
            for lk in st.looks:
                # the anytime-valid p-value: 1 / the largest e-value so far (Ville: valid at any look)
                best = max(best, lk.e_value) if lk.e_value == lk.e_value else best
                row = {**base, "seed": st.seeds[lk.n - 1], **lk.as_dict(), "p_anytime": min(1.0, 1.0 / best)}
                looks.append(row)
            last = st.last.as_dict() if st.last else {}
            verdicts.append(
                {
                    **base,
                    "status": st.status,
                    "verdict": st.verdict,
                    "reason": st.reason,
                    "n": st.n,
                    "seeds": list(st.seeds),
                    "diffs": list(st.diffs),
                    "mean": last.get("mean"),
                    "cs_low": last.get("cs_low"),
                    "cs_high": last.get("cs_high"),
                    "e_value": last.get("e_value"),
                    "alpha": last.get("alpha"),
                    "seeds_still_needed": st.still_needed,
                }
            )
        new = _json_safe({"looks": looks, "verdicts": verdicts, "summary": summary})
        old_looks = self.data.get("looks") or []
        if any(lk not in new["looks"] for lk in old_looks):
            self.data.setdefault("history", []).append({"looks": old_looks})
        self.data.update(new)
        self._write()

    @property
    def looks(self) -> list[dict[str, Any]]:
        return self.data.get("looks") or []

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        return self.data.get("verdicts") or []

    @property
    def summary(self) -> dict[str, Any]:
        return self.data.get("summary") or {}

    def _write(self) -> None:
        write_atomic(self.path, json.dumps(_json_safe(self.data), indent=1, sort_keys=True))
