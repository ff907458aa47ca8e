"""The Arrow/Parquet results store of one sweep: metric reports and trial rows, written atomically.

:class:`ResultsStore` is the one entry point; its parts live in one module per concept:

* :mod:`~gapinit_ray.results.layout` — the directory and file names (one file per report, one per trial);
* :mod:`~gapinit_ray.results.schema` — the metric and trial row columns, config values as typed columns,
  :func:`group_key`;
* :mod:`~gapinit_ray.results.writer` — :meth:`~ResultsStore.write_report`, :meth:`~ResultsStore.write_trial`;
* :mod:`~gapinit_ray.results.reader` — :meth:`~ResultsStore.metrics`, :meth:`~ResultsStore.trials`, which
  never count a report twice nor miss one, whenever they read;
* :mod:`~gapinit_ray.results.compaction` — :meth:`~ResultsStore.compact`, one file per finished trial;
* :mod:`~gapinit_ray.results.manifest` — the sweep-level file :meth:`~ResultsStore.compact_sweep` writes
  and the manifest that tells which of its rows are still current.

Every name those modules export that other code uses is importable from here too.
"""

from __future__ import annotations

from gapinit_ray.results.compaction import Compactor
from gapinit_ray.results.layout import COMPACTED, MAX_NAME_BYTES, SWEEP_FILE
from gapinit_ray.results.manifest import MANIFEST_KEY
from gapinit_ray.results.schema import (
    HEAD,
    METRIC_BASE_SCHEMA,
    METRICS,
    REPORT_SCHEMA,
    REQUIRED_METRIC_COLUMNS,
    STANDARD_CONFIG,
    STANDARD_SCHEMA,
    TAIL_SCHEMA,
    TERMINAL_STATUSES,
    TRIAL_BASE_SCHEMA,
    TRIAL_STATUSES,
    TRIAL_TAIL,
    TS,
    axis_column,
    column_axis,
    config_columns,
    group_key,
)
from gapinit_ray.results.writer import Writer
from gapinit_ray.results.writer import serialize as _serialize

__all__ = [
    "COMPACTED",
    "HEAD",
    "MANIFEST_KEY",
    "MAX_NAME_BYTES",
    "METRICS",
    "METRIC_BASE_SCHEMA",
    "REPORT_SCHEMA",
    "REQUIRED_METRIC_COLUMNS",
    "STANDARD_CONFIG",
    "STANDARD_SCHEMA",
    "SWEEP_FILE",
    "TAIL_SCHEMA",
    "TERMINAL_STATUSES",
    "TRIAL_BASE_SCHEMA",
    "TRIAL_STATUSES",
    "TRIAL_TAIL",
    "TS",
    "ResultsStore",
    "_serialize",
    "axis_column",
    "column_axis",
    "config_columns",
    "group_key",
]


class ResultsStore(Writer, Compactor):
    """Reader and writer of one sweep's results under ``<root>/<sweep>/results/``.

    Any number of processes may write at once (each report / trial is its own file, written
    atomically) while others read; see the module docstring for the layout and schemas."""

    def __repr__(self) -> str:
        return f"ResultsStore({self.root!r}, {self.sweep!r})"
