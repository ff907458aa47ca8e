"""Fault injection for recovery tests and chaos runs: a Train worker kills itself (SIGKILL, as the OOM
killer or a lost node would) at a named point of a trial's life, once.

Points (``GAPINIT_INJECT_FAULTS`` or ``build_trainer(faults=...)``, comma-separated)::

    setup            after the model, data and DeepSpeed engine are built, before the first report
    mid_epoch:E      halfway through the steps of the epoch that ends at epoch E (E = 1, 2, ...)
    after_report:E   after the report at epoch E, once Ray Train has it (its controller collects a
                     report from the workers every health-check interval, Ray's default 2 s; a worker
                     that dies before that loses it, and the restarted group redoes the epoch from
                     the checkpoint before)
    hold             while the run holds at a seed-group rung waiting for its group's decision
    final_eval       during the last report's evaluation (after the validation loss, before generation)

``@R`` after a point picks the rank that dies (default 0): ``mid_epoch:1@1``. Each point fires once per
trial: a marker file under ``<trial out_dir>/faults_fired/`` is written (and fsynced) before the kill,
so the restarted worker group goes past it. The product never sets these; an unset variable costs one
dict lookup per point.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "GAPINIT_INJECT_FAULTS"
POINTS = ("setup", "mid_epoch", "after_report", "hold", "final_eval")
FIRED_DIR = "faults_fired"
#: how long ``after_report`` waits before the kill: Ray Train 2.60's controller polls the workers every
#: ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (Ray's default 2 s; gapinit_ray.cluster and the tests set 0.5),
#: so after two and a half intervals (2 s at least) the report and its checkpoint are registered
REPORT_SETTLE_S = max(2.0, 2.5 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S") or 2.0))


def parse(text: str | None) -> list[str]:
    """The fault list of ``text`` (comma-separated), each checked against :data:`POINTS`."""
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name = item.split("@")[0].split(":")[0]
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown fault point {name!r} (one of {', '.join(POINTS)})")
        out.append(item)
    return out


def from_env() -> list[str]:
    return parse(os.environ.get(ENV))


def maybe_die(
    faults: list[str] | None,
    point: str,
    out_dir: str,
    rank: int,
    epoch: float | None = None,
    settle_s: float = 0.0,
) -> None:
    """SIGKILL this process if ``point`` (at ``epoch``, on ``rank``) is in ``faults`` and has not fired
    (after ``settle_s`` seconds)."""
    if not faults:
        return
    name = point if epoch is None else f"{point}:{epoch:g}"
    for item in faults:
        where, _, at_rank = item.partition("@")
        if where != name or int(at_rank or 0) != rank:
            continue
        fired = os.path.join(out_dir, FIRED_DIR)
        os.makedirs(fired, exist_ok=True)
        marker = os.path.join(fired, item.replace(":", "_").replace("@", "_rank"))
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # fired in an earlier run of this trial
        os.fsync(fd)
        os.close(fd)
        time.sleep(settle_s)
        os.kill(os.getpid(), signal.SIGKILL)


def fired(out_dir: str) -> list[str]:
    """The points that fired in a trial (marker names), sorted."""
    d = os.path.join(out_dir, FIRED_DIR)
    return sorted(os.listdir(d)) if os.path.isdir(d) else []
