"""The one seed-group id: which trials are seeds of one configuration.

Every process -- the scheduler on the driver, the Train-slot actor, the trainable, the results store,
the trackers -- names a group by :func:`group_id` of the trial's result config (its parameters plus the
standard columns, see ``gapinit_ray.sweep.result_config``), so the id in a Parquet row, a rung decision
and a W&B group is the same string.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Mapping
from typing import Any

#: The seed's key in a trial's parameters: the one axis a group's members differ in.
SEED_KEY = "seed"


def plain(value: Any) -> Any:
    """numpy / other scalars -> Python ones, recursively, so hashes and JSON are the same everywhere."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bool | str | int | float) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)  # 0-d numpy / torch values
    return plain(item()) if callable(item) else str(value)


def group_body(config: Mapping[str, Any], seed_key: str = SEED_KEY) -> str:
    """The canonical JSON of ``config`` without its seed (sorted keys, Python scalars): a readable label."""
    rest = {k: v for k, v in plain(dict(config)).items() if k != seed_key}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), default=str)


def group_id(config: Mapping[str, Any], seed_key: str = SEED_KEY) -> str:
    """Stable id of a configuration's seed group: a SHA-1 of :func:`group_body` (never Python's
    ``hash``, which differs between processes), 16 hex digits. The results store's ``group_id``."""
    return hashlib.sha1(group_body(config, seed_key).encode()).hexdigest()[:16]
