"""JSON payloads of the dashboard: values made JSON-safe, and the small array helpers the views share."""

from __future__ import annotations

import datetime
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def clean(value: Any) -> Any:
    """JSON-safe: NaN / inf -> None, numpy scalars -> Python, timestamps -> ISO 8601 (UTC)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.timezone.utc).isoformat()
    return value


def group_order(values) -> tuple:
    """Sort key of a group's values: None last, mixed types apart (as ``gapinit results`` orders rows)."""
    return tuple((v is None, str(type(v)), v if v is not None else 0) for v in values)


def codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Integer codes of a column's values (nulls: -1), equal values equal codes."""
    enc = pc.dictionary_encode(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    return pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def floats(values: np.ndarray) -> list[float | None]:
    """A float array as a JSON list: NaN / inf -> None (the fast path of :func:`clean`)."""
    return [x if math.isfinite(x) else None for x in values.tolist()]


def clean_keys(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`clean` for the small parts of the curve groups (keys, seed lines' values)."""
    for g in groups:
        g["key"] = clean(g["key"])
        for line in g.get("seeds", []):
            line["value"] = [x if math.isfinite(x) else None for x in line["value"]]
            line["seed"] = clean(line["seed"])
    return groups
