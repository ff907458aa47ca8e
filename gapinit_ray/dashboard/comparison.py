"""The dashboard's arm comparison: computed in one worker process, from the same code as ``gapinit results
--compare`` (:func:`~gapinit_ray.results.compare.compare`), so its permutation tests never block the server.
"""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa

from gapinit_ray.dashboard.payload import clean

#: the columns the comparison reads (config columns, the seed, what de-duplicates reports) + its metric
COMPARE_COLUMNS = {"trial_id", "epoch", "timestamp", "seed", "backbone", "init", "rank", "lr", "group_id"}
_POOL: Any = None
_POOL_LOCK = threading.Lock()


def compare_process():
    """One worker process for the comparisons of every dashboard in this process (spawned on first
    use: a fork of a process running Arrow / uvicorn threads is not safe)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            _POOL = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return _POOL


def shutdown_compare_process() -> None:
    """Stop the comparison worker process (a comparison still running is not waited for)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.shutdown(wait=False, cancel_futures=True)
            _POOL = None


def comparison_payload(
    metrics: pa.Table, arms: str | None, metric: str, at: str, by: str, mode: str
) -> dict[str, Any]:
    """The comparison endpoint's payload from the metric rows (see :meth:`Views.comparison`)."""
    from gapinit_ray.results.aggregate import resolve_by
    from gapinit_ray.results.compare import compare, parse_arms, sample_size_line
    from gapinit_ray.results.report import default_arms

    arm_list = [a for a in (arms.split(",") if arms else default_arms(metrics)) if a.strip()]
    if len(arm_list) < 2:
        return {"metric": metric, "arms": arm_list, "rows": [], "why": "fewer than two arms to compare"}
    arm_cols = {a.column for a in parse_arms(metrics, arm_list)}
    wanted = resolve_by(metrics, [b.strip() for b in by.split(",") if b.strip()])
    strata = [c for c in wanted if c not in arm_cols]
    table = compare(metrics, arm_list, metric=metric, at=at, mode=mode, by=strata, n_boot=10000)
    rows = table.to_pylist()
    for r in rows:
        where = ", ".join(f"{c}={r[c]}" for c in strata)
        r["sample_size"] = sample_size_line(r, where=where)
    return clean({"metric": metric, "at": at, "arms": arm_list, "strata": strata, "rows": rows})
