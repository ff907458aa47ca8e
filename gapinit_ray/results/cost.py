"""What a sweep cost, and what seed-group ASHA saved.

Every report carries the cost of the work since the previous report of its Train run (the first
report of a run: since its worker processes started, so start-up, model load and DeepSpeed set-up
count): ``device_s`` (GPU-seconds held on GPU: wall time x GPUs of the trial; CPU-seconds used on CPU:
the workers' process CPU time, summed over ranks), ``wall_s`` (rank 0's wall time), ``samples`` and
``tokens`` (training samples and tokens processed, all ranks). A trial's cost is the sum over its
reports. Work a killed worker did after its last collected report is not in any report (it is redone,
and counted, by the restarted run).

ASHA's saving: a trial the scheduler stopped at epoch ``E`` would have trained to ``max_t``; at its own
measured cost per epoch (its device-seconds over the epochs it trained) that is
``cost_per_epoch x (max_t - E)`` more. The sweep's saving is the sum over stopped trials, and its share
is ``saved / (used + saved)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from gapinit_ray.names import SPEC_FILE
from gapinit_ray.results.stop_reason import parse as parse_stop_reason

#: per-report cost columns (float64 in the metrics table; absent in sweeps from before they existed)
COST_COLUMNS = ("device_s", "wall_s", "samples", "tokens")


@dataclass
class TrialCost:
    trial_id: str
    arm: tuple
    device_s: float
    wall_s: float
    samples: float
    tokens: float
    last_epoch: float
    stopped: bool
    saved_device_s: float


def trial_costs(metrics: pa.Table, trials: pa.Table | None, max_t: float, by: list[str]) -> list[TrialCost]:
    """One :class:`TrialCost` per trial with cost columns; ``by``: the columns naming its arm."""
    if not set(COST_COLUMNS) <= set(metrics.column_names):
        return []
    stopped: set[str] = set()
    if trials is not None and trials.num_rows and "stop_reason" in trials.column_names:
        for tid, reason in zip(
            trials.column("trial_id").to_pylist(), trials.column("stop_reason").to_pylist(), strict=True
        ):
            stop = parse_stop_reason(reason)
            if stop is not None and stop.scheduler_stop:  # stopped by ASHA / seed-group ASHA (not an error)
                stopped.add(tid)
    cols = ["trial_id", "epoch", *COST_COLUMNS, *by]
    rows: dict[str, list[dict]] = {}
    for r in metrics.select(cols).to_pylist():
        rows.setdefault(r["trial_id"], []).append(r)
    out = []
    for tid, reports in sorted(rows.items()):

        def total(key: str, reports=reports) -> float:
            return float(sum(r[key] or 0.0 for r in reports))

        last = max(r["epoch"] for r in reports)
        device = total("device_s")
        trained = sum(r["device_s"] or 0.0 for r in reports if r["epoch"] > 0)  # epoch 0: no training
        saved = 0.0
        if tid in stopped and last > 0 and max_t > last:
            saved = trained / last * (max_t - last)
        out.append(
            TrialCost(
                trial_id=tid,
                arm=tuple(reports[0][b] for b in by),
                device_s=device,
                wall_s=total("wall_s"),
                samples=total("samples"),
                tokens=total("tokens"),
                last_epoch=last,
                stopped=tid in stopped,
                saved_device_s=saved,
            )
        )
    return out


def cost_summary(costs: list[TrialCost]) -> dict:
    """Totals per arm and for the sweep: ``{"arms": {arm: {...}}, "sweep": {...}}``."""

    def sums(items: list[TrialCost]) -> dict:
        used = sum(c.device_s for c in items)
        saved = sum(c.saved_device_s for c in items)
        return {
            "trials": len(items),
            "device_s": used,
            "wall_s": sum(c.wall_s for c in items),
            "samples": sum(c.samples for c in items),
            "tokens": sum(c.tokens for c in items),
            "stopped": sum(c.stopped for c in items),
            "asha_saved_device_s": saved,
            "asha_saved_share": saved / (used + saved) if used + saved > 0 else 0.0,
        }

    arms: dict[tuple, list[TrialCost]] = {}
    for c in costs:
        arms.setdefault(c.arm, []).append(c)
    return {
        "arms": {a: sums(v) for a, v in sorted(arms.items(), key=lambda kv: str(kv[0]))},
        "sweep": sums(costs),
    }


def _hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def format_cost(summary: dict, by: list[str], unit: str) -> str:
    """The cost lines ``gapinit results`` prints under its table. ``unit``: ``GPU`` or ``CPU``."""
    lines = [f"cost ({unit}-time; {', '.join(by)}):"]
    names = {arm: ", ".join(str(a) for a in arm) for arm in summary["arms"]}
    width = max([len("sweep"), *map(len, names.values())])

    def line(name: str, s: dict) -> str:
        return (
            f"  {name:<{width}}  {_hours(s['device_s']):>9} {unit}  wall {_hours(s['wall_s']):>9}  "
            f"{s['samples']:.0f} samples  {s['tokens']:.0f} tokens  ({s['trials']} trials)"
        )

    lines += [line(names[arm], s) for arm, s in summary["arms"].items()]
    t = summary["sweep"]
    lines.append(line("sweep", t))
    if t["stopped"]:
        lines.append(
            f"  ASHA stopped {t['stopped']} trial(s) early: saved {_hours(t['asha_saved_device_s'])} {unit} "
            f"({100 * t['asha_saved_share']:.0f} % of what training every trial to max_t would have used)"
        )
    return "\n".join(lines)


def calibration_costs(sweep_dir: str, spec: dict) -> list[dict]:
    """The calibration cost of each GapArtifact the sweep's trials use (``<sweep>/artifacts.json``):
    ``{"key", "device_s", "wall_s", "samples"}``; device-seconds are the forward stage's wall time x its
    workers x the CPUs (or 1 GPU) each calibration worker holds (held, not used: an upper bound). Empty when the sweep dir is not local or has no
    such file (sweeps from before it existed)."""
    import json
    import os

    try:
        with open(os.path.join(sweep_dir, "artifacts.json"), encoding="utf-8") as f:
            paths = json.load(f)
    except (OSError, ValueError):
        return []
    res = spec.get("resources", {})
    per_worker = 1.0 if res.get("gpus_per_worker") else float(res.get("cpus_per_worker", 1.0))
    out = []
    for key, path in sorted((paths or {}).items()):
        if not path:
            continue
        try:
            with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        t = meta.get("timings", {})
        out.append(
            {
                "key": key,
                "device_s": float(t.get("forward_s", 0.0)) * int(t.get("workers", 1)) * per_worker,
                "wall_s": float(t.get("total_s", 0.0)),
                "samples": int(meta.get("num_samples", 0)),
            }
        )
    return out


def cost_text(sweep_dir: str, metrics: pa.Table, trials: pa.Table | None, by: list[str]) -> str | None:
    """The cost lines for ``gapinit results``: per arm (``by``), the sweep, ASHA's saving, calibration.
    ``None`` when the sweep's reports carry no cost columns."""
    import json
    import os

    try:
        with open(os.path.join(sweep_dir, SPEC_FILE), encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError):
        spec = {}
    epochs = metrics.column("epoch").to_pylist() if metrics.num_rows else [0.0]
    max_t = float(
        (spec.get("scheduler") or {}).get("max_t") or (spec.get("train") or {}).get("epochs") or max(epochs)
    )
    costs = trial_costs(metrics, trials, max_t, by)
    if not costs:
        return None
    unit = "GPU" if (spec.get("resources") or {}).get("gpus_per_worker") else "CPU"
    text = format_cost(cost_summary(costs), by, unit)
    cal = calibration_costs(sweep_dir, spec)
    if cal:
        total = sum(c["device_s"] for c in cal)
        text += (
            f"\n  calibration: {len(cal)} GapArtifact(s), {_hours(total)} {unit} "
            f"({sum(c['samples'] for c in cal)} samples; computed once, reused by every trial)"
        )
    return text
