"""Reads of the results store: every metric row once, consistent with a compaction running next to it.

:meth:`Reader.metrics` de-duplicates by ``(trial_id, epoch)`` and keeps the row with the **latest**
``timestamp`` (on a tie, the per-epoch file's row: it is the same report or a newer one), so no report is
counted twice or lost where a trial directory holds both a compacted file and per-epoch files (see
:mod:`~gapinit_ray.results.compaction`). A read running while a trial is compacted re-reads that trial's
directory if it saw it half-way (see ``_read``). Trial directories the sweep file's manifest still
describes are taken from the sweep file (:mod:`~gapinit_ray.results.manifest`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gapinit_ray.results._fs import ResultsError, list_files
from gapinit_ray.results.layout import SUFFIX, Layout, dir_trial_id, is_compacted, parent_dir
from gapinit_ray.results.manifest import Snapshot, read_snapshot
from gapinit_ray.results.schema import (
    METRIC_BASE_SCHEMA,
    PARTITIONING,
    TAIL_SCHEMA,
    TRIAL_BASE_SCHEMA,
    TRIAL_TAIL,
    column_order,
)

# rounds of metrics(): trial directories a compaction changed during a round are read again (_read)
READ_ATTEMPTS = 10


def latest_rows(table: pa.Table, keys: list[str], preferred: np.ndarray) -> pa.Table:
    """One row per distinct ``keys``: the one with the latest ``timestamp``; on a tie a ``preferred``
    row, then the later row of ``table``. Kept rows stay in their order in ``table``."""
    n = table.num_rows
    if n < 2:
        return table
    aux = pa.table(
        {
            **{f"k{i}": table[k] for i, k in enumerate(keys)},
            "ts": table["timestamp"],
            "pref": pa.array(preferred, pa.bool_()),
            "row": pa.array(np.arange(n, dtype=np.int64)),
        }
    )
    order = pc.sort_indices(
        aux,
        sort_keys=[
            *((f"k{i}", "ascending") for i in range(len(keys))),
            ("ts", "descending"),  # a null timestamp sorts last: it never wins
            ("pref", "descending"),
            ("row", "descending"),
        ],
    )
    first = np.ones(n, dtype=bool)
    same = np.ones(n - 1, dtype=bool)
    for i in range(len(keys)):
        col = aux[f"k{i}"].take(order)
        # a null key is never equal to anything: such rows are all kept (none is lost)
        equal = pc.fill_null(pc.equal(col.slice(1), col.slice(0, n - 1)), False)
        same &= equal.to_numpy(zero_copy_only=False)
    first[1:] = ~same
    keep = np.sort(order.to_numpy()[first])
    return table if len(keep) == n else table.take(pa.array(keep))


def _unify(schema: pa.Schema | None, other: pa.Schema) -> pa.Schema:
    return other if schema is None else pa.unify_schemas([schema, other], promote_options="permissive")


def _without_dirs(table: pa.Table | None, dirs: set[str]) -> pa.Table | None:
    """``table`` without the rows of the ``trial_id=<tid>`` directories ``dirs``."""
    if table is None or not dirs:
        return table
    tids = [dir_trial_id(d) for d in dirs]
    return table.filter(pc.invert(pc.is_in(table["trial_id"], value_set=pa.array(tids, pa.string()))))


def _mixed(paths: list[str]) -> bool:
    """Whether a trial directory holds a compacted file *and* per-epoch files (rows may repeat)."""
    compacted = {p.rpartition("/")[0] for p in paths if is_compacted(p)}
    return any(not is_compacted(p) and p.rpartition("/")[0] in compacted for p in paths)


class Reader(Layout):
    """The reads of :class:`~gapinit_ray.results.store.ResultsStore` (see the module docstring)."""

    def _factory(self, paths: list[str], base: str, partitioning: Any) -> ds.FileSystemDatasetFactory:
        options = ds.FileSystemFactoryOptions(partition_base_dir=base, partitioning=partitioning)
        return ds.FileSystemDatasetFactory(self.loc.fs, paths, ds.ParquetFileFormat(), options)

    def _schema(self, paths: list[str], base: str, partitioning: Any) -> pa.Schema:
        try:
            # every file's footer: extra metrics or axes may appear in some files only, and an axis
            # may be int in one trial and float in another (permissive promotion makes it float)
            factory = self._factory(paths, base, partitioning)
            return factory.inspect(promote_options="permissive", fragments=None)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ResultsError(f"{base}: stored files disagree on a column type ({e})") from None

    def _tables(self, paths: list[str], base: str, partitioning: Any, schema: pa.Schema) -> list[pa.Table]:
        """The rows of the compacted files, then those of the per-epoch files (each part read with
        ``schema``; a part without files is left out)."""
        parts = []
        for compacted in (True, False):
            subset = [p for p in paths if is_compacted(p) == compacted]
            if subset:
                parts.append(self._factory(subset, base, partitioning).finish(schema).to_table())
        return parts

    def _load(
        self,
        paths: list[str],
        base: str,
        partitioning: Any,
        schema: pa.Schema,
        expr: ds.Expression | None,
        keys: list[str] | None,
    ) -> pa.Table:
        """The rows of ``paths`` that match ``expr``. With ``keys``, where a trial directory holds both
        a compacted file and per-epoch files, one row per ``keys``: the latest (module docstring)."""
        if not keys or not _mixed(paths):
            return self._factory(paths, base, partitioning).finish(schema).to_table(filter=expr)
        compacted, reports = self._tables(paths, base, partitioning, schema)
        preferred = np.repeat([False, True], [compacted.num_rows, reports.num_rows])
        table = latest_rows(pa.concat_tables([compacted, reports]), keys, preferred)
        return table if expr is None else table.filter(expr)  # after de-duplication: newest first

    @staticmethod
    def _filter(where: Any, schema: pa.Schema, what: str) -> ds.Expression | None:
        """``filter`` may be a pyarrow expression or ``{column: value or [values]}``."""
        if where is None or isinstance(where, ds.Expression):
            return where
        if not isinstance(where, Mapping):
            raise ResultsError(f"{what} filter: expected a pyarrow expression or a dict, got {where!r}")
        expr = None
        for col, value in where.items():
            if col not in schema.names:
                raise ResultsError(
                    f"{what} filter: unknown column {col!r}; available: {', '.join(schema.names)}"
                )
            f = ds.field(col)
            e = f.isin(list(value)) if isinstance(value, list | tuple | set) else f == value
            expr = e if expr is None else expr & e
        return expr

    def _read_round(
        self,
        paths: list[str],
        base: str,
        partitioning: Any,
        schema: pa.Schema | None,
        where: Any,
        what: str,
        keys: list[str] | None,
    ) -> tuple[pa.Schema | None, pa.Table | None, set[str]]:
        """Read ``paths`` (``schema`` widened by theirs). With ``keys`` (metrics), a listed per-epoch
        file deleted before it is read (a compaction next to us) makes it read file by file instead,
        leaving out the trial directories whose files are gone: those are returned, to be read
        again on their own."""
        try:
            found = self._schema(paths, base, partitioning)
            if schema is not None:
                found = pa.unify_schemas([schema, found], promote_options="permissive")
            expr = self._filter(where, found, what)
            return found, self._load(paths, base, partitioning, found, expr, keys), set()
        except OSError:
            if not keys:
                raise
        tables, gone = self._read_files(paths)
        if not tables:
            return schema, None, gone
        table = pa.concat_tables([t for _, t in tables], promote_options="permissive")
        if schema is not None:
            table = pa.concat_tables([schema.empty_table(), table], promote_options="permissive")
        if _mixed([p for p, _ in tables]):
            preferred = np.concatenate([np.full(t.num_rows, not is_compacted(p)) for p, t in tables])
            table = latest_rows(table, keys, preferred)
        expr = self._filter(where, table.schema, what)
        return table.schema, table if expr is None else table.filter(expr), gone

    def _read_files(self, paths: list[str]) -> tuple[list[tuple[str, pa.Table]], set[str]]:
        """Each metric file on its own, ``trial_id`` added from its directory; a per-epoch file that
        is gone is skipped and its directory returned (a compacted file is never deleted)."""

        def one(path: str) -> pa.Table | None:
            try:
                with self.loc.fs.open_input_file(path) as f:
                    table = pq.read_table(f)
            except FileNotFoundError:
                if is_compacted(path):
                    raise
                return None
            tid = dir_trial_id(parent_dir(path))
            return table.append_column(
                pa.field("trial_id", pa.string()), pa.array([tid] * table.num_rows, pa.string())
            )

        with ThreadPoolExecutor(8) as pool:
            read = list(zip(paths, pool.map(one, paths), strict=True))
        return [(p, t) for p, t in read if t is not None], {parent_dir(p) for p, t in read if t is None}

    def _read(
        self,
        base: str,
        depth: int,
        partitioning: Any,
        empty: pa.Schema,
        tail: list[str],
        columns,
        where,
        what,
        keys: list[str] | None = None,
    ) -> pa.Table:
        """Read every data file under ``base``. With ``keys`` (the metrics) rows are de-duplicated (see
        :meth:`_load`) and the read is consistent with a compaction running next to it. A compaction
        writes its file before it deletes, so only a trial directory that gained a compacted file
        between the listing and the end of the read, or whose listed files were deleted before they
        were read, may have been seen half-way: its rows are dropped and it is read again, alone."""
        listing = list_files(self.loc, base, SUFFIX, depth)
        snapshot = self._snapshot() if keys else None
        schema, parts = None, []
        todo: set[str] | None = None  # trial directories still to read; None: all listed
        for _ in range(READ_ATTEMPTS):
            paths = listing if todo is None else [p for p in listing if parent_dir(p) in todo]
            if not paths:
                todo = set()
                break
            files, covered = paths, None
            if snapshot is not None:
                dirs = snapshot.covered(paths, self._identities(paths))
                if dirs:  # their rows come from the sweep file; only the other files are read
                    files = [p for p in paths if parent_dir(p) not in dirs]
                    covered = snapshot.rows(dirs)
                    schema = _unify(schema, covered.schema)
            table, gone = None, set()
            if files:
                schema, table, gone = self._read_round(files, base, partitioning, schema, where, what, keys)
            if covered is not None:
                covered = pa.concat_tables([schema.empty_table(), covered], promote_options="permissive")
                expr = self._filter(where, schema, what)
                covered = covered if expr is None else covered.filter(expr)
                table = covered if table is None else pa.concat_tables([table, covered])
            if not keys or not files:
                # a directory taken from the sweep file had, when listed, exactly the files the
                # sweep file was made from (see Snapshot.covered): no half-compacted view to re-check
                parts.append(table)
                todo = set()
                break
            listing = list_files(self.loc, base, SUFFIX, depth)
            had = {parent_dir(p) for p in paths if is_compacted(p)}
            gained = {parent_dir(p) for p in listing if is_compacted(p)} - had
            todo = gone | (gained & {parent_dir(p) for p in paths})
            parts.append(_without_dirs(table, todo))
            if not todo:
                break
        if todo:
            raise ResultsError(f"{base}: files kept being compacted while being read; read again")
        schema = empty if schema is None else schema
        self._filter(where, schema, what)  # also checks a filter on an empty store
        parts = [t for t in parts if t is not None]
        table = pa.concat_tables(parts, promote_options="permissive") if parts else empty.empty_table()
        order = column_order(table.schema, empty, tail)
        if columns is not None:
            columns = [columns] if isinstance(columns, str) else list(columns)
            unknown = [c for c in columns if c not in table.schema.names]
            if unknown:
                raise ResultsError(
                    f"{what} columns: unknown {', '.join(map(repr, unknown))}; available: {', '.join(order)}"
                )
        table = table.select(order)
        return table.select(columns) if columns is not None else table

    def metrics(self, columns: list[str] | None = None, filter: Any = None) -> pa.Table:
        """All metric rows of the sweep (one per stored report), columns in the documented order.

        ``trial_id`` comes back as a plain string column (the hive partition is read with an explicit
        string schema, not pyarrow's inferred dictionary). ``filter`` is a pyarrow expression
        (``ds.field("init") == "gap"``) or a ``{column: value or [values]}`` dict.

        One row per ``(trial_id, epoch)``: where a trial directory holds a compacted file and
        per-epoch files (a crash during :meth:`compact`, a report that arrived after it), the row with
        the latest ``timestamp`` is kept (on a tie the per-epoch file's), before ``filter`` applies."""
        tail = [*TAIL_SCHEMA.names]
        return self._read(
            self.metrics_dir,
            2,
            PARTITIONING,
            METRIC_BASE_SCHEMA,
            tail,
            columns,
            filter,
            "metrics",
            keys=["trial_id", "epoch"],
        )

    def _snapshot(self) -> Snapshot | None:
        """The sweep file (None when there is none, or it cannot be read)."""
        return read_snapshot(self.loc, self.sweep_path)

    def trials(self) -> pa.Table:
        """One row per trial that has a trial row (see the module docstring for the columns)."""
        return self._read(
            self.trials_dir, 1, None, TRIAL_BASE_SCHEMA, [*TRIAL_TAIL.names], None, None, "trials"
        )

    def _identities(self, paths: list[str]) -> list[tuple | None]:
        """What tells a file from its replacement (None: missing). Local: inode, mtime (ns), size (an
        atomic replace is a new inode); other filesystems: mtime and size."""
        if self.loc.local:
            out: list[tuple | None] = []
            for path in paths:
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    out.append(None)
                    continue
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            return out
        infos = self.loc.fs.get_file_info(paths)
        return [(i.mtime_ns, i.size) if i.type == pafs.FileType.File else None for i in infos]
