"""`gapinit results | report | dashboard`: reading a sweep's results store."""

from __future__ import annotations

import argparse
import os
import sys

from gapinit_ray.cli.registry import check_out_dir, check_range, command
from gapinit_ray.errors import GapinitError
from gapinit_ray.names import DEFAULT_METRIC, RESULTS_DIR


def _table_args(p: argparse.ArgumentParser, report: bool) -> None:
    """What `results` and `report` share: the sweep, its grouping, metric and comparison."""
    p.add_argument("sweep", help="the sweep's dir (<storage>/<name>, or a URI) or its spec file")
    p.add_argument("--by", default="init,rank,backbone", help="group-by config columns / axes")
    p.add_argument("--metric", default=DEFAULT_METRIC)
    p.add_argument("--mode", choices=["max", "min"], default="max", help="what 'best' means")
    compare_help = (
        "compare arms over seeds, the first against each other: e.g. init=gap,init=random,"
        "init=random-direction (exact permutation test, Holm-adjusted over the comparisons, t interval "
        "of the difference, effect size, IQM, P(arm1 > arm2), seeds needed, verdict)"
    )
    if report:
        compare_help += "; default: the first init (gap if present) vs each other one; 'none': no section"
    p.add_argument("--compare", metavar="ARMS", help=compare_help)


def _results_args(p: argparse.ArgumentParser) -> None:
    _table_args(p, report=False)
    p.add_argument("--at", default="last", help="best | last | epoch=N (--compare: also curve)")
    p.add_argument(
        "--n-boot",
        type=int,
        default=10000,
        help="bootstrap resamples of --compare (a bootstrap CI is shown only from 20 seeds per arm)",
    )
    p.add_argument(
        "--min-effect",
        type=float,
        help="--compare: also say how many seeds would resolve a difference of this size (metric units)",
    )
    p.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table")
    p.add_argument(
        "--looks",
        action="store_true",
        help="a sweep with a sequential phase: also every look (seeds so far, statistic, e-value, "
        "confidence sequence, alpha, anytime-valid p, decision)",
    )


def _report_args(p: argparse.ArgumentParser) -> None:
    _table_args(p, report=True)
    p.add_argument("--out", help="output dir (default: <sweep dir>/report)")


def default_by(metrics) -> list[str]:
    """:func:`gapinit_ray.results.aggregate.default_by` (imported when called: the CLI starts without
    the results store's imports, a third of a second for every command)."""
    from gapinit_ray.results.aggregate import default_by as by

    return by(metrics)


def print_results(
    storage: str, sweep: str, *, by, metric: str, at: str, mode: str, fmt: str, looks: bool = False
) -> int:
    from gapinit_ray.results import ResultsStore, aggregate, format_table
    from gapinit_ray.results.aggregate import check_at_epoch

    store = ResultsStore(storage, sweep)
    metrics = store.metrics()
    if metrics.num_rows == 0:
        from gapinit_ray.results._fs import ResultsError

        raise ResultsError(f"sweep {sweep}: no metric reports under {store.metrics_dir}")
    check_at_epoch(metrics, metric, at)
    trials = store.trials()
    if by is None:
        by = default_by(metrics)
    table = aggregate(metrics, by=by, metric=metric, at=at, mode=mode, trials=trials)
    print(format_table(table, fmt))
    if fmt == "table" and "://" not in storage:
        from gapinit_ray.results.aggregate import resolve_by
        from gapinit_ray.results.cost import cost_text

        text = cost_text(os.path.join(storage, sweep), metrics, trials, resolve_by(metrics, by))
        if text:
            print(text)
        print_sequential(storage, sweep, looks=looks)
    return 0


def print_sequential(storage: str, sweep: str, *, looks: bool = False) -> None:
    """A sweep with a sequential phase: its verdicts (and with ``looks`` every look), after the table."""
    if "://" in storage:
        return
    from gapinit_ray.results.looks import SequentialLog
    from gapinit_ray.results.looks_text import looks_table, verdict_table

    log = SequentialLog.read(os.path.join(storage, sweep))
    if log is None:
        if looks:
            print(f"gapinit: sweep {sweep} has no sequential phase (no `sequential` section): no looks")
        return
    print()
    print(verdict_table(log))
    if looks:
        print()
        print(looks_table(log))


def _sweep_location(arg: str, storage: str | None) -> tuple[str, str]:
    """`results` / `report` take a sweep dir (<storage>/<name>) or a spec file."""
    from pathlib import Path

    p = Path(arg)
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        from gapinit_ray.spec import load_spec

        spec = load_spec(p)
        return storage or spec.storage, spec.name
    if "://" in arg:
        root, _, name = arg.rstrip("/").rpartition("/")
        return root, name
    if not (p / RESULTS_DIR).exists():
        raise GapinitError(f"{arg}: no results here; pass <storage>/<sweep name> or the sweep's spec file")
    return str(p.resolve().parent), p.resolve().name


