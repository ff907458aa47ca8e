"""The sweep-level file and its manifest: one file that answers a finished sweep's queries.

Sweep-level file. Even one file per trial costs a file open and a footer per trial. ``compact()``
without a trial id (the sweep driver runs it when the sweep ends) also writes every row of the sweep,
de-duplicated and sorted by ``(trial_id, epoch)``, with ``trial_id`` as a plain column, to one
``metrics/_sweep.parquet`` (:meth:`ResultsStore.compact_sweep`): temp + rename, so a reader sees the
previous file or the new one. Its manifest (in the file's own metadata, key :data:`MANIFEST_KEY`) lists
each trial directory's files and their identities when it was made. :meth:`ResultsStore.metrics` reads
it, lists the trial directories, and takes from it the rows of every directory that still holds exactly
those files, unchanged; every other directory (reports written after the compaction, e.g. by a resumed
sweep; a retried report; a trial compacted again; a new trial) is read from its own files, so the newest
rows win and none is counted twice. The trial files are never deleted for it: they stay the complete
store. Plain readers: read the hive directory (``pd.read_parquet("metrics/")``,
``ds.dataset("metrics/", partitioning="hive")``, DuckDB / Polars on ``metrics/trial_id=*/*.parquet``),
which skip ``_sweep.parquet`` by its ``_`` prefix or glob, *or* read ``metrics/_sweep.parquet`` alone:
the sweep as of its last compaction (later reports are only in the trial files). Never both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gapinit_ray.results._fs import Location
from gapinit_ray.results.layout import dir_trial_id

# key of the sweep file's Parquet/Arrow metadata holding its manifest (JSON, see compact_sweep)
MANIFEST_KEY = b"gapinit.manifest"
MANIFEST_VERSION = 1
Manifest = dict[str, dict[str, tuple]]  # {"trial_id=<tid>": {file name: identity}}


@dataclass
class Snapshot:
    """The sweep file's rows and manifest: ``{"trial_id=<tid>": {file name: identity}}``, the files of
    each trial directory (and what told them apart, :meth:`ResultsStore._identities`) when it was made."""

    table: pa.Table
    manifest: dict[str, dict[str, tuple]]

    def covered(self, paths: list[str], identities: list[tuple | None]) -> set[str]:
        """The trial directories of ``paths`` whose listed files are exactly those of the manifest, each
        unchanged: the snapshot's rows of these trials are theirs. Any other directory (a report
        added, retried or deleted since, a trial compacted again) is read from its files."""
        listed: dict[str, dict[str, tuple | None]] = {}
        for path, identity in zip(paths, identities, strict=True):
            head, _, name = path.rpartition("/")
            listed.setdefault(head, {})[name] = identity
        return {d for d, files in listed.items() if self.manifest.get(d.rpartition("/")[2]) == files}

    def rows(self, dirs: set[str]) -> pa.Table:
        """The snapshot's rows of the trial directories ``dirs`` (all of them: no filtering)."""
        names = {d.rpartition("/")[2] for d in dirs}
        if names == self.manifest.keys():
            return self.table
        tids = pa.array([dir_trial_id(n) for n in names], pa.string())
        return self.table.filter(pc.is_in(self.table["trial_id"], value_set=tids))


def manifest_of(paths: list[str], identities: list[tuple | None]) -> Manifest:
    """``{"trial_id=<tid>": {file name: identity}}`` of the listed metric files (missing ones left out)."""
    manifest: Manifest = {}
    for path, identity in zip(paths, identities, strict=True):
        if identity is not None:
            head, _, name = path.rpartition("/")
            manifest.setdefault(head.rpartition("/")[2], {})[name] = identity
    return manifest


def with_manifest(table: pa.Table, manifest: Manifest) -> pa.Table:
    """``table`` with ``manifest`` in its schema metadata (so file and manifest are replaced together)."""
    body = json.dumps({"version": MANIFEST_VERSION, "files": manifest}, sort_keys=True, separators=(",", ":"))
    return table.replace_schema_metadata({MANIFEST_KEY: body.encode()})


def read_snapshot(loc: Location, path: str) -> Snapshot | None:
    """The sweep file at ``path`` (None when there is none, or it cannot be read: the trial files are
    the truth, the sweep file only a faster copy of them)."""
    try:
        with loc.fs.open_input_file(path) as f:
            table = pq.read_table(f)
        raw = json.loads((table.schema.metadata or {})[MANIFEST_KEY])
        manifest = {d: {n: tuple(i) for n, i in files.items()} for d, files in raw["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return Snapshot(table.replace_schema_metadata(None), manifest)
