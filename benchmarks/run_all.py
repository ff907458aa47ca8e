"""Run every benchmark and write benchmarks/results/*.json plus benchmarks/results/SUMMARY.md.

    python -m benchmarks.run_all [--only calibration,trial,sweep,feature_cache,quickstart_memory,dashboard,trackers,seedgroup_scale] [--full]

Each figure is a ratio measured side by side in one run on the machine recorded with it; the machines
these run on are shared and noisy, so compare ratios, not absolute times across machines.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import time

from benchmarks.common import RESULTS
from gapinit_ray.atomic import write_atomic

ALL = (
    "calibration",
    "trial",
    "sweep",
    "feature_cache",
    "quickstart_memory",
    "dashboard",
    "trackers",
    "seedgroup_scale",
)
# arguments of each benchmark in the suite (--full: every benchmark's defaults): the feature cache's
# whole-sweep comparison (~16 min by itself on 2 CPUs) is left out and its last figures kept, marked
# carried_over; the results query is timed on 200 trials x 25 reports (building the data, ~10 ms per
# report, is most of that benchmark's time; the ratio is far above its target at every size); the
# trial benchmark times 3 epochs per run after the warm-up one, at ZeRO-2 only (ZeRO-0 too with --full)
SUITE_ARGS = {
    "feature_cache": ["--skip-sweep"],
    "sweep": ["--reports", "25"],
    "trial": ["--epochs", "4", "--zero", "2"],
}


def _get(r: dict, *path, fmt: str = "{:.2f}") -> str:
    for key in path:
        if not isinstance(r, dict) or key not in r:
            return "n/a"
        r = r[key]
    return fmt.format(r) if isinstance(r, int | float) else str(r)


def headlines(name: str, r: dict) -> list[str]:
    """The figures each benchmark exists for, one line each, with their targets."""
    if name == "calibration":
        fixed = r.get("fixed_seconds", {})
        return [
            f"W=2 / W=1 throughput {_get(r, 'speedup_w2_over_w1')}× (target ≥ 1.7); Ray W=1 / plain loop "
            f"time per sample {_get(r, 'ray_w1_over_plain_time')}× (target ≤ 1.15), start-up included",
            f"per sample, fixed start-up taken out: W=2 / W=1 {_get(r, 'speedup_w2_over_w1_per_sample')}×, "
            f"Ray W=1 / plain {_get(r, 'ray_w1_over_plain_time_per_sample')}×; fixed seconds of a "
            f"one-batch run: plain {_get(fixed, 'plain', fmt='{:.1f}')}, Ray W=1 "
            f"{_get(fixed, 'ray_w1', fmt='{:.1f}')}, W=2 {_get(fixed, 'ray_w2', fmt='{:.1f}')}",
        ]
    if name == "trial":
        stages = r.get("by_zero_stage", {})
        return [
            f"{stage}: time per step, service / the same loop in a plain process "
            f"{_get(v, 'service_over_same_loop_time_per_step')}× (target ≤ 1.10); the same loop (DeepSpeed) / "
            f"a plain torch loop {_get(v, 'same_loop_over_torch_loop_time_per_step')}×"
            for stage, v in stages.items()
        ]
    if name == "sweep":
        s = r.get("schedulers", {})
        return [
            f"epochs vs FIFO: ASHA {_get(s, 'epochs_vs_fifo', 'asha')}, seed-group ASHA "
            f"{_get(s, 'epochs_vs_fifo', 'seed-group-asha')} (target ≤ 0.50)"
            + (" [carried over]" if "carried_over" in s else ""),
            *(
                f"results query {scale} vs ResultGrid: {v:.0f}× faster (target ≥ 10)"
                for scale, v in r.get("query_speedups_vs_tune_compacted", {}).items()
            ),
        ]
    if name == "feature_cache":
        w = r.get("sweep", {})
        return [
            f"per training step {_get(r, 'speedup_per_step')}× faster with the cache (target ≥ 1.8)",
            f"4 trials × 3 epochs × {_get(w, 'steps_per_epoch', fmt='{}')} steps sweep "
            f"{_get(w, 'speedup_end_to_end')}× faster end to end (target ≥ 1.5)"
            + (" [carried over]" if "carried_over" in w else ""),
        ]
    if name == "quickstart_memory":
        return [
            f"peak memory of all processes {_get(r, 'peak_pss_gib_all_processes')} GiB PSS "
            f"(target ≤ 8), wall {_get(r, 'wall_s', fmt='{:.0f}')} s, {_get(r, 'train_runs', fmt='{}')} Train runs "
            "for its 9 trials"
        ]
    if name == "dashboard":
        after = r.get("warm_after_change_ms", {})
        data = {k: v for k, v in after.items() if k != "version"}
        worst = max(data, key=data.get) if data else "n/a"
        return [
            f"dashboard, {_get(r, 'trials', fmt='{}')} trials × {_get(r, 'reports', fmt='{}')} reports: data endpoints "
            f"warm (unchanged) ≤ {max(r.get('warm_unchanged_ms', {0: 0}).values()):.0f} ms, after a change ≤ "
            f"{data.get(worst, float('nan')):.0f} ms ({worst}) (target ≤ 200); idle tick "
            f"{_get(r, 'tick_idle_version_ms', fmt='{:.1f}')} ms, page refresh after a change "
            f"{_get(r, 'tick_page_refresh_after_change_ms', fmt='{:.0f}')} ms"
        ]
    if name == "trackers":
        return [
            f"trackers (MLflow, TensorBoard, W&B offline) on / off: time per training step "
            f"{_get(r, 'on_over_off_time_per_step', fmt='{:.3f}')}× (target ≤ 1.03); driver enqueue "
            f"{_get(r, 'driver_enqueue_s_per_result', fmt='{:.1e}')} s per result"
        ]
    if name == "seedgroup_scale":
        return [
            f"seed-group ASHA core + state, {k.replace('_', ' ')}: {_get(v, 'ms_per_decision', fmt='{:.3f}')} ms "
            f"per decision (target ≤ 1), {_get(v, 'state_bytes_per_decision', fmt='{:.0f}')} B written per "
            f"decision, {_get(v, 'state_bytes_written', fmt='{}')} B per sweep"
            for k, v in r.get("runs", {}).items()
        ]
    return []


def summary(wall: dict[str, float] | None = None) -> str:
    lines = ["# Benchmark results", ""]
    results = {}
    for name in ALL:
        path = RESULTS / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    for name, r in results.items():
        lines += [f"- **{name}**: {h}" for h in headlines(name, r)]
    if wall:
        lines += ["", "Suite wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in wall.items())]
    lines.append("")
    for name in ALL:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            lines.append(f"- **{name}**: not run")
            continue
        r = json.loads(path.read_text())
        figures = {
            k: v for k, v in r.items() if k not in ("machine", "benchmark") and not isinstance(v, list)
        }
        lines.append(f"## {name}")
        lines.append("")
        lines.append("```json")
        lines.append(json.dumps(figures, indent=1, sort_keys=True, default=str))
        lines.append("```")
        lines.append(f"machine: `{json.dumps(r.get('machine'))}`")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(ALL))
    ap.add_argument("--full", action="store_true", help="every benchmark at its defaults (SUITE_ARGS unused)")
    args = ap.parse_args()
    wall: dict[str, float] = {}
    t_all = time.perf_counter()
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        takes_argv = bool(inspect.signature(module.main).parameters)
        module.main([] if args.full else SUITE_ARGS.get(name, [])) if takes_argv else module.main()
        wall[name] = time.perf_counter() - t0
    wall["total"] = time.perf_counter() - t_all
    text = summary(wall)
    write_atomic(RESULTS / "SUMMARY.md", text)
    print(text)


if __name__ == "__main__":
    main()
