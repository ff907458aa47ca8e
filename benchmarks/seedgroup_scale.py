"""Seed-group ASHA at scale, by simulation: the real rung book and its state protocol, no training.

    python -m benchmarks.seedgroup_scale [--groups 200,2000] [--seeds 5] [--in-flight 50]

For each size, ``groups × seeds`` trials go through 5 rungs (grace 1, η 2, max_t 32) on one process:
up to ``--in-flight`` groups train at once (as Train slots would), a random member of them reports its
next rung, and every report does what the Tune scheduler does per result -- settle the groups in
flight, record and decide, then flush the events to the state log in ``<tmp>/scheduler_state.jsonl``
(the snapshot is compacted when the log has outgrown it). A trial-side reader follows the log as the
trials would. A *decision* here is one report at a rung (answered continue, stop or wait).

Reports decisions/s, amortized ms per decision (target ≤ 1 ms), bytes written to the state per sweep
and per decision (log appends, plus the snapshots' amortized share: a compaction is one large write
when the log has outgrown the last snapshot), and both per tenth of the sweep, to show that neither
grows with the number of groups already decided; plus the bytes the former format (the whole state rewritten as one JSON on
every change) would have written, estimated from the state size sampled along the way. Writes
benchmarks/results/seedgroup_scale.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, write_result

SCHEDULE = {"max_t": 32, "grace_period": 1, "reduction_factor": 2, "metric": "val_cider", "mode": "max"}


def simulate(groups: int, seeds: int, in_flight: int, root: Path, seed: int = 0) -> dict:
    from gapinit_ray.seedgroup import state as st
    from gapinit_ray.seedgroup.core import DONE, STOP, WAIT, RungBook, Schedule

    rng = random.Random(seed)
    path = st.state_path(root)
    writer = st.StateWriter(path)
    book = RungBook(Schedule(**SCHEDULE, group_size=seeds), sink=writer.append)
    writer.start(book)
    reader = st.StateReader(path)
    milestones = book.milestones
    quality = [rng.gauss(0, 3) for _ in range(groups)]
    queue = list(range(groups))
    active: dict[str, int] = {}  # member -> group index, members that may report now
    reached: dict[str, int] = {}  # member -> rungs reported
    per_decision: list[tuple[float, int, int, int]] = []  # (s, bytes, log bytes, groups finished so far)
    decisions = group_decisions = 0
    old_bytes = 0.0  # the former format: the whole state rewritten on every change (sampled)
    old_sample, old_every = 0, 200
    t_start = time.perf_counter()
    while queue or active:
        while queue and len({g for g in active.values()}) < in_flight:
            g = queue.pop(0)
            for s in range(seeds):
                tid = f"g{g:05d}s{s}"
                book.add(tid, f"g{g:05d}", label=json.dumps({"config": g}))
                active[tid], reached[tid] = g, 0
        ready = [t for t in active if book.waiting(t) is None]
        tid = rng.choice(ready)
        g = active[tid]
        rung = reached[tid]
        t = milestones[rung] if rung < len(milestones) else SCHEDULE["max_t"]
        value = quality[g] + rng.gauss(0, 4) + 0.3 * t
        before, log_before = writer.bytes_written, writer.log_bytes_written
        t0 = time.perf_counter()
        book.settle()
        answer = book.report(tid, t, value)
        writer.flush(book)
        dt = time.perf_counter() - t0
        reached[tid] += 1
        if answer == DONE:
            active.pop(tid)
        elif rung < len(milestones):
            decisions += 1
            if answer != WAIT:
                group_decisions += 1
            finished = len(book.groups) - len(set(active.values()))
            per_decision.append(
                (dt, writer.bytes_written - before, writer.log_bytes_written - log_before, finished)
            )
            if decisions % old_every == 0:
                old_sample = len(json.dumps(book.events()))
            old_bytes += old_sample
        members = [m for m, gg in active.items() if gg == g]
        if book.groups[f"g{g:05d}"].stopped_at is not None or answer == STOP:
            for m in members:
                active.pop(m, None)
        reader.book()  # a trial side following the log
    wall = time.perf_counter() - t_start
    assert reader.book().rung_state() == book.rung_state()
    log_bytes = st.log_path(path).stat().st_size
    timed = sum(x[0] for x in per_decision)
    tenths = [per_decision[i * decisions // 10 : (i + 1) * decisions // 10] for i in range(10)]
    return {
        "trials": groups * seeds,
        "groups": groups,
        "seeds": seeds,
        "rungs": len(milestones),
        "decisions": decisions,
        "group_decisions": group_decisions,
        "groups_stopped": sum(1 for g in book.groups.values() if g.stopped_at is not None),
        "wall_s": round(wall, 3),
        "decisions_per_s": round(decisions / timed, 1),
        "ms_per_decision": round(1000 * timed / decisions, 4),
        "state_bytes_written": writer.bytes_written,
        "state_bytes_per_decision": round(writer.bytes_written / decisions, 1),
        "log_bytes": log_bytes,
        "log_bytes_per_decision": round(writer.log_bytes_written / decisions, 1),
        "snapshot_bytes_written": writer.bytes_written - writer.log_bytes_written,
        "snapshot_bytes": path.stat().st_size,
        "former_format_bytes_estimate": int(old_bytes),
        "former_format_bytes_per_decision_estimate": round(old_bytes / decisions, 1),
        # the sweep's decisions in 10 equal parts, in order: cost per decision as the groups decided grow
        "by_tenth_of_sweep": [
            {
                "decisions": len(part),
                "groups_finished_by_then": part[-1][3],
                "ms_per_decision": round(1000 * sum(x[0] for x in part) / len(part), 4),
                "bytes_per_decision": round(sum(x[1] for x in part) / len(part), 1),
                "log_bytes_per_decision": round(sum(x[2] for x in part) / len(part), 1),
            }
            for part in tenths
        ],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", default="200,2000")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--in-flight", type=int, default=50)
    args = ap.parse_args(argv)
    runs = {}
    for groups in (int(g) for g in args.groups.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            r = simulate(groups, args.seeds, args.in_flight, Path(tmp))
        runs[f"{r['trials']}_trials"] = r
        print(
            f"{r['trials']} trials: {r['decisions']} decisions, {r['decisions_per_s']:.0f}/s, "
            f"{r['ms_per_decision']:.3f} ms each, {r['state_bytes_per_decision']:.0f} B written per decision "
            f"({r['state_bytes_written'] / 2**20:.2f} MiB per sweep; the former format ~"
            f"{r['former_format_bytes_estimate'] / 2**20:.0f} MiB)",
            flush=True,
        )
    sizes = list(runs.values())
    result = {
        "benchmark": "seedgroup_scale",
        "machine": machine(),
        "schedule": SCHEDULE,
        "in_flight_groups": args.in_flight,
        "runs": runs,
        "ms_per_decision": {k: v["ms_per_decision"] for k, v in runs.items()},
        "state_bytes_per_decision": {k: v["state_bytes_per_decision"] for k, v in runs.items()},
        "bytes_per_decision_largest_over_smallest": round(
            sizes[-1]["state_bytes_per_decision"] / sizes[0]["state_bytes_per_decision"], 3
        ),
    }
    print(f"-> {write_result('seedgroup_scale', result)}")


if __name__ == "__main__":
    main()
