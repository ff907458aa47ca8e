"""Compaction of the results store: one file per finished trial, and one sweep-level file.

Compaction. Reading costs about a file open and a footer per file, so a finished sweep of many small
files is slow to query. :meth:`ResultsStore.compact` folds the per-epoch files of a finished trial into
one ``compacted.parquet`` in the same directory (written atomically, *then* the per-epoch files it holds
are deleted). A directory may therefore hold both for a while: after a crash between the write and the
deletions, or when a late (retried) report arrives after compaction. :meth:`ResultsStore.metrics`
de-duplicates by ``(trial_id, epoch)`` and keeps the row with the **latest** ``timestamp`` (on a tie,
the per-epoch file's row: it is the same report or a newer one), so no report is counted twice or lost;
``timestamp`` is the writer's clock, so a retry must come from a host whose clock is not behind the
original writer's. A :meth:`ResultsStore.metrics` running while a trial is compacted re-reads that
trial's directory if it saw it half-way (see ``_read``). Readers that list the files themselves (plain
pandas / DuckDB on the directory) see both copies of a report in a directory that holds both.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pyarrow as pa

from gapinit_ray.results._fs import ResultsError, list_files, write_bytes
from gapinit_ray.results.layout import SUFFIX, is_compacted
from gapinit_ray.results.manifest import manifest_of, with_manifest
from gapinit_ray.results.reader import READ_ATTEMPTS, Reader, latest_rows
from gapinit_ray.results.schema import METRIC_BASE_SCHEMA, TAIL_SCHEMA, TERMINAL_STATUSES, column_order
from gapinit_ray.results.writer import serialize

# A compacted file is read on every query of the sweep: snappy and plain encoding decode about twice as
# fast as zstd + dictionaries for these small (~100 rows x ~30 columns) files, at about the same size.
_COMPACTED_OPTIONS = {"compression": "snappy", "use_dictionary": False}


class Compactor(Reader):
    """The compactions of :class:`~gapinit_ray.results.store.ResultsStore` (see the module docstring)."""

    def compact(self, trial_id: str | None = None) -> list[str]:
        """Fold the per-epoch metric files of a trial into one ``compacted.parquet``; returns the ids
        of the trials compacted (those that had per-epoch files).

        ``trial_id`` names one trial, whatever its status (a report arriving later lands in a new
        per-epoch file, and a later ``compact`` folds it in too). Without it, every trial whose trial
        row has a terminal status (:data:`TERMINAL_STATUSES`: TERMINATED, STOPPED, ERROR) is
        compacted; trials without a trial row are left alone.

        Without ``trial_id`` it then writes the sweep-level file (:meth:`compact_sweep`), which is
        what makes a finished sweep fast to query.

        Per trial: its per-epoch files and its compacted file (if any) are read, de-duplicated by
        epoch as :meth:`metrics` does (latest ``timestamp`` wins), written to ``compacted.parquet``
        atomically (the same temp + rename as every write), and only then are the per-epoch files
        deleted; one replaced since it was read (a retried report) is kept, its row being the newer
        (told by inode + mtime + size locally, mtime + size elsewhere; a retry landing in the instant
        between that check and the delete is lost). A reader never counts a report twice nor misses
        one, whenever it reads (see the module docstring). Two compactions of a *finished* trial may
        run at once (two writers of one sweep each compacting at their end): a listed file the other
        one deleted is in that one's compacted file, and the listing is read again. While the trial
        still reports, run one compaction of it at a time (the driver, when the trial ends): two at
        once could each drop a report the other folded in."""
        if trial_id is not None:
            ids = [self._check_trial_id(trial_id)]
        else:
            rows = self.trials().select(["trial_id", "status"]).to_pylist()
            ids = [r["trial_id"] for r in rows if r["status"] in TERMINAL_STATUSES]
        done = [tid for tid in ids if self._compact_trial(tid)]
        if trial_id is None:
            self.compact_sweep()
        return done

    def compact_sweep(self) -> bool:
        """Write every metric row of the sweep (:meth:`metrics`, sorted by trial and epoch) to one
        ``metrics/_sweep.parquet``, with a manifest of the trial files it holds; returns whether it
        was written (False: it is already current, or there are no reports).

        The manifest (JSON in the file's metadata under :data:`MANIFEST_KEY`, so file and manifest are
        replaced together, atomically, by the usual temp + rename) maps each ``trial_id=<tid>``
        directory to its files and their identities (inode, mtime, size locally; mtime, size
        elsewhere), taken *before* the rows were read. :meth:`metrics` takes a trial's rows from the
        sweep file only while that directory holds exactly those files, unchanged; a directory that
        changed since (a report added or retried, e.g. by a resumed sweep, a trial compacted again) is
        read from its own files instead, so its newer rows win and nothing is counted twice. The trial
        files are kept: they stay the complete store for readers that do not use this class."""
        listing = list_files(self.loc, self.metrics_dir, SUFFIX, 2)
        manifest = manifest_of(listing, self._identities(listing))
        if not manifest:
            return False
        current = self._snapshot()
        if current is not None and current.manifest == manifest:
            return False
        table = self.metrics().sort_by([("trial_id", "ascending"), ("epoch", "ascending")])
        table = with_manifest(table, manifest)
        write_bytes(self.loc, self.sweep_path, serialize(table, **_COMPACTED_OPTIONS))
        return True

    def _compact_trial(self, trial_id: str) -> bool:
        trial_dir = self.trial_metrics_dir(trial_id)
        for _ in range(READ_ATTEMPTS):
            paths = list_files(self.loc, trial_dir, SUFFIX, 1)
            reports = [p for p in paths if not is_compacted(p)]
            if not reports:
                return False
            seen = self._identities(reports)  # taken before reading: a file replaced after it is kept
            try:
                schema = self._schema(paths, trial_dir, None)
                parts = self._tables(paths, trial_dir, None, schema)
            except FileNotFoundError:
                # another compaction of this trial (a second writer of the sweep) folded in and
                # deleted a listed file after our listing: its rows are in its compacted file now
                continue
            self._write_compacted(trial_id, reports, seen, parts)
            return True
        raise ResultsError(f"{trial_dir}: files kept being compacted while being read; compact again")

    def _write_compacted(
        self, trial_id: str, reports: list[str], seen: list[tuple | None], parts: list[pa.Table]
    ) -> None:
        preferred = np.repeat([False, True], [sum(t.num_rows for t in parts[:-1]), parts[-1].num_rows])
        table = latest_rows(pa.concat_tables(parts), ["epoch"], preferred)
        table = table.sort_by([("epoch", "ascending")])
        table = table.select(column_order(table.schema, METRIC_BASE_SCHEMA, [*TAIL_SCHEMA.names]))
        write_bytes(self.loc, self.compacted_path(trial_id), serialize(table, **_COMPACTED_OPTIONS))
        for path, before, now in zip(reports, seen, self._identities(reports), strict=True):
            if before is not None and before == now:
                self._delete(path)

    def _delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.loc.local:
                os.unlink(path)
            else:
                self.loc.fs.delete_file(path)
