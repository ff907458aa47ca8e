"""The `gapinit` commands by name: each command module registers its run function and its arguments
with :func:`command`; :mod:`gapinit_ray.cli.main` builds the parser from :data:`COMMANDS`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from gapinit_ray.errors import GapinitError

EXIT_USER_ERROR = 2
EXIT_TRIALS_FAILED = 1  # the sweep ran, but some trial failed after its retries

Run = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    """One sub-command: ``gapinit <name>`` parses ``arguments`` and calls ``run``."""

    name: str
    help: str
    run: Run
    arguments: Arguments


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, arguments: Arguments) -> Callable[[Run], Run]:
    """Register the decorated function as ``gapinit <name>``."""

    def register(run: Run) -> Run:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} is registered twice ({COMMANDS[name].run.__module__})")
        COMMANDS[name] = Command(name, help, run, arguments)
        return run

    return register


def add_spec(p: argparse.ArgumentParser) -> None:
    """The positional spec file and its ``KEY=VALUE`` overrides."""
    p.add_argument("spec", help="sweep spec YAML (see sweeps/)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides parsed as YAML, e.g. train.lr=1e-4 search.seed=[1,2] lora.rank=8",
    )


def add_ray(p: argparse.ArgumentParser) -> None:
    """Where the command's Ray runs."""
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")


# ------------------------------------------------------------------ argument checks (one line, exit 2)


def check_range(
    flag: str, value: float | None, low: float, high: float | None = None, hint: str = ""
) -> None:
    """Refuse ``flag``'s ``value`` outside ``low``..``high`` (inclusive; None: not given, no check)."""
    import math

    if value is None:
        return
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bound = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
        raise GapinitError(f"{flag} {value:g}: must be {bound}{'; ' + hint if hint else ''}")


def check_out_dir(flag: str, path: str) -> None:
    """Refuse an output directory that is a file, or lies under one, before anything is computed."""
    from pathlib import Path

    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == Path(path).expanduser().absolute() else f"lies under the file {probe}"
        raise GapinitError(f"{flag} {path}: {where}, not a directory; pass a directory path (a new one)")
