"""The `gapinit` command.

A user's mistake (bad spec, missing file, unreachable cluster: any :class:`GapinitError`) prints one
line per problem, prefixed ``gapinit: error:``, and exits with code 2. A sweep in which some trial
failed after its retries exits with code 1 after one line per failed trial; 0 means every trial
finished or was stopped by the scheduler. Anything else is a bug in gapinit-ray and keeps its
traceback.

Commands register themselves by name (:mod:`~gapinit_ray.cli.registry`) in :mod:`~gapinit_ray.cli.sweeps`
(validate, run, calibrate, resume, diagnose, export, evaluate), :mod:`~gapinit_ray.cli.results` (results,
report, dashboard) and :mod:`~gapinit_ray.cli.jobs` (submit, status, logs, stop, list);
:mod:`~gapinit_ray.cli.main` builds the parser from them.
"""

from __future__ import annotations

from gapinit_ray.cli.main import build_parser, main
from gapinit_ray.cli.registry import COMMANDS, EXIT_TRIALS_FAILED, EXIT_USER_ERROR
from gapinit_ray.cli.results import default_by

__all__ = ["COMMANDS", "EXIT_TRIALS_FAILED", "EXIT_USER_ERROR", "build_parser", "default_by", "main"]