@command(
    "results", "aggregate a sweep's results: n seeds, mean, std, 95%% CI, min, max per group", _results_args
)
def cmd_results(args: argparse.Namespace) -> int:
    if args.min_effect is not None and not args.min_effect > 0:
        raise GapinitError(
            f"--min-effect {args.min_effect:g}: must be > 0 (a difference in metric units, e.g. 2 for "
            "2 CIDEr points)"
        )
    check_range("--n-boot", args.n_boot, 100)
    storage, name = _sweep_location(args.sweep, None)
    by = [b.strip() for b in args.by.split(",") if b.strip()]
    if args.compare:
        return _print_comparison(storage, name, args, by)
    return print_results(
        storage,
        name,
        by=by,
        metric=args.metric,
        at=args.at,
        mode=args.mode,
        fmt=args.format,
        looks=args.looks,
    )


def _print_comparison(storage: str, sweep: str, args: argparse.Namespace, by: list[str]) -> int:
    """`results --compare`: the first arm against each other, per stratum of the --by axes that
    the arms do not vary (so the default --by init,rank,backbone compares inits at each rank)."""
    from gapinit_ray.results import ResultsStore
    from gapinit_ray.results.aggregate import resolve_by
    from gapinit_ray.results.compare import compare, format_comparison, parse_arms

    metrics = ResultsStore(storage, sweep).metrics()
    if metrics.num_rows == 0:
        from gapinit_ray.results._fs import ResultsError

        raise ResultsError(f"sweep {sweep}: no metric reports under {storage}/{sweep}/results/metrics")
    from gapinit_ray.results.aggregate import check_at_epoch

    check_at_epoch(metrics, args.metric, args.at)
    arm_cols = {a.column for a in parse_arms(metrics, args.compare)}
    strata = [c for c in resolve_by(metrics, by) if c not in arm_cols]
    table = compare(
        metrics,
        args.compare,
        metric=args.metric,
        at=args.at,
        mode=args.mode,
        by=strata,
        n_boot=args.n_boot,
        min_effect=args.min_effect,
    )
    print(format_comparison(table, args.format))
    return 0


@command("report", "write learning curves and the final comparison as PNG + markdown/HTML", _report_args)
def cmd_report(args: argparse.Namespace) -> int:
    from gapinit_ray.results import ResultsStore, write_report

    if args.out:
        check_out_dir("--out", args.out)
    storage, name = _sweep_location(args.sweep, None)
    by = [b.strip() for b in args.by.split(",") if b.strip()]
    out = args.out or str(__import__("pathlib").Path(storage) / name / "report")
    compare = None if args.compare is None else [] if args.compare == "none" else args.compare
    written = write_report(
        ResultsStore(storage, name), out, by=by, metric=args.metric, mode=args.mode, compare=compare
    )
    for path in written:
        print(path)
    from gapinit_ray.trackers import log_report

    log_report(__import__("pathlib").Path(storage) / name, written)  # to MLflow, when the sweep logs there
    return 0


def _dashboard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target", metavar="STORAGE_OR_SWEEP", help="<storage>/<sweep>, a storage root, a URI or a spec"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (not loopback: a token is required)")
    p.add_argument("--port", type=int, help="port (default: the first free one from 8270; Ray's is 8265)")
    p.add_argument("--token", help="token requests must carry (or $GAPINIT_DASHBOARD_TOKEN)")
    p.add_argument("--token-file", help="use this Ray auth token file as the token (as `gapinit submit`)")
    p.add_argument("--print-token", action="store_true", help="print the URL with ?token= in it")


@command(
    "dashboard", "live read-only web dashboard of a sweep or of every sweep of a storage", _dashboard_args
)
def cmd_dashboard(args: argparse.Namespace) -> int:
    """`gapinit dashboard`: serve the live read-only dashboard until interrupted."""
    from gapinit_ray.dashboard.server import DashboardServer, resolve_target, resolve_token

    check_range(
        "--port", args.port, 0, 65535, hint="0 for any free port; omit it for the first free one from 8270"
    )
    target = resolve_target(args.target)
    token = resolve_token(args.host, args.token, args.token_file)
    server = DashboardServer(target, args.host, args.port, token)
    url = server.url + (f"?token={token}" if token and args.print_token else "")
    print(
        f"gapinit: dashboard of {target.root}{'/' + target.sweep if target.sweep else ''} at {url}",
        file=sys.stderr,
    )
    if token and not args.print_token:
        print(
            "gapinit: requests need the token (Authorization: Bearer, or ?token= in the URL)", file=sys.stderr
        )
    server.run()
    return 0
