"""What the dashboard's JSON endpoints return: pure functions of a :class:`SweepReader`'s tables.

Every number comes from the same code as ``gapinit results``: groups are :func:`gapinit_ray.results.aggregate.default_by`
(the table a sweep prints at its end), per-epoch bands are the mean and Student-t 95 % interval over
seeds that :func:`~gapinit_ray.results.aggregate.aggregate` computes at ``at="epoch=E"``, the comparison
is :func:`~gapinit_ray.results.compare.compare` with the arms and strata ``gapinit results --compare``
uses, and stop reasons are parsed by :mod:`~gapinit_ray.results.stop_reason`. Results are cached per
:meth:`SweepReader.version`, so a page that polls without a change costs one fingerprint.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gapinit_ray.dashboard.comparison import (
    COMPARE_COLUMNS,
    compare_process,
    comparison_payload,
    shutdown_compare_process,
)
from gapinit_ray.dashboard.payload import clean, clean_keys, codes, floats, group_order
from gapinit_ray.dashboard.reader import SweepReader
from gapinit_ray.names import DEFAULT_METRIC
from gapinit_ray.results._fs import ResultsError
from gapinit_ray.results.store import TERMINAL_STATUSES, column_axis

#: metrics shown in the trial table next to the scheduler's (when the sweep reported them)
TABLE_METRICS = ("val_loss", "train_loss", "align_cos_mean")
ALIGNMENT = ("align_cos_mean", "align_cos_min", "align_cos_max")

__all__ = ["ALIGNMENT", "TABLE_METRICS", "Views", "check_at", "clean", "shutdown_compare_process"]


class Views:
    """The endpoints' payloads for one sweep, each cached until the sweep's version changes."""

    def __init__(self, reader: SweepReader):
        self.reader = reader
        self._cache: dict[tuple, tuple[str, Any]] = {}
        self._jobs: dict[tuple, dict[str, Any]] = {}  # comparison_live's worker per argument set
        self._lock = threading.Lock()

    def cached(self, key: tuple, version: str, compute: Callable[[], Any]) -> Any:
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        value = compute()
        with self._lock:
            self._cache[key] = (version, value)
        return value

    # ---------------------------------------------------------------------------- basics
    def metric_default(self) -> str:
        spec = self.reader.spec() or {}
        return (spec.get("scheduler") or {}).get("metric") or DEFAULT_METRIC

    def mode(self) -> str:
        spec = self.reader.spec() or {}
        return (spec.get("scheduler") or {}).get("mode") or "max"

    def groups(self, metrics: pa.Table) -> tuple[list[str], list[str]]:
        """(group-by columns: ``default_by``, the ones of them that vary: the label's columns)."""
        from gapinit_ray.results.aggregate import default_by, resolve_by

        by = default_by(metrics) if metrics.num_rows else []
        # the label names what the spec varies even while only one of its values has reported yet
        axes = ((self.reader.spec() or {}).get("search") or {}).get("axes") or {}
        searched = []
        for axis, values in axes.items():
            if axis != "seed" and isinstance(values, list) and len(values) > 1:
                with contextlib.suppress(ResultsError):
                    searched += resolve_by(metrics, [axis])
        varying = [c for c in by if c in searched or pc.count_distinct(metrics[c]).as_py() > 1]
        return by, varying

    @staticmethod
    def label(row: dict[str, Any], varying: list[str]) -> str:
        if not varying:
            return "all"
        return ", ".join(f"{column_axis(c) if c.startswith('ax_') else c}={row.get(c)}" for c in varying)

    # ---------------------------------------------------------------------------- trials
    def trials(self) -> dict[str, Any]:
        """One row per trial: status, group, seed, rung reached, stop reason, last metrics, error line,
        checkpoint (trials with reports but no trial row yet are listed too)."""
        from gapinit_ray.results.stop_reason import parse

        metrics, trials = self.reader.metrics(), self.reader.trials()
        metric = self.metric_default()
        by, varying = self.groups(metrics)
        shown = [m for m in (metric, *TABLE_METRICS) if m in metrics.column_names]
        shown = list(dict.fromkeys(shown))
        last: dict[str, dict[str, Any]] = {}
        if metrics.num_rows:
            cols = [
                c
                for c in dict.fromkeys(["trial_id", "epoch", "timestamp", "seed", *by, *shown])
                if c in metrics.column_names
            ]
            t = metrics.select(cols)
            codes = pc.dictionary_encode(t["trial_id"].combine_chunks())
            code = codes.indices.to_numpy(zero_copy_only=False)
            epoch = pc.cast(t["epoch"], pa.float64()).to_numpy(zero_copy_only=False)
            ts = pc.cast(t["timestamp"], pa.int64()).to_numpy(zero_copy_only=False)
            order = np.lexsort((epoch, code))  # by trial, then epoch: each trial's last row ends its run
            c = code[order]
            ends = np.flatnonzero(np.r_[c[1:] != c[:-1], True])
            starts = np.r_[0, ends[:-1] + 1]
            first_ts = np.minimum.reduceat(ts[order], starts)
            rows_last = t.take(pa.array(order[ends])).to_pylist()
            for r, n, t0 in zip(rows_last, ends - starts + 1, first_ts, strict=True):
                r["n_reports"] = int(n)
                r["started"] = datetime.datetime.fromtimestamp(int(t0) / 1000, datetime.timezone.utc)
                last[r["trial_id"]] = r
        rows = []
        keep = [c for c in trials.column_names if c not in ("config_json", "init_checks")]
        trial_rows = {r["trial_id"]: r for r in trials.select(keep).to_pylist()} if trials.num_rows else {}
        for tid in sorted(set(trial_rows) | set(last)):
            t, m = trial_rows.get(tid, {}), last.get(tid, {})
            src = {**m, **{k: v for k, v in t.items() if v is not None}}
            reason = parse(t.get("stop_reason"))
            error = t.get("error")
            rows.append(
                {
                    "trial_id": tid,
                    "status": t.get("status") or (m and "RUNNING") or None,
                    "group": self.label(src, varying),
                    "seed": src.get("seed"),
                    "rung_reached": t.get("rung_reached"),
                    "stop_reason": t.get("stop_reason"),
                    "stopped_by": reason.kind if reason else None,
                    "last_epoch": m.get("epoch", t.get("last_epoch")),
                    "n_reports": m.get("n_reports", 0),
                    "metrics": {k: m.get(k) for k in shown},
                    "error": error.strip().splitlines()[-1] if error and error.strip() else None,
                    "checkpoint": t.get("checkpoint_path"),
                    "started": m.get("started"),
                    "last_report": m.get("timestamp"),
                    "updated_at": t.get("updated_at"),
                }
            )
        return clean({"metric": metric, "metrics": shown, "trials": rows})

    # ---------------------------------------------------------------------------- curves
    def curves(self, metric: str | None = None, seeds: bool = False) -> dict[str, Any]:
        """Per group: per epoch the mean over its seeds and the Student-t 95 % interval (as
        ``aggregate(..., at="epoch=E")``), and with ``seeds`` each trial's own line."""
        from scipy import stats

        from gapinit_ray.results.aggregate import check_metric

        metrics = self.reader.metrics()
        metric = metric or self.metric_default()
        if metrics.num_rows == 0:
            return {"metric": metric, "groups": []}
        check_metric(metrics, metric)
        by, varying = self.groups(metrics)
        cols = [
            c for c in dict.fromkeys(["trial_id", "epoch", "seed", *by, metric]) if c in metrics.column_names
        ]
        t = metrics.select(cols)
        v = pc.cast(t[metric], pa.float64()).to_numpy(zero_copy_only=False)
        ok = np.isfinite(v)
        t, v = t.filter(pa.array(ok)), v[ok]
        if t.num_rows == 0:
            return {"metric": metric, "by": by, "groups": []}
        epoch = pc.cast(t["epoch"], pa.float64()).to_numpy(zero_copy_only=False)
        tcode = codes(t["trial_id"])
        # the group of each row: its `by` values, numbered in sorted order of the values
        combined = np.zeros(t.num_rows, np.int64)
        for c in by:  # one integer per distinct key tuple (mixed radix of the columns' codes)
            k = codes(t[c]) + 1
            combined = combined * (int(k.max()) + 1) + k
        uniq, gid = np.unique(combined, return_inverse=True)
        gid = gid.reshape(-1)
        first = np.zeros(len(uniq), np.int64)
        first[gid[::-1]] = np.arange(t.num_rows)[::-1]  # a row of each group: its key values
        key_rows = t.select(by).take(pa.array(first)).to_pylist() if by else [{}] * len(uniq)
        groups = sorted(range(len(uniq)), key=lambda g: group_order(key_rows[g].values()))
        # (group, epoch) runs: n, mean, std (ddof=1) over the seeds that reported there
        order = np.lexsort((epoch, gid))
        g_o, e_o, v_o = gid[order], epoch[order], v[order]
        new = np.r_[True, (g_o[1:] != g_o[:-1]) | (e_o[1:] != e_o[:-1])]
        starts = np.flatnonzero(new)
        n = np.diff(np.r_[starts, len(order)])
        mean = np.add.reduceat(v_o, starts) / n
        dev = (v_o - np.repeat(mean, n)) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.where(n > 1, np.sqrt(np.add.reduceat(dev, starts) / np.maximum(n - 1, 1)), np.nan)
        half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * std / np.sqrt(n)
        run_g = g_o[starts]
        n_trials = np.zeros(len(uniq), np.int64)
        pairs = np.unique(gid * (int(tcode.max()) + 2) + tcode + 1)
        np.add.at(n_trials, pairs // (int(tcode.max()) + 2), 1)
        lines: dict[int, list] = {}
        if seeds:
            order_t = np.lexsort((epoch, tcode))
            tc = tcode[order_t]
            t_starts = np.flatnonzero(np.r_[True, tc[1:] != tc[:-1]])
            t_ends = np.r_[t_starts[1:], len(order_t)]
            info = (
                t.select([c for c in ("trial_id", "seed") if c in cols])
                .take(pa.array(order_t[t_starts]))
                .to_pylist()
            )
            for a, b, r in zip(t_starts, t_ends, info, strict=True):
                idx = order_t[a:b]
                lines.setdefault(int(gid[idx[0]]), []).append(
                    {
                        "trial_id": r["trial_id"],
                        "seed": r.get("seed"),
                        "epoch": epoch[idx].tolist(),
                        "value": v[idx].tolist(),
                    }
                )
        out = []
        for g in groups:
            sel = run_g == g
            group = {
                "group": self.label(key_rows[g], varying),
                "key": key_rows[g],
                "epoch": e_o[starts][sel].tolist(),
                "n": n[sel].tolist(),
                "mean": floats(mean[sel]),
                "ci95_low": floats(mean[sel] - half[sel]),
                "ci95_high": floats(mean[sel] + half[sel]),
                "n_trials": int(n_trials[g]),
            }
            if seeds:
                group["seeds"] = lines.get(g, [])
            out.append(group)
        return {"metric": metric, "by": by, "groups": clean_keys(out)}

    # ----------------------------------------------------------------------------- rungs
    def rungs(self) -> dict[str, Any]:
        """The rung timeline from seed-group ASHA's saved state: per rung (milestone) the groups judged
        with their mean, the current cutoff, which groups were promoted and which stopped."""
        state = self.reader.scheduler_state()
        if not state:
            return {
                "available": False,
                "why": "no scheduler_state.json (the sweep's scheduler is not seed-group ASHA, or no rung yet)",
            }
        try:
            snapshot = _rung_state(state, self.reader.scheduler_log())
        except (ValueError, KeyError, TypeError) as e:
            return {"available": False, "why": f"scheduler_state.json could not be read: {e}"}
        settings = state.get("settings") or {}
        rungs = []
        for i, ms in enumerate(snapshot["milestones"]):
            info = snapshot["rungs"][ms]
            promoted, stopped, pending = [], [], []
            for key, g in snapshot["groups"].items():
                d = g["decisions"].get(ms)
                label = _group_label(key)
                if d == "CONTINUE":
                    promoted.append(label)
                elif d == "STOP":
                    stopped.append(label)
                elif g["decision"] not in ("stopped",) and not (
                    g["stopped_at"] is not None and g["stopped_at"] < ms
                ):
                    pending.append(label)
            means = {_group_label(k): v for k, v in info["group_means"].items()}
            rungs.append(
                {
                    "rung": i + 1,
                    "milestone": ms,
                    "groups_judged": len(means),
                    "group_means": means,
                    "cutoff": info["cutoff"],
                    "promoted": sorted(promoted),
                    "stopped": sorted(stopped),
                    "waiting": sorted(pending),
                }
            )
        groups = [
            {
                "group": _group_label(key),
                "state": g["decision"],
                "stopped_at": g["stopped_at"],
                "members": len(g["members"]),
                "member_status": dict(Counter(g["member_status"].values())),
            }
            for key, g in sorted(snapshot["groups"].items(), key=lambda kv: _group_label(kv[0]))
        ]
        return clean(
            {
                "available": True,
                "metric": settings.get("metric"),
                "mode": settings.get("mode"),
                "time_attr": settings.get("time_attr"),
                "reduction_factor": settings.get("reduction_factor"),
                "rungs": rungs,
                "groups": groups,
            }
        )

    # ------------------------------------------------------------------------ comparison
    def comparison_live(self, *args: Any, block: bool = False) -> dict[str, Any]:
        """:meth:`comparison` for the page: computed in a worker thread (its permutation tests can take
        seconds on a large sweep), answered at once. Up to date: the table. Otherwise the last finished
        table marked ``"stale": true`` (the sweep changed since; a new one is being computed), or
        ``{"pending": true}`` before the first one. ``block``: wait for a table of the sweep as it was
        when called (a running one may have changed again since). An argument error is raised as for
        :meth:`comparison`."""
        arms, metric, _at, by = args
        metrics = self.reader.metrics()
        if metrics.num_rows and arms:  # a bad argument is said now, not after the worker ran
            from gapinit_ray.results.aggregate import check_metric, resolve_by
            from gapinit_ray.results.compare import parse_arms

            check_metric(metrics, metric or self.metric_default())
            parse_arms(metrics, [a for a in arms.split(",") if a.strip()])
            resolve_by(metrics, [b.strip() for b in by.split(",") if b.strip()])
        for _ in range(2):  # block: at most an older job to finish, then one of this version
            version = self.reader.version()
            job = self._compare_job(args, version)
            if not block:
                job["done"].wait(0.15 if job.get("previous") is None else 0)
                break
            job["done"].wait()
            if job["version"] == version:
                break
        if job["done"].is_set():
            if job["error"] is not None:
                raise job["error"]
            return {**job["value"], "stale": job["version"] != version}
        if job.get("previous") is not None:
            return {**job["previous"], "stale": True}
        return {"pending": True, "rows": [], "why": "computing the comparison…"}

    def _compare_job(self, args: tuple, version: str) -> dict[str, Any]:
        """The comparison job of ``args``: the running or finished one, or a new one for ``version``
        when the last one finished on an older version (one worker per argument set at a time)."""
        with self._lock:
            job = self._jobs.get(args)
            if job is not None and (job["version"] == version or job["thread"].is_alive()):
                return job
            prev = job or {}
            job = {"version": version, "value": None, "error": None, "done": threading.Event()}
            job["previous"] = prev.get("value") or prev.get("previous")

            def work(job=job) -> None:
                try:
                    job["value"] = self.comparison(*args, in_process=False)
                except Exception as e:  # reported to the request that waits for it
                    job["error"] = e
                finally:
                    job["done"].set()

            job["thread"] = threading.Thread(target=work, name="gapinit-dashboard-compare", daemon=True)
            self._jobs[args] = job
            job["thread"].start()
            return job

    def comparison(
        self,
        arms: str | None = None,
        metric: str | None = None,
        at: str = "last",
        by: str = "init,rank,backbone",
        in_process: bool = True,
    ) -> dict[str, Any]:
        """``gapinit results --compare ARMS --metric M --at A --by B``'s table (same code, same
        strata rule), one record per row with its verdict and sample-size line. ``in_process=False``:
        computed in a separate process (:func:`compare_process`), so its permutation tests (seconds on a
        large sweep, mostly holding the GIL) do not slow the server's other requests."""
        metrics = self.reader.metrics()
        metric = metric or self.metric_default()
        if metrics.num_rows == 0:
            return {"metric": metric, "arms": [], "rows": [], "why": "no reports yet"}
        keep = [c for c in metrics.column_names if c in COMPARE_COLUMNS or c.startswith("ax_")]
        table = metrics.select(list(dict.fromkeys([*keep, metric])))
        if in_process:
            return comparison_payload(table, arms, metric, at, by, self.mode())
        return compare_process().submit(comparison_payload, table, arms, metric, at, by, self.mode()).result()

    # ----------------------------------------------------------------------------- spec
    def sequential(self) -> dict[str, Any]:
        """The sequential phase per comparison: the confidence sequence and e-value at every look
        (evidence against seeds), where it stopped and its verdict, from ``sequential.json``."""
        from gapinit_ray.results.looks_text import verdict_text

        record = self.reader.sequential()
        if not record:
            return {"available": False, "why": "no sequential phase (the spec has no `sequential` section)"}
        summary = record.get("summary") or {}
        panels = []
        for v in record.get("verdicts") or []:
            looks = [lk for lk in record.get("looks") or [] if lk["comparison"] == v["comparison"]]
            panels.append(
                {
                    "comparison": v["comparison"],
                    "verdict": verdict_text(v, summary.get("min_effect"), summary.get("mode", "max")),
                    "status": v["status"],
                    "n": [lk["n"] for lk in looks],
                    "seed": [lk["seed"] for lk in looks],
                    "mean": [lk["mean"] for lk in looks],
                    "cs_low": [lk["cs_low"] for lk in looks],
                    "cs_high": [lk["cs_high"] for lk in looks],
                    "e_value": [lk["e_value"] for lk in looks],
                    "decision": [lk["decision"] for lk in looks],
                }
            )
        return clean(
            {
                "available": True,
                "summary": summary,
                "rounds": len(record.get("rounds") or []),
                "ended": record.get("ended"),
                "comparisons": panels,
            }
        )

    def spec(self) -> dict[str, Any]:
        import yaml

        spec = self.reader.spec()
        if spec is None:
            return {"available": False, "yaml": None, "reproduce": None}
        text = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)
        name = spec.get("name", self.reader.name)
        return {
            "available": True,
            "yaml": text,
            "reproduce": f"gapinit run {name}.yaml storage=NEW_DIR   # the YAML above saved as {name}.yaml; "
            "its own storage resumes it instead",
            "resume": f"gapinit resume {self.reader.dir}",
        }

    # ---------------------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        """The sweeps-list row: spec summary, state, trials by status, CPU/GPU hours, started, last report."""
        spec = self.reader.spec() or {}
        metrics, trials = self.reader.metrics(), self.reader.trials()
        statuses = Counter(trials["status"].to_pylist()) if trials.num_rows else Counter()
        reported = set(pc.unique(metrics["trial_id"]).to_pylist()) if metrics.num_rows else set()
        known = set(trials["trial_id"].to_pylist()) if trials.num_rows else set()
        if reported - known:
            statuses["RUNNING"] += len(reported - known)
        live = sum(n for s, n in statuses.items() if s not in TERMINAL_STATUSES)
        if not statuses:
            state = "empty"
        elif live:
            state = "running"
        elif statuses.get("ERROR"):
            state = "failed"
        else:
            state = "finished"
        hours = _trial_hours(metrics)
        res = spec.get("resources") or {}
        workers = float(res.get("workers_per_trial") or 1)
        search = (spec.get("search") or {}).get("axes") or {}
        sched = spec.get("scheduler") or {}
        started = last = None
        if metrics.num_rows:
            ts = metrics["timestamp"]
            started, last = pa.compute.min(ts).as_py(), pa.compute.max(ts).as_py()
        return clean(
            {
                "name": self.reader.name,
                "state": state,
                "backbones": [b.get("name") for b in spec.get("backbones") or []],
                "axes": {k: v for k, v in search.items()},
                "scheduler": f"{sched.get('type', '?')} on {sched.get('metric', '?')} ({sched.get('mode', '?')})",
                "epochs": (spec.get("train") or {}).get("epochs"),
                "trials": dict(statuses),
                "n_trials": sum(statuses.values()),
                **_device_hours(metrics, hours, workers, res),
                "started": started,
                "last_report": last,
                "version": self.reader.version(),
            }
        )


def _device_hours(metrics: pa.Table, hours: float, workers: float, res: dict) -> dict[str, float]:
    """CPU/GPU hours: the reports' measured ``device_s`` summed (gapinit_ray.results.cost) when they
    carry it, else each trial's first-to-last-report time x the workers and CPUs/GPUs the spec asked."""
    gpus = float(res.get("gpus_per_worker") or 0)
    if "device_s" in metrics.column_names and metrics.num_rows:
        measured = (pa.compute.sum(metrics["device_s"]).as_py() or 0.0) / 3600
        return {"cpu_hours": 0.0 if gpus else measured, "gpu_hours": measured if gpus else 0.0}
    return {
        "cpu_hours": hours * workers * float(res.get("cpus_per_worker") or 0),
        "gpu_hours": hours * workers * gpus,
    }


def _trial_hours(metrics: pa.Table) -> float:
    """Σ over trials of (last report − first report): the time trials spent between reports, a lower
    bound of what they held (start-up before the first report is not in the store)."""
    if metrics.num_rows == 0:
        return 0.0
    ts = pa.compute.cast(metrics["timestamp"], pa.int64()).to_numpy(zero_copy_only=False)
    tid = pa.compute.dictionary_encode(metrics["trial_id"].combine_chunks()).indices.to_numpy()
    lo = np.full(tid.max() + 1, np.iinfo(np.int64).max)
    hi = np.full(tid.max() + 1, np.iinfo(np.int64).min)
    np.minimum.at(lo, tid, ts)
    np.maximum.at(hi, tid, ts)
    return float((hi - lo).sum() / 3.6e6)


def _group_label(key: str) -> str:
    """Seed-group ASHA keys groups by the JSON of a trial's parameters minus the seed."""
    try:
        params = json.loads(key)
    except ValueError:
        return key
    if not isinstance(params, dict) or not params:
        return key
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _rung_state(state: dict[str, Any], log: bytes = b"") -> dict[str, Any]:
    """The rung state (:meth:`RungBook.rung_state`) of a saved snapshot and its log, with the group ids
    replaced by their readable configs; nothing is ever written back."""
    from gapinit_ray.seedgroup.state import rung_state_of

    rs = rung_state_of(json.dumps(state), log)
    labels = rs.pop("labels")
    rs["groups"] = {labels.get(k, k): g for k, g in rs["groups"].items()}
    for info in rs["rungs"].values():
        info["group_means"] = {labels.get(k, k): v for k, v in info["group_means"].items()}
    return rs


def check_at(at: str) -> str:
    if at in ("last", "best") or at.startswith("epoch="):
        return at
    raise ResultsError(f"at {at!r}: expected 'last', 'best' or 'epoch=N'")
