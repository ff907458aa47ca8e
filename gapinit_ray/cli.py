"""The `gapinit` command.

A user's mistake (bad spec, missing file, unreachable cluster: any :class:`GapinitError`) prints one
line per problem, prefixed ``gapinit: error:``, and exits with code 2. A sweep in which some trial
failed after its retries exits with code 1 after one line per failed trial; 0 means every trial
finished or was stopped by the scheduler. Anything else is a bug in gapinit-ray and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gapinit_ray.errors import GapinitError

EXIT_USER_ERROR = 2
EXIT_TRIALS_FAILED = 1  # the sweep ran, but some trial failed after its retries


def _add_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec YAML (see sweeps/)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides parsed as YAML, e.g. train.lr=1e-4 search.seed=[1,2] lora.rank=8",
    )


def cmd_validate(args: argparse.Namespace) -> int:
    from gapinit_ray.spec import describe, load_spec

    spec = load_spec(args.spec, args.overrides)
    from gapinit_ray.data.resolve import check_storage

    check_storage(spec.storage)  # the same check `run` makes first, writing nothing
    _validate_resources(spec, args.address)
    if args.check_data:
        from gapinit_ray.data.resolve import check_spec_data

        for line in check_spec_data(spec):
            print(line)
    print(describe(spec))
    print(f"{args.spec}: OK")
    return 0


def _validate_resources(spec, address: str | None) -> None:
    """``resources`` against the cluster at ``address`` (the same check ``run`` makes there), or
    against this machine: a spec this machine cannot hold may still be meant for a cluster, so that is
    a note, not an error."""
    from gapinit_ray.cluster import check_resources, local_resources, ray_session, resource_problem

    if address:
        with ray_session(address):
            check_resources(spec)  # one warning line when the cluster cannot hold it now
        return
    problem = resource_problem(spec, [local_resources()])
    if problem:
        print(
            f"gapinit: note: `gapinit run` on this machine would refuse it: {problem}; "
            "`validate --address ADDR` checks a cluster",
            file=sys.stderr,
        )


def cmd_calibrate(args: argparse.Namespace) -> int:
    from gapinit_ray.calibration_job import run_calibration
    from gapinit_ray.cluster import ray_session
    from gapinit_ray.gap import format_table
    from gapinit_ray.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    from gapinit_ray.data.resolve import check_storage

    check_storage(spec.storage)
    import contextlib

    session = contextlib.nullcontext() if args.no_ray else ray_session(args.address, num_cpus=args.num_cpus)
    with session:  # --no-ray: the forward passes run here, no Ray to start
        for bspec in spec.backbones:
            artifact, hit = run_calibration(spec, bspec, use_ray=not args.no_ray)
            t = artifact.meta.get("timings", {})
            how = (
                "cache hit"
                if hit
                else f"computed in {t.get('total_s', 0):.1f}s on {t.get('workers')} worker(s)"
            )
            print(f"{bspec.key}: GapArtifact {artifact.key} ({artifact.meta['num_samples']} pairs, {how})")
            rows = artifact.table()
            if not args.all_modules:
                rows = [r for r in rows if r["module"] == "residual"] or rows
            print(format_table(rows))
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from gapinit_ray.diagnostics import run_diagnostics

    gaps = None
    if args.spec:
        from gapinit_ray.calibration_job import run_calibration
        from gapinit_ray.spec import load_spec

        spec = load_spec(args.spec, args.overrides)
        artifact, _ = run_calibration(spec, spec.backbones[0], use_ray=False, progress=False)
        gaps = {name: artifact.vector(name) for name in artifact.gaps}
    for line in run_diagnostics(args.out, gaps=gaps, seed=args.seed, draws=args.draws):
        print(line)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from gapinit_ray.export import export_trial, resolve_trial

    ref = resolve_trial(args.trial, args.spec, args.which, args.overrides)
    meta = export_trial(ref, args.out, merge=args.merge)
    how = "merged transformers checkpoint" if args.merge else "peft adapter"
    conv = " (converted to plain LoRA on the original base, as peft documents)" if meta["converted"] else ""
    print(f"{ref.trial_id}: {how} of {ref.checkpoint.name} (epoch {meta['epoch']}) -> {args.out}{conv}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from gapinit_ray.eval_adapter import evaluate_target

    row = evaluate_target(
        args.target, args.spec, args.split, args.task, args.which, args.backbone, args.overrides
    )
    print(json.dumps(row, indent=1, sort_keys=True, default=str))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gapinit_ray.cluster import ray_session
    from gapinit_ray.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    if not args.trial:
        return _run_sweep(spec, args)
    from gapinit_ray.data.resolve import check_storage
    from gapinit_ray.trial import build_trainer, parse_trial_params, trial_id, trial_spec

    params = parse_trial_params(args.trial)
    trial_spec(spec, params)  # a bad trial parameter is reported before Ray starts
    check_storage(spec.storage)
    with ray_session(args.address, num_cpus=args.num_cpus):
        from gapinit_ray.cluster import check_resources

        check_resources(spec)
        trainer = build_trainer(spec, params)
        result = trainer.fit()
    if result.error:
        raise GapinitError(f"trial {trial_id(params)} failed: {str(result.error).strip().splitlines()[-1]}")
    shown = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, float | int)}
    print(
        f"trial {trial_id(params)} finished; checkpoint {result.checkpoint.path if result.checkpoint else None}"
    )
    for k, v in sorted(shown.items()):
        print(f"  {k:>16} {v:.4g}")
    return 0


def _run_sweep(spec, args: argparse.Namespace) -> int:
    """Run (or resume) the sweep, print its aggregate table and one line per failed trial.

    Exit code 0 when every trial ended normally (finished, or stopped by the scheduler), 1 when any
    trial failed after its retries (its line says why and where the full error is)."""
    from gapinit_ray.cluster import ray_session
    from gapinit_ray.spec import describe
    from gapinit_ray.sweep import failed_trials, preflight, run_sweep

    preflight(spec)  # before Ray starts: a storage or sweep-dir problem is reported alone, at once
    if getattr(args, "dashboard", False):
        from gapinit_ray.dashboard.server import start_background

        dash = start_background(spec.storage, spec.name)
        print(f"gapinit: dashboard at {dash.url} (while this sweep runs)", file=sys.stderr)
    from gapinit_ray.cluster import check_resources

    with ray_session(args.address, num_cpus=args.num_cpus):
        check_resources(spec)  # a request the cluster can never grant: one line, nothing else
        print(describe(spec), file=sys.stderr)
        run_sweep(spec, quiet=args.quiet)
    failures = failed_trials(spec)
    from gapinit_ray.results._fs import ResultsError

    try:
        _print_results(
            spec.storage,
            spec.name,
            by=None,
            metric=spec.scheduler.metric,
            at="last",
            mode=spec.scheduler.mode,
            fmt="table",
        )
    except ResultsError:
        if not failures:
            raise
        # no metric row at all: the failure lines below say why, not "no metric reports"
    for line in failures:
        print(f"gapinit: {line}", file=sys.stderr)
    if failures:
        print(
            f"gapinit: {len(failures)} trial(s) failed; fix the cause, then `gapinit resume "
            f"{spec.storage.rstrip('/')}/{spec.name}` re-runs them",
            file=sys.stderr,
        )
        return EXIT_TRIALS_FAILED
    return 0


def default_by(metrics) -> list[str]:
    """The table a sweep prints at its end: one row per configuration, i.e. grouped by backbone, init,
    rank and every other axis the sweep varies (a searched lr, a case's ``calibration.passes``...): all
    config columns with more than one value, the seed excepted (the rows are its aggregates)."""
    import pyarrow.compute as pc

    keep = [c for c in ("backbone", "init", "rank") if c in metrics.column_names]
    for c in metrics.column_names:
        if c.startswith("ax_") and len(pc.unique(metrics.column(c))) > 1:
            keep.append(c)
    return keep


def _print_results(storage: str, sweep: str, *, by, metric: str, at: str, mode: str, fmt: str) -> int:
    from gapinit_ray.results import ResultsStore, aggregate, format_table

    store = ResultsStore(storage, sweep)
    metrics = store.metrics()
    if metrics.num_rows == 0:
        from gapinit_ray.results._fs import ResultsError

        raise ResultsError(f"sweep {sweep}: no metric reports under {store.metrics_dir}")
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
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from gapinit_ray.spec import load_spec, spec_from_dict

    target = Path(args.sweep)
    if target.is_dir():
        saved = target / "spec.json"
        if not saved.exists():
            raise GapinitError(f"{target}: not a sweep directory (no spec.json); pass the sweep's spec file")
        spec = spec_from_dict(json.loads(saved.read_text()), source=str(saved))
    else:
        spec = load_spec(target)
    return _run_sweep(spec, args)


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
    if not (p / "results").exists():
        raise GapinitError(f"{arg}: no results here; pass <storage>/<sweep name> or the sweep's spec file")
    return str(p.resolve().parent), p.resolve().name


def cmd_results(args: argparse.Namespace) -> int:
    storage, name = _sweep_location(args.sweep, None)
    by = [b.strip() for b in args.by.split(",") if b.strip()]
    if args.compare:
        return _print_comparison(storage, name, args, by)
    return _print_results(
        storage, name, by=by, metric=args.metric, at=args.at, mode=args.mode, fmt=args.format
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


def cmd_dashboard(args: argparse.Namespace) -> int:
    """`gapinit dashboard`: serve the live read-only dashboard until interrupted."""
    from gapinit_ray.dashboard.server import DashboardServer, resolve_target, resolve_token

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


def cmd_report(args: argparse.Namespace) -> int:
    from gapinit_ray.results import ResultsStore, write_report

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


def _jobs(args: argparse.Namespace):
    from gapinit_ray.cluster import JobsClient

    return JobsClient(args.address, args.token_file)


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


def cmd_logs(args: argparse.Namespace) -> int:
    client = _jobs(args)
    if args.follow:
        client.follow(args.id, lambda chunk: print(chunk, end="", flush=True))
    else:
        print(client.logs(args.id), end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    status = _jobs(args).stop(args.id)
    print(f"{args.id}: {status}")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gapinit",
        description="Gap-Init sweeps on Ray: calibrate modality gaps, train LoRA inits, compare over seeds.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("validate", help="check a sweep spec (schema and values; --check-data: files too)")
    _add_spec(p)
    p.add_argument(
        "--check-data",
        action="store_true",
        help="also check that data, images and checkpoints exist and are readable, and that the "
        "calibration set can be drawn",
    )
    p.add_argument(
        "--address",
        default=None,
        help="also check `resources` against the Ray cluster at this address (default: against this "
        "machine, as a note)",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run a sweep on an embedded local Ray or the cluster at --address")
    _add_spec(p)
    p.add_argument("--trial", help="run one trial outside Tune, e.g. init=gap,seed=42")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    p.add_argument("--quiet", action="store_true", help="no live progress lines")
    p.add_argument(
        "--dashboard", action="store_true", help="serve the live dashboard on 127.0.0.1 while it runs"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("calibrate", help="run only the calibration stage and print the per-layer gap table")
    _add_spec(p)
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    p.add_argument("--no-ray", action="store_true", help="run the forward passes in this process")
    p.add_argument("--all-modules", action="store_true", help="one row per hooked module, not per layer")
    p.set_defaults(func=cmd_calibrate)

    p.add_argument("--quiet", action="store_true", help="no live progress lines")

    p = sub.add_parser("resume", help="continue an interrupted sweep: finished trials are not re-run")
    p.add_argument("sweep", help="the sweep's dir (<storage>/<name>) or its spec file")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    p.add_argument("--quiet", action="store_true", help="no live progress lines")
    p.set_defaults(func=cmd_resume)

    for name, what in [
        ("results", "aggregate a sweep's results: n seeds, mean, std, 95%% CI, min, max per group"),
        ("report", "write learning curves and the final comparison as PNG + markdown/HTML"),
    ]:
        p = sub.add_parser(name, help=what)
        p.add_argument("sweep", help="the sweep's dir (<storage>/<name>, or a URI) or its spec file")
        p.add_argument("--by", default="init,rank,backbone", help="group-by config columns / axes")
        p.add_argument("--metric", default="val_cider")
        p.add_argument("--mode", choices=["max", "min"], default="max", help="what 'best' means")
        compare_help = (
            "compare arms over seeds, the first against each other: e.g. init=gap,init=random,"
            "init=random-direction (exact permutation test, Holm-adjusted over the comparisons, t interval "
            "of the difference, effect size, IQM, P(arm1 > arm2), seeds needed, verdict)"
        )
        if name == "report":
            compare_help += "; default: the first init (gap if present) vs each other one; 'none': no section"
        p.add_argument("--compare", metavar="ARMS", help=compare_help)
        if name == "results":
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
            p.set_defaults(func=cmd_results)
        else:
            p.add_argument("--out", help="output dir (default: <sweep dir>/report)")
            p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "dashboard", help="live read-only web dashboard of a sweep or of every sweep of a storage"
    )
    p.add_argument(
        "target", metavar="STORAGE_OR_SWEEP", help="<storage>/<sweep>, a storage root, a URI or a spec"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (not loopback: a token is required)")
    p.add_argument("--port", type=int, help="port (default: the first free one from 8270; Ray's is 8265)")
    p.add_argument("--token", help="token requests must carry (or $GAPINIT_DASHBOARD_TOKEN)")
    p.add_argument("--token-file", help="use this Ray auth token file as the token (as `gapinit submit`)")
    p.add_argument("--print-token", action="store_true", help="print the URL with ?token= in it")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser(
        "diagnose",
        help="orthogonality diagnostics: Prop. 3.1, Fig. 5 and, given a spec, Fig. 2 for its first backbone",
    )
    p.add_argument(
        "spec", nargs="?", help="sweep spec: adds the Fig. 2 histogram over its backbone's modules"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted spec overrides")
    p.add_argument("--out", default="diagnostics", help="output dir for diagnostics.{png,md,json}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draws", type=int, default=20000, help="random directions per dimension")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser(
        "export", help="a trial's adapter as a standalone peft adapter dir (--merge: merged model)"
    )
    p.add_argument(
        "trial", help="the trial's run dir (<sweep>/train/<trial>), a checkpoint dir or <sweep>/<trial>"
    )
    p.add_argument("--out", required=True, help="new directory to write")
    p.add_argument(
        "--merge", action="store_true", help="merge into the base weights: a transformers checkpoint"
    )
    p.add_argument(
        "--which", choices=["last", "best"], default="last", help="checkpoint (best: scheduler metric)"
    )
    p.add_argument("--spec", help="the sweep's spec (default: the sweep's spec.json)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of --spec")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "evaluate", help="score a saved adapter or a trial on its backbone with the spec's eval"
    )
    p.add_argument("target", metavar="ADAPTER_OR_TRIAL", help="a peft adapter dir or a trial's run dir")
    p.add_argument(
        "--spec", help="sweep spec (backbone, data, eval settings); default for a trial: spec.json"
    )
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--task", choices=["caption", "vqa", "pope"], help="default: what the split holds")
    p.add_argument("--which", choices=["last", "best"], default="last", help="a trial's checkpoint")
    p.add_argument("--backbone", help="backbone key of a multi-backbone spec (default: the first)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of --spec")
    p.set_defaults(func=cmd_evaluate)

    for name, what in [
        ("submit", "submit a spec to a Ray cluster through the Jobs API; prints the job id at once"),
        ("status", "a submitted sweep's state and trial counts (no id: like list)"),
        ("logs", "print a submitted sweep's logs (--follow: until it ends)"),
        ("stop", "stop a submitted sweep (its trials end with it; submit the spec again to resume)"),
        ("list", "list the sweeps submitted to the cluster"),
    ]:
        p = sub.add_parser(name, help=what)
        if name == "submit":
            _add_spec(p)
            p.add_argument("--storage", help="override the spec's storage (a shared cluster path or URI)")
            p.add_argument("--id", help="job id to use (default gapinit-<name>-<random>)")
            p.add_argument(
                "--ship-code", action="store_true", help="upload this gapinit_ray package with the job"
            )
        elif name != "list":
            p.add_argument("id", nargs="?" if name == "status" else None, help="the job id submit printed")
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        p.add_argument("--address", help="Ray dashboard address, e.g. http://HEAD:8265 (or RAY_ADDRESS)")
        p.add_argument("--token-file", help="Ray auth token file (or RAY_AUTH_TOKEN)")
        p.set_defaults(func=globals()[f"cmd_{name}"])
    return parser


def _version() -> str:
    from gapinit_ray import __version__

    return f"gapinit-ray {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GapinitError as e:
        for line in str(e).splitlines() or ["(no message)"]:
            print(f"gapinit: error: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("gapinit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
