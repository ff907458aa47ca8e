"""Sweep benchmarks: epochs saved by seed-group ASHA, and query time of the results store vs Tune's.

(a) Epochs run by ``fifo``, per-trial ``asha`` and ``seed-group-asha`` (``make_scheduler``, grace 1,
    η=3, max_t=9, groups of 3 seeds) on a real local Ray, for a cheap function trainable: config c has
    a true quality q_c, and each epoch (a 10 ms sleep) reports ``score = q_c·(1 − exp(−epoch/τ)) +
    seed offset (±0.02) + epoch jitter (±0.005)``, τ = 2.5, with a checkpoint holding the epoch.
    Under seed-group ASHA the trainable runs the product's in-trial mode: it trains segment by segment
    (:func:`~gapinit_ray.seedgroup.trial_side.run_segments`) and waits at each rung, inside the trial,
    until the scheduler's state says its group was promoted or stopped. Every epoch a trial runs is
    logged to a file, so re-run epochs would count too. Best config: highest mean over
    seeds of the final score, among the configs that reached max_t.
(b) Query time of ``aggregate(store.metrics(), by=["init"], metric="val_cider", at="last")`` against
    loading the same sweep through Tune: ``ResultGrid(ExperimentAnalysis(path))`` then
    ``get_dataframe()`` and the same per-init mean/std with pandas. Our store is written with
    ``ResultsStore.write_report`` (plus trial rows) by 2 worker processes; the Tune experiment is a real
    run of trivial trials that ``tune.report`` the same rows. Measured on a small uncompacted subset
    (one file per report), the same subset after ``compact()``, and the whole compacted store (the
    headline: a finished sweep is compacted: one file per trial plus the sweep-level ``_sweep.parquet``
    that ``compact()`` writes at the end of a sweep). Ours and Tune's are timed alternately, after a
    warm-up, at each ``--trials`` scale (a store and a Tune experiment of its own per scale).

    python -m benchmarks.sweep [--configs 12] [--trials 200[,1000]] [--reports 100] [--subset 20]
                               [--repeats 3] [--skip-schedulers]

``--skip-schedulers`` runs part (b) only; the schedulers section of the previous results file is then
kept as it was (marked ``carried_over``), so one file still holds both parts.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.common import carried_over, machine, write_result

SEEDS = 3
MAX_T = 9
EPOCH_S = 0.01
TAU = 2.5  # learning-curve time constant (epochs), the same for every config
SCHEDULERS = ("fifo", "asha", "seed-group-asha")
INITS = ("gap", "default", "random", "pissa")
TARGETS = {
    "seed_group_asha_epochs_vs_fifo": "<= 0.50",
    "seed_group_asha_same_best_config_as_fifo": True,
    "query_speedup_vs_tune_compacted": ">= 10",
}


# ------------------------------------------------------------------------------ (a) schedulers


def quality(c: int, configs: int) -> float:
    """True quality q_c of config c of ``configs``: evenly spread over [0.5, 0.9], all distinct, in
    an order unrelated to c (a stride permutation), so arrivals at the rungs are not sorted."""
    step = next(k for k in (7, 5, 11, 13, 1) if math.gcd(k, configs) == 1)
    return 0.5 + 0.4 * ((c * step) % configs) / max(configs - 1, 1)


def _unit(*key: int) -> float:
    """A deterministic pseudo-random number in [-1, 1) (the same in every process and every run)."""
    h = 0
    for k in key:
        h = (h * 1_000_003 + k + 12345) % 2**32
    h = (h * 2654435761 + 97) % 2**32
    return h / 2**31 - 1.0


def score(c: int, configs: int, seed: int, epoch: int) -> float:
    return (
        quality(c, configs) * (1 - math.exp(-epoch / TAU))
        + 0.02 * _unit(c, seed)
        + 0.005 * _unit(c, seed, epoch)
    )


def scheduler_trainable(config: dict) -> None:
    """One epoch = a 10 ms sleep and a report with a checkpoint of the epoch; resumes from it. With
    ``state_path`` (seed-group ASHA) it waits at each rung for its group, as the sweep's trials do."""
    import ray.tune as tune

    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = json.loads((Path(d) / "state.json").read_text())["epoch"]
    log = Path(config["log_dir"]) / f"{tune.get_context().get_trial_id()}.log"
    done = [start]

    def fit(stop_at: float | None, continuing: bool = False) -> float:
        for epoch in range(done[0] + 1, (MAX_T if stop_at is None else int(stop_at)) + 1):
            time.sleep(EPOCH_S)
            with open(log, "a") as f:  # every epoch run, re-runs included
                f.write(f"{epoch}\n")
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
                metrics = {
                    "epoch": epoch,
                    "score": score(config["variant"], config["configs"], config["seed"], epoch),
                }
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            done[0] = epoch
        return float(done[0])

    if config.get("state_path") is None:
        fit(None)
        return
    from gapinit_ray.seedgroup.trial_side import RungGate, run_segments

    run_segments(fit, RungGate(config["state_path"], tune.get_context().get_trial_id()), MAX_T, poll_s=0.02)


