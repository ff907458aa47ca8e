"""`gapinit submit | status | logs | stop | list`: sweeps run as Ray jobs on a cluster (Jobs API)."""

from __future__ import annotations

import argparse
import sys

from gapinit_ray.cli.registry import add_spec, command


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray dashboard address, e.g. http://HEAD:8265 (or RAY_ADDRESS)")
    p.add_argument("--token-file", help="Ray auth token file (or RAY_AUTH_TOKEN)")


def _submit_args(p: argparse.ArgumentParser) -> None:
    add_spec(p)
    p.add_argument("--storage", help="override the spec's storage (a shared cluster path or URI)")
    p.add_argument("--id", help="job id to use (default gapinit-<name>-<random>)")
    p.add_argument("--ship-code", action="store_true", help="upload this gapinit_ray package with the job")
    _cluster_args(p)


def _job_args(optional: bool, follow: bool = False):
    """Arguments of a command on one submitted job (``optional``: no id means every job)."""

    def arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("id", nargs="?" if optional else None, help="the job id submit printed")
        if follow:
            p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        _cluster_args(p)

    return arguments


def _jobs(args: argparse.Namespace):
    from gapinit_ray.cluster import JobsClient

    return JobsClient(args.address, args.token_file)


@command(
    "submit", "submit a spec to a Ray cluster through the Jobs API; prints the job id at once", _submit_args
)
def cmd_submit(args: argparse.Namespace) -> int:
    from gapinit_ray.spec import load_spec

    overrides = list(args.overrides) + ([f"storage={args.storage}"] if args.storage else [])
    # the cluster's filesystem is not this machine's: relative paths are refused, not resolved here
    spec = load_spec(args.spec, overrides, resolve_paths=False)
    from gapinit_ray.cluster import check_submittable

    check_submittable(spec, args.spec)  # before connecting: a spec problem is reported as such
    client = _jobs(args)
    job = client.submit(spec, source=args.spec, ship_code=args.ship_code, submission_id=args.id)
    print(job)
    print(
        f"submitted sweep {spec.name!r} to {client.address}; follow: gapinit logs {job} --follow; "
        f"results: gapinit results {spec.storage.rstrip('/')}/{spec.name}",
        file=sys.stderr,
    )
    return 0


def _when(ms: int | None) -> str:
    import datetime

    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


@command("status", "a submitted sweep's state and trial counts (no id: like list)", _job_args(optional=True))
def cmd_status(args: argparse.Namespace) -> int:
    if not args.id:
        return cmd_list(args)
    from gapinit_ray.cluster import SWEEP_KEY

    info = _jobs(args).info(args.id)
    meta = info.metadata or {}
    print(f"job      {args.id}")
    print(f"status   {info.status.value}" + (f" ({info.message})" if info.message else ""))
    print(f"sweep    {meta.get(SWEEP_KEY, '-')}  storage {meta.get('storage', '-')}")
    print(f"started  {_when(info.start_time)}  ended {_when(info.end_time)}")
    if meta.get(SWEEP_KEY) and meta.get("storage"):
        try:
            from gapinit_ray.results import ResultsStore

            trials = ResultsStore(meta["storage"], meta[SWEEP_KEY]).trials().to_pandas()
            counts = trials["status"].value_counts().to_dict() if len(trials) else {}
            line = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) or "none yet"
            print(f"trials   {line}")
        except Exception as e:  # the storage may not be reachable from this machine
            print(f"trials   (results not readable from here: {str(e).splitlines()[0][:120]})")
    return 0


@command(
    "logs", "print a submitted sweep's logs (--follow: until it ends)", _job_args(optional=False, follow=True)
)
def cmd_logs(args: argparse.Namespace) -> int:
    client = _jobs(args)
    if args.follow:
        client.follow(args.id, lambda chunk: print(chunk, end="", flush=True))
    else:
        print(client.logs(args.id), end="")
    return 0


@command(
    "stop",
    "stop a submitted sweep (its trials end with it; submit the spec again to resume)",
    _job_args(optional=False),
)
def cmd_stop(args: argparse.Namespace) -> int:
    status = _jobs(args).stop(args.id)
    print(f"{args.id}: {status}")
    return 0


@command("list", "list the sweeps submitted to the cluster", _cluster_args)
def cmd_list(args: argparse.Namespace) -> int:
    from gapinit_ray.cluster import SWEEP_KEY

    jobs = _jobs(args).sweeps()
    if not jobs:
        print("no sweeps submitted to this cluster")
        return 0
    rows = [("job", "sweep", "status", "started", "ended")]
    for j in jobs:
        rows.append(
            (
                j.submission_id or j.job_id or "-",
                j.metadata[SWEEP_KEY],
                j.status.value,
                _when(j.start_time),
                _when(j.end_time),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
