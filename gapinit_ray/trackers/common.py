"""What the spec, the trackers' process and their backends share, with no import of the trackers
themselves (so neither the spec nor a backend depends on the package's process code): which package
each tracker needs and the install hint when it is missing (checked when the spec validates
``loggers``), a trial's run id and a report's key."""

from __future__ import annotations

import re

#: tracker -> (module that must be importable, the gapinit-ray extra that installs it)
EXTRAS = {
    "mlflow": ("mlflow", "mlflow"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
}


def missing_package(kind: str) -> str | None:
    """The ``pip install`` hint when the tracker's package is not installed, else None."""
    import importlib.util

    module, extra = EXTRAS[kind]
    if importlib.util.find_spec(module) is None:
        return f"pip install 'gapinit-ray[{extra}]'"
    return None


def run_id_of(trial_id: str) -> str:
    """A tracker-safe run id derived from a trial id (letters, digits, ``-``, ``_``; at most 64)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", trial_id)[-64:].strip("-")


def epoch_key(epoch: float) -> float:
    """What a report is known by when a resumed run skips the reports it has: its epoch (exact, so
    reports at fractional epochs that share a step are all kept)."""
    return round(float(epoch), 6)