def run_scheduler(kind: str, configs: int, storage: str) -> dict:
    import ray.tune as tune

    from gapinit_ray.schedulers import make_scheduler
    from gapinit_ray.seedgroup.state import state_path

    log_dir = Path(storage) / f"{kind}-epochs"
    log_dir.mkdir(parents=True)
    state = str(state_path(Path(storage) / f"{kind}-state")) if kind == "seed-group-asha" else None
    scheduler = make_scheduler(
        kind,
        metric="score",
        mode="max",
        time_attr="epoch",
        grace_period=1,
        reduction_factor=3,
        max_t=MAX_T,
        group_size=SEEDS,
        state_path=state,
    )
    tuner = tune.Tuner(
        # a tenth of a CPU per trial: a member waiting at a rung inside its trial keeps its Tune slot
        # (as in the sweep, whose trials ask for no CPU), so one CPU each would let 2 members of a group
        # wait on 2 CPUs for a third that never starts
        tune.with_resources(scheduler_trainable, {"cpu": 0.1}),
        # Tune's grid varies the alphabetically first axis fastest: "seed" < "variant" creates a
        # config's seeds together, so a group is complete within max_concurrent_trials
        param_space={
            "seed": tune.grid_search(list(range(SEEDS))),
            "variant": tune.grid_search(list(range(configs))),
            "configs": configs,
            "log_dir": str(log_dir),
            "state_path": state,
        },
        # reuse_actors: a trial's process is kept for the next trial instead of a new one per start;
        # the epochs counted do not change, the wall time falls ~10x
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=24, reuse_actors=True),
        run_config=tune.RunConfig(
            name=kind,
            storage_path=storage,
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    epochs_run = sum(len(p.read_text().split()) for p in log_dir.glob("*.log"))
    final: dict[int, list[float]] = {}
    max_epochs = 0
    for result in grid:
        if result.error is not None:
            raise RuntimeError(f"{kind}: trial {result.config} failed: {result.error}")
        epoch = int(result.metrics["epoch"])
        max_epochs += epoch
        if epoch >= MAX_T:
            final.setdefault(result.config["variant"], []).append(result.metrics["score"])
    means = {c: statistics.fmean(v) for c, v in sorted(final.items())}
    best = max(means, key=means.__getitem__) if means else None
    return {
        "trials": len(grid),
        "epochs_run": epochs_run,
        "sum_max_epoch": max_epochs,
        "rerun_epochs": epochs_run - max_epochs,
        "wall_s": wall,
        "configs_reaching_max_t": {str(c): len(v) for c, v in final.items()},
        "best_config": best,
        "best_mean_final_score": means.get(best),
    }


# ------------------------------------------------------------------------------ (b) queries


def store_config(i: int) -> dict:
    return {
        "backbone": "tiny-blip2",
        "init": INITS[i % len(INITS)],
        "seed": i // len(INITS),
        "lora.rank": 4,
        "train.lr": 1e-3,
    }


def store_metrics(i: int, epoch: int) -> dict:
    base = 120.0 + 4.0 * (i % len(INITS)) + 3.0 * _unit(i)
    return {
        "epoch": float(epoch),
        "val_cider": base * (1 - math.exp(-epoch / 20)) + 0.5 * _unit(i, epoch),
        "val_loss": 2.0 / epoch + 0.01 * _unit(i, epoch, 1),
        "train_loss": 2.5 / epoch + 0.01 * _unit(i, epoch, 2),
    }


def tid(i: int) -> str:
    return f"t{i:05d}"


def write_trials(root: str, sweep: str, ids: list[int], reports: int, compact: bool) -> int:
    """Worker: write trials ``ids`` as the trainer would (trial row, one report per epoch, final row)."""
    from gapinit_ray.results import ResultsStore

    store = ResultsStore(root, sweep)
    for i in ids:
        cfg = store_config(i)
        store.write_trial(tid(i), cfg, status="RUNNING")
        for e in range(1, reports + 1):
            store.write_report(tid(i), cfg, {**store_metrics(i, e), "training_iteration": e}, host="bench")
        store.write_trial(tid(i), cfg, status="TERMINATED", last_epoch=float(reports))
        if compact:
            store.compact(tid(i))
    return len(ids)


def build_store(root: str, sweep: str, ids: list[int], reports: int, compact: bool, workers: int) -> float:
    chunks = [ids[k::workers] for k in range(workers)]
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with Arrow's threads running
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        list(
            pool.map(
                write_trials,
                [root] * workers,
                [sweep] * workers,
                chunks,
                [reports] * workers,
                [compact] * workers,
            )
        )
    return time.perf_counter() - t0


def files_under(path: str) -> tuple[int, int]:
    n = size = 0
    for d, _, names in os.walk(path):
        for name in names:
            n += 1
            size += os.path.getsize(os.path.join(d, name))
    return n, size


def our_query(store) -> tuple[dict, dict]:
    """(seconds: metrics / aggregate / total, {init: (n, mean, std)})."""
    from gapinit_ray.results import aggregate

    t0 = time.perf_counter()
    metrics = store.metrics()
    t1 = time.perf_counter()
    agg = aggregate(metrics, by=["init"], metric="val_cider", at="last")
    t2 = time.perf_counter()
    out = {r["init"]: (r["n"], r["mean"], r["std"]) for r in agg.to_pylist()}
    return {"metrics_s": t1 - t0, "aggregate_s": t2 - t1, "total_s": t2 - t0}, out


def tune_report_trainable(config: dict) -> None:
    import ray.tune as tune

    for e in range(1, config["reports"] + 1):
        tune.report(store_metrics(config["trial"]["i"], e))


def run_tune_experiment(storage: str, n: int, reports: int) -> tuple[str, float]:
    import ray.tune as tune

    trials = [{"i": i, **store_config(i)} for i in range(n)]
    tuner = tune.Tuner(
        tune_report_trainable,
        param_space={"trial": tune.grid_search(trials), "reports": reports},
        # reusing actors only makes writing the experiment faster; its directory is the same
        tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(name="tune-query", storage_path=storage, verbose=0),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    if grid.num_errors or len(grid) != n:
        raise RuntimeError(f"tune experiment: {grid.num_errors} errors, {len(grid)} of {n} trials")
    return str(Path(storage) / "tune-query"), wall


def tune_query(path: str) -> tuple[dict, dict]:
    """Load the experiment as a ResultGrid, get_dataframe() (last result per trial), per-init stats."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    t0 = time.perf_counter()
    grid = ResultGrid(ExperimentAnalysis(path))
    t1 = time.perf_counter()
    df = grid.get_dataframe()
    t2 = time.perf_counter()
    agg = df.groupby("config/trial/init")["val_cider"].agg(["count", "mean", "std"])
    t3 = time.perf_counter()
    out = {init: (int(r["count"]), float(r["mean"]), float(r["std"])) for init, r in agg.iterrows()}
    timings = {"load_s": t1 - t0, "get_dataframe_s": t2 - t1, "groupby_s": t3 - t2, "total_s": t3 - t0}
    return timings, out


def what_if(store, tmp: str, repeats: int) -> tuple[dict, dict]:
    """Not the store's API: the same query with all rows in ONE file (a sweep-level compaction) and
    the per-trial "last" pick + per-init stats done in Arrow instead of aggregate()'s Python loop.
    Tells how far the one-file-per-trial layout and aggregate() are from the 10x target."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = os.path.join(tmp, "one-file.parquet")
    pq.write_table(store.metrics(), path, compression="snappy", use_dictionary=False)

    def query() -> tuple[dict, dict]:
        t0 = time.perf_counter()
        t = pq.read_table(path, columns=["trial_id", "init", "epoch", "val_cider"])
        t1 = time.perf_counter()
        t = t.filter(pc.is_valid(t["val_cider"])).sort_by([("trial_id", "ascending"), ("epoch", "ascending")])
        tids = t["trial_id"]
        last = np.ones(t.num_rows, dtype=bool)
        last[:-1] = pc.not_equal(tids.slice(0, t.num_rows - 1), tids.slice(1)).to_numpy(zero_copy_only=False)
        agg = (
            t.filter(pa.array(last))
            .group_by("init")
            .aggregate(
                [
                    ("val_cider", "count"),
                    ("val_cider", "mean"),
                    ("val_cider", "stddev", pc.VarianceOptions(ddof=1)),
                ]
            )
        )
        t2 = time.perf_counter()
        rows = agg.to_pylist()
        out = {r["init"]: (r["val_cider_count"], r["val_cider_mean"], r["val_cider_stddev"]) for r in rows}
        return {"read_one_file_s": t1 - t0, "arrow_aggregate_s": t2 - t1, "total_s": t2 - t0}, out

    _, out = query()
    return _median([query()[0] for _ in range(repeats)]), out


def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _same(a: dict, b: dict) -> float:
    """Largest difference between two {init: (n, mean, std)} (inf if they cover other inits / counts)."""
    if a.keys() != b.keys() or any(a[k][0] != b[k][0] for k in a):
        return math.inf
    return max(max(abs(a[k][1] - b[k][1]), abs(a[k][2] - b[k][2])) for k in a)


def query_benchmark(args, tmp: str, trials: int) -> tuple[dict, str]:
    """Our store: the uncompacted subset, compacted, then the whole sweep compacted. Returns the part of
    the result about our store and the store root (the Tune side is measured later, next to it)."""
    from gapinit_ray.results import ResultsStore

    root = os.path.join(tmp, f"store-{trials}")
    store = ResultsStore(root, "query")
    subset = list(range(args.subset))
    write_subset_s = build_store(root, "query", subset, args.reports, False, args.workers)
    files_uncompacted, bytes_uncompacted = files_under(store.metrics_dir)
    our_query(store)  # warm-up
    uncompacted = [our_query(store)[0] for _ in range(args.repeats)]
    t0 = time.perf_counter()
    compacted_ids = store.compact()
    compact_s = time.perf_counter() - t0
    if len(compacted_ids) != args.subset:
        raise RuntimeError(f"compact() folded {len(compacted_ids)} trials, not {args.subset}")
    our_query(store)
    compacted = [our_query(store)[0] for _ in range(args.repeats)]
    rest = list(range(args.subset, trials))
    write_rest_s = build_store(root, "query", rest, args.reports, True, args.workers)
    t0 = time.perf_counter()
    store.compact()  # what the sweep driver runs when the sweep ends: writes metrics/_sweep.parquet
    sweep_compact_s = time.perf_counter() - t0
    files_full, bytes_full = files_under(store.metrics_dir)
    rows = store.metrics(columns=["trial_id"]).num_rows
    if rows != trials * args.reports:
        raise RuntimeError(f"store holds {rows} rows, not {trials * args.reports}")
    part = {
        "subset_trials": args.subset,
        "subset_files_uncompacted": files_uncompacted,
        "subset_bytes_uncompacted": bytes_uncompacted,
        "subset_write_s": write_subset_s,
        "subset_compact_s": compact_s,
        "subset_compact_ms_per_file": compact_s / files_uncompacted * 1e3,
        "subset_uncompacted_ours_s": _median(uncompacted),
        "subset_compacted_ours_s": _median(compacted),
        "subset_compaction_query_speedup": _median(uncompacted)["total_s"] / _median(compacted)["total_s"],
        "subset_uncompacted_ms_per_file": _median(uncompacted)["metrics_s"] / files_uncompacted * 1e3,
        "full_write_and_compact_rest_s": write_rest_s,
        "full_sweep_compact_s": sweep_compact_s,
        "full_sweep_file_bytes": os.path.getsize(store.sweep_path),
        "full_files_compacted": files_full,
        "full_bytes_compacted": bytes_full,
        "full_rows": rows,
    }
    return part, root


def query_scale(args, tmp: str, trials: int, sched_kinds: tuple[str, ...]) -> tuple[dict, dict]:
    """Part (b) at one scale (and part (a), for ``sched_kinds``, while Ray is up): our store, then a
    Tune experiment of the same rows, then both queried side by side with Ray shut down."""
    import ray

    from gapinit_ray.results import ResultsStore

    # our store first: its writer processes are spawned before Ray starts its threads
    ours, root = query_benchmark(args, tmp, trials)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        sched = {k: run_scheduler(k, args.configs, os.path.join(tmp, "sched")) for k in sched_kinds}
        tune_path, tune_fit_s = run_tune_experiment(os.path.join(tmp, f"tune-{trials}"), trials, args.reports)
    finally:
        ray.shutdown()
    # side by side, alternating, Ray stopped: ours on the compacted store vs Tune's ResultGrid
    store = ResultsStore(root, "query")
    ours_runs, tune_runs = [], []
    _, ours_agg = our_query(store)
    _, tune_agg = tune_query(tune_path)
    for _ in range(args.repeats):
        ours_runs.append(our_query(store)[0])
        tune_runs.append(tune_query(tune_path)[0])
    tune_files, tune_bytes = files_under(tune_path)
    what_if_s, what_if_agg = what_if(store, tmp, args.repeats)

    ours_build_s = ours["subset_write_s"] + ours["subset_compact_s"] + ours["full_write_and_compact_rest_s"]
    build_s = ours_build_s + tune_fit_s
    write_ms = ours["subset_write_s"] * args.workers / ours["subset_files_uncompacted"] * 1e3
    ours_s, tune_s = _median(ours_runs), _median(tune_runs)
    query = {
        "what": (
            f"{trials} trials x {args.reports} reports, the same rows in our store "
            "(ResultsStore.write_report, one file per report, compact(trial) as each trial ends: one file "
            "per trial, then compact() at the end of the sweep: one sweep-level file) "
            "and in a Tune experiment directory (a real run of trivial trials that tune.report them). "
            'ours: aggregate(store.metrics(), by=["init"], metric="val_cider", at="last"); tune: '
            "ResultGrid(ExperimentAnalysis(path)) + get_dataframe() + pandas groupby mean/std per "
            "init. Medians of alternating runs after a warm-up, Ray shut down."
        ),
        "build_note": (
            f"building the data took {build_s:.0f} s (our store {ours_build_s:.0f} s: ~{write_ms:.1f} ms "
            f"per report per writer process, write_report's Parquet encode + fsync; the Tune run "
            f"{tune_fit_s:.0f} s)"
        ),
        "ours": ours,
        "tune_fit_s": tune_fit_s,
        "tune_files": tune_files,
        "tune_bytes": tune_bytes,
        "compacted_ours_s": ours_s,
        "compacted_tune_s": tune_s,
        "speedup_vs_tune_compacted": tune_s["total_s"] / ours_s["total_s"],
        "speedup_vs_tune_get_dataframe_only": tune_s["get_dataframe_s"] / ours_s["total_s"],
        "subset_uncompacted_speedup_vs_tune_per_trial": (tune_s["total_s"] / trials)
        / (ours["subset_uncompacted_ours_s"]["total_s"] / args.subset),
        "max_abs_diff_of_per_init_mean_std": _same(ours_agg, tune_agg),
        "what_if_one_file_and_arrow_aggregate_s": what_if_s,
        "what_if_speedup_vs_tune": tune_s["total_s"] / what_if_s["total_s"],
        "what_if_note": (
            "a lower bound, not the store's API: all rows in one Parquet file read with 4 columns only and "
            "the per-trial last value + per-init mean/std in Arrow, with none of metrics()'s listing, "
            "manifest check, all-column read and de-duplication; same numbers as ours (max_abs_diff_what_if)"
        ),
        "max_abs_diff_what_if": _same(ours_agg, what_if_agg),
        "runs_ours": ours_runs,
        "runs_tune": tune_runs,
    }
    return query, sched


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=int, default=12, help="(a) configs (x 3 seeds)")
    ap.add_argument("--trials", default="200", help="(b) trials of the query benchmark; a list: 200,1000")
    ap.add_argument("--reports", type=int, default=100, help="(b) reports per trial")
    ap.add_argument("--subset", type=int, default=20, help="(b) trials of the uncompacted subset")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="(b) processes writing the store")
    ap.add_argument("--skip-schedulers", action="store_true", help="run part (b) only")
    args = ap.parse_args(argv)
    scales = [int(t) for t in str(args.trials).split(",") if t.strip()]
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    t_start = time.perf_counter()

    queries: dict[str, dict] = {}
    sched: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        for i, trials in enumerate(scales):
            kinds = SCHEDULERS if i == 0 and not args.skip_schedulers else ()
            query, found = query_scale(args, tmp, trials, kinds)
            queries[f"{trials}x{args.reports}"] = query
            sched.update(found)

    if sched:
        fifo = sched["fifo"]
        schedulers = {
            "what": (
                f"{args.configs} configs x {SEEDS} seeds, cheap function trainable "
                f"(score = q_c(1-exp(-epoch/{TAU})) + seed offset U(-0.02, 0.02) + jitter U(-0.005, 0.005), "
                f"q_c in [0.5, 0.9], {EPOCH_S * 1000:.0f} ms/epoch, "
                f"checkpoint per report, resume from it), max_t={MAX_T}, grace_period=1, "
                "reduction_factor=3, group_size=3, max_concurrent_trials=24, reuse_actors=True, ray.init(num_cpus=2); "
                "seed-group ASHA in the product's mode: members wait at rungs inside the trial; "
                "epochs_run counts every epoch a trial ran (re-runs included)"
            ),
            "true_best_config": max(range(args.configs), key=lambda c: quality(c, args.configs)),
            "runs": sched,
            "epochs_vs_fifo": {k: v["epochs_run"] / fifo["epochs_run"] for k, v in sched.items()},
            "same_best_config_as_fifo": {
                k: v["best_config"] == fifo["best_config"] for k, v in sched.items()
            },
        }
    else:
        schedulers = carried_over("sweep", "schedulers", "the query part only (--skip-schedulers)")
    runs = (schedulers or {}).get("runs", {})
    met = {}
    if "fifo" in runs and "seed-group-asha" in runs:
        fifo, sg = runs["fifo"], runs["seed-group-asha"]
        met["seed_group_asha_epochs_vs_fifo"] = sg["epochs_run"] / fifo["epochs_run"] <= 0.5
        met["seed_group_asha_same_best_config_as_fifo"] = sg["best_config"] == fifo["best_config"]
    met["query_speedup_vs_tune_compacted"] = all(
        q["speedup_vs_tune_compacted"] >= 10 for q in queries.values()
    )
    result = {
        "benchmark": "sweep",
        "schedulers": schedulers,
        "query": queries,
        "query_speedups_vs_tune_compacted": {k: q["speedup_vs_tune_compacted"] for k, q in queries.items()},
        "targets": TARGETS,
        "met": met,
        "wall_s": time.perf_counter() - t_start,
        "machine": machine(),
    }
    write_result("sweep", result)
    return result


