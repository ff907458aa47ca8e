"""The `gapinit` parser, built from the registered commands, and the entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# importing the command modules registers their commands
from gapinit_ray.cli import jobs, results, sweeps  # noqa: F401
from gapinit_ray.cli.registry import COMMANDS, EXIT_USER_ERROR
from gapinit_ray.errors import GapinitError

#: The order `gapinit --help` lists the commands in: a sweep's life, then reading it, then the cluster.
ORDER = (
    "validate",
    "run",
    "calibrate",
    "resume",
    "results",
    "report",
    "dashboard",
    "diagnose",
    "export",
    "evaluate",
    "submit",
    "status",
    "logs",
    "stop",
    "list",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gapinit",
        description="Gap-Init sweeps on Ray: calibrate modality gaps, train LoRA inits, compare over seeds.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if set(ORDER) != set(COMMANDS):
        raise RuntimeError(
            f"gapinit commands registered {sorted(COMMANDS)} but listed {sorted(ORDER)}: update cli.main.ORDER"
        )
    for name in ORDER:
        cmd = COMMANDS[name]
        p = sub.add_parser(name, help=cmd.help)
        cmd.arguments(p)
        p.set_defaults(func=cmd.run)
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
