"""What the scorers share: their error and warning types, and the natural order of ids in messages."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

from gapinit_ray.errors import GapinitError

SHOWN = 5  # offending ids spelled out in an error message; the rest are only counted


class EvalError(GapinitError):
    """Predictions and references of a caption evaluation do not fit together (ids, types, emptiness)."""


class MetricUnavailableWarning(RuntimeWarning):
    """A caption metric (or the official tokenizer) cannot run on this machine and was left out."""


def notice(message: str) -> None:
    warnings.warn(message, MetricUnavailableWarning, stacklevel=2)


def last_line(data: bytes | str | None) -> str:
    if not data:
        return ""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def id_key(image_id: Any) -> tuple:
    """Natural order of ids: digit runs compare as numbers ("img2" < "img10", COCO 9 < 25 < 100)."""
    parts = re.split(r"([0-9]+)", str(image_id))
    return tuple((int(p), p) if k % 2 else p for k, p in enumerate(parts))


def some_ids(ids: Sequence[Any]) -> str:
    shown = ", ".join(repr(i) for i in ids[:SHOWN])
    return shown + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")