if __name__ == "__main__":
    r = main()
    s = r["schedulers"] or {}
    for k, v in s.get("runs", {}).items():
        print(
            f"{k:16s} epochs {v['epochs_run']:4d} ({s['epochs_vs_fifo'][k]:.0%} of fifo), best config "
            f"{v['best_config']} (same as fifo: {s['same_best_config_as_fifo'][k]}), {v['wall_s']:.1f} s"
            + (" [carried over]" if "carried_over" in s else "")
        )
    for scale, q in r["query"].items():
        o, ours, tune = q["ours"], q["compacted_ours_s"], q["compacted_tune_s"]
        print(
            f"[{scale}] query, {o['subset_trials']} trials uncompacted ({o['subset_files_uncompacted']} files): "
            f"{o['subset_uncompacted_ours_s']['total_s']:.3f} s; "
            f"compacted: {o['subset_compacted_ours_s']['total_s']:.3f} s "
            f"({o['subset_compaction_query_speedup']:.1f}x)"
        )
        print(
            f"[{scale}] query, {o['full_rows']} rows compacted: ours {ours['total_s']:.3f} s "
            f"(metrics {ours['metrics_s']:.3f} + aggregate {ours['aggregate_s']:.3f}), "
            f"tune {tune['total_s']:.3f} s (load {tune['load_s']:.3f} + "
            f"get_dataframe {tune['get_dataframe_s']:.3f}); speed-up {q['speedup_vs_tune_compacted']:.2f}x "
            f"(vs get_dataframe alone {q['speedup_vs_tune_get_dataframe_only']:.2f}x)"
        )
        w = q["what_if_one_file_and_arrow_aggregate_s"]
        print(
            f"[{scale}] what-if (one file, 4 columns, Arrow aggregate; a lower bound): {w['total_s']:.3f} s, "
            f"{q['what_if_speedup_vs_tune']:.1f}x vs tune"
        )
    print(f"targets met: {r['met']}; wall {r['wall_s']:.0f} s")
