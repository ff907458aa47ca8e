"""`gapinit validate | run | calibrate | resume | diagnose | export | evaluate`: commands on a spec, a
sweep or one trial."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gapinit_ray.cli.registry import (
    EXIT_TRIALS_FAILED,
    add_ray,
    add_spec,
    check_out_dir,
    check_range,
    command,
)
from gapinit_ray.cli.results import print_results
from gapinit_ray.errors import GapinitError
from gapinit_ray.names import SPEC_FILE


def _validate_args(p: argparse.ArgumentParser) -> None:
    add_spec(p)
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


@command("validate", "check a sweep spec (schema and values; --check-data: files too)", _validate_args)
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
    problem = resource_problem(spec, [local_resources(count_gpus=spec.resources.gpus_per_worker > 0)])
    if problem:
        print(
            f"gapinit: note: `gapinit run` on this machine would refuse it: {problem}; "
            "`validate --address ADDR` checks a cluster",
            file=sys.stderr,
        )


def _run_args(p: argparse.ArgumentParser) -> None:
    add_spec(p)
    p.add_argument("--trial", help="run one trial outside Tune, e.g. init=gap,seed=42")
    add_ray(p)
    p.add_argument("--quiet", action="store_true", help="no live progress lines")
    p.add_argument(
        "--dashboard", action="store_true", help="serve the live dashboard on 127.0.0.1 while it runs"
    )


@command("run", "run a sweep on an embedded local Ray or the cluster at --address", _run_args)
def cmd_run(args: argparse.Namespace) -> int:
    from gapinit_ray.cluster import ray_session
    from gapinit_ray.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    if not args.trial:
        return _run_sweep(spec, args)
    from gapinit_ray.data.resolve import check_storage
    from gapinit_ray.plan import parse_trial_params, trial_id, trial_spec
    from gapinit_ray.trial import build_trainer

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
        print_results(
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


def _resume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="the sweep's dir (<storage>/<name>) or its spec file")
    add_ray(p)
    p.add_argument("--quiet", action="store_true", help="no live progress lines")


@command("resume", "continue an interrupted sweep: finished trials are not re-run", _resume_args)
def cmd_resume(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gapinit_ray.spec import load_spec, saved_spec

    target = Path(args.sweep)
    if target.is_dir():
        saved = target / SPEC_FILE
        if not saved.exists():
            raise GapinitError(f"{target}: not a sweep directory (no spec.json); pass the sweep's spec file")
        spec = saved_spec(saved)
        spec = _resume_here(spec, target.resolve())
    else:
        spec = load_spec(target)
    return _run_sweep(spec, args)


def _resume_here(spec, here):
    """``resume DIR`` resumes the sweep in DIR: a sweep dir moved or copied elsewhere continues there,
    not where its spec.json's ``storage`` first put it (that place may hold the original, or nothing)."""
    if spec.name != here.name:
        raise GapinitError(
            f"{here}: its spec.json names sweep {spec.name!r}, but the directory is {here.name!r}; a sweep "
            f"dir must keep its name (<storage>/<name>): rename it back to {spec.name!r}"
        )
    if "://" in spec.storage or Path(spec.storage).expanduser().resolve() == here.parent:
        return spec
    print(
        f"gapinit: resuming the sweep in {here} (its spec.json names storage {spec.storage}, where it first "
        "ran; that place is not touched)",
        file=sys.stderr,
    )
    return spec.model_copy(update={"storage": str(here.parent)})


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    add_spec(p)
    add_ray(p)
    p.add_argument("--no-ray", action="store_true", help="run the forward passes in this process")
    p.add_argument("--all-modules", action="store_true", help="one row per hooked module, not per layer")
    p.add_argument("--quiet", action="store_true", help="no live progress lines")


@command("calibrate", "run only the calibration stage and print the per-layer gap table", _calibrate_args)
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


def _diagnose_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "spec", nargs="?", help="sweep spec: adds the Fig. 2 histogram over its backbone's modules"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted spec overrides")
    p.add_argument("--out", default="diagnostics", help="output dir for diagnostics.{png,md,json}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draws", type=int, default=20000, help="random directions per dimension")


@command(
    "diagnose",
    "orthogonality diagnostics: Prop. 3.1, Fig. 5 and, given a spec, Fig. 2 for its first backbone",
    _diagnose_args,
)
def cmd_diagnose(args: argparse.Namespace) -> int:
    from gapinit_ray.diagnostics import run_diagnostics

    check_range("--draws", args.draws, 2, hint="random directions per dimension (default 20000)")
    check_range("--seed", args.seed, 0)
    check_out_dir("--out", args.out)
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


def _export_args(p: argparse.ArgumentParser) -> None:
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


@command("export", "a trial's adapter as a standalone peft adapter dir (--merge: merged model)", _export_args)
def cmd_export(args: argparse.Namespace) -> int:
    from gapinit_ray.export import export_trial, resolve_trial

    check_out_dir("--out", args.out)  # before the trial is looked up and its model loaded
    ref = resolve_trial(args.trial, args.spec, args.which, args.overrides)
    meta = export_trial(ref, args.out, merge=args.merge)
    how = "merged transformers checkpoint" if args.merge else "peft adapter"
    conv = " (converted to plain LoRA on the original base, as peft documents)" if meta["converted"] else ""
    print(f"{ref.trial_id}: {how} of {ref.checkpoint.name} (epoch {meta['epoch']}) -> {args.out}{conv}")
    return 0


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="ADAPTER_OR_TRIAL", help="a peft adapter dir or a trial's run dir")
    p.add_argument(
        "--spec", help="sweep spec (backbone, data, eval settings); default for a trial: spec.json"
    )
    p.add_argument(
        "--split", choices=["val", "test"], help="default: test when the spec has data.test, else val"
    )
    p.add_argument("--task", choices=["caption", "vqa", "pope"], help="default: what the split holds")
    p.add_argument("--which", choices=["last", "best"], default="last", help="a trial's checkpoint")
    p.add_argument("--backbone", help="backbone key of a multi-backbone spec (default: the first)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of --spec")


@command("evaluate", "score a saved adapter or a trial on its backbone with the spec's eval", _evaluate_args)
def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from gapinit_ray.eval_adapter import evaluate_target

    row = evaluate_target(
        args.target, args.spec, args.split, args.task, args.which, args.backbone, args.overrides
    )
    print(json.dumps(row, indent=1, sort_keys=True, default=str))
    return 0
