"""Results of a sweep: an Arrow/Parquet store, seed aggregates, text tables and reports.

* :mod:`~gapinit_ray.results.store` — :class:`ResultsStore`, built from :mod:`~.layout` (file and
  directory names), :mod:`~.schema` (columns, :func:`group_key`, :func:`config_columns`), :mod:`~.writer`
  (atomic writes), :mod:`~.reader` (reads), :mod:`~.compaction` and :mod:`~.manifest` (the sweep file);
* :mod:`~gapinit_ray.results.aggregate` — :func:`aggregate` (mean ± std / 95 % CI over seeds) and
  :func:`format_table`;
* :mod:`~gapinit_ray.results.compare` — :func:`compare` (arm vs arm over seeds: exact permutation
  tests, Holm, t intervals, effect size, robust aggregates, seeds needed, verdict), on the pure
  functions of :mod:`~gapinit_ray.results.stats`;
* :mod:`~gapinit_ray.results.stop_reason` — the one form of a trial's ``stop_reason``;
* :mod:`~gapinit_ray.results.report` — :func:`write_report` (learning curves, final comparison, md/html).

Split in modules so that the trainer / scheduler, which only write, import neither scipy nor
matplotlib: those are imported when an aggregate or a report is computed.
"""

from gapinit_ray.results._fs import ResultsError, temp_path
from gapinit_ray.results.aggregate import aggregate, format_table
from gapinit_ray.results.compare import CompareError, compare, format_comparison
from gapinit_ray.results.report import write_report
from gapinit_ray.results.store import (
    METRICS,
    TRIAL_STATUSES,
    ResultsStore,
    axis_column,
    config_columns,
    group_key,
)

__all__ = [
    "METRICS",
    "TRIAL_STATUSES",
    "CompareError",
    "ResultsError",
    "ResultsStore",
    "aggregate",
    "axis_column",
    "compare",
    "config_columns",
    "format_comparison",
    "format_table",
    "group_key",
    "temp_path",
    "write_report",
]
