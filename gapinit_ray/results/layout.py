"""Where one sweep's results live: the file and directory names of the store, defined once.

Layout under ``<root>/<sweep>/results/``::

    metrics/trial_id=<tid>/epoch=<epoch:g>.parquet   one file per report (one row)
    metrics/trial_id=<tid>/compacted.parquet         all reports of a finished trial (after compact())
    metrics/_sweep.parquet                           every report of the sweep at the last compact()
    trials/<tid>.parquet                             one row per trial, overwritten as its status changes

One small file per report keeps writes independent and idempotent: a report retried for the same
(trial, epoch) (a restarted worker, a Tune retry) rewrites the same file, so it is never counted twice,
and no writer ever appends to or rewrites a shared file. ``trial_id`` lives only in the hive directory
name: pyarrow, pandas, DuckDB and Polars all add it back as a column, and storing it in the file too
would make hive-aware readers fail on the duplicate (string in the file vs dictionary from the path).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from gapinit_ray.names import RESULTS_DIR  # under <root>/<sweep>/
from gapinit_ray.results._fs import ResultsError, encode_name, resolve

METRICS_DIR = "metrics"  # under results/: one trial_id=<tid>/ directory per trial, and the sweep file
TRIALS_DIR = "trials"  # under results/: one <tid>.parquet per trial
TRIAL_DIR_PREFIX = "trial_id="  # hive partition directory of a trial's metric files
EPOCH_PREFIX = "epoch="  # per-epoch metric file: epoch=<epoch:g>.parquet
SUFFIX = ".parquet"
COMPACTED = "compacted.parquet"  # all rows of one trial, in its metrics/trial_id=<tid>/ directory
# every metric row of the sweep at its last sweep-level compaction, in metrics/ (hive readers skip "_")
SWEEP_FILE = "_sweep.parquet"
# longest escaped trial id: its file names (plus a temp name's prefix and suffix) stay within 255 bytes
MAX_NAME_BYTES = 200


def is_compacted(path: str) -> bool:
    """Whether ``path`` is a trial's compacted file."""
    return path.rpartition("/")[2] == COMPACTED


def parent_dir(path: str) -> str:
    return path.rpartition("/")[0]


def dir_trial_id(name: str) -> str:
    """``trial_id=<escaped id>`` -> the id (the hive partition value, URI-decoded)."""
    return unquote(name.rpartition("/")[2].removeprefix(TRIAL_DIR_PREFIX))


def file_epoch(name: str) -> float | None:
    """The epoch of a per-epoch file name (``epoch=<epoch:g>.parquet``), None for any other name."""
    try:
        return float(name.removeprefix(EPOCH_PREFIX).removesuffix(SUFFIX))
    except ValueError:
        return None


class Layout:
    """The paths of one sweep's results under ``<root>/<sweep>/results/`` (see the module docstring)."""

    def __init__(self, root: str, sweep: str):
        if not isinstance(sweep, str) or not sweep or sweep in (".", "..") or "/" in sweep or "\\" in sweep:
            raise ResultsError(f"sweep {sweep!r}: expected a sweep name without path separators")
        self.sweep = sweep
        self.loc = resolve(root)
        self.root = root
        self.base = self.loc.join(sweep, RESULTS_DIR)
        self.metrics_dir = f"{self.base}/{METRICS_DIR}"
        self.trials_dir = f"{self.base}/{TRIALS_DIR}"

    def trial_metrics_dir(self, trial_id: str) -> str:
        """``metrics/trial_id=<tid>``: the directory of a trial's metric files."""
        return f"{self.metrics_dir}/{TRIAL_DIR_PREFIX}{encode_name(trial_id)}"

    def metric_path(self, trial_id: str, epoch: float) -> str:
        """``metrics/trial_id=<tid>/epoch=<epoch:g>.parquet``; where ``:g`` would round (more than 6
        significant digits) the exact repr is used, so two distinct epochs never share a file."""
        name = f"{epoch:g}"
        if float(name) != epoch:
            name = repr(float(epoch))
        return f"{self.trial_metrics_dir(trial_id)}/{EPOCH_PREFIX}{name}{SUFFIX}"

    @property
    def sweep_path(self) -> str:
        """``metrics/_sweep.parquet``: every metric row at the last :meth:`compact_sweep`."""
        return f"{self.metrics_dir}/{SWEEP_FILE}"

    def compacted_path(self, trial_id: str) -> str:
        """``metrics/trial_id=<tid>/compacted.parquet``: the trial's rows after :meth:`compact`."""
        return f"{self.trial_metrics_dir(trial_id)}/{COMPACTED}"

    def trial_path(self, trial_id: str) -> str:
        return f"{self.trials_dir}/{encode_name(trial_id)}{SUFFIX}"

    @staticmethod
    def _check_trial_id(trial_id: Any) -> str:
        if not isinstance(trial_id, str) or not trial_id.strip():
            raise ResultsError(f"trial_id {trial_id!r}: expected a non-empty string")
        size = len(encode_name(trial_id).encode())
        if size > MAX_NAME_BYTES:  # it names a file and a directory (filesystems allow 255 bytes)
            raise ResultsError(
                f"trial_id {trial_id[:40]!r}...: too long for a file name ({size} bytes escaped, at most "
                f"{MAX_NAME_BYTES}); use a shorter id"
            )
        return trial_id
