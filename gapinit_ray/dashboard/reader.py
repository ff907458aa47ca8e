"""Read-only, incremental view of one sweep's files for the dashboard.

The dashboard asks "did anything change?" every second or two and, when it did, re-reads only what
changed. :class:`SweepReader` keeps every file it parsed keyed by its identity (inode, mtime, size:
what :class:`~gapinit_ray.results.store.ResultsStore` itself uses to tell a file from its
replacement), so one tick of a running sweep costs a ``scandir`` of ``metrics/`` (one entry per trial),
a listing of the trial directories whose mtime moved (every write is a temp file + rename in that
directory, so its mtime moves on every report) and a read of the new report files only. A finished
sweep is served from ``metrics/_sweep.parquet`` for every trial directory its manifest still matches,
exactly as :meth:`ResultsStore.metrics` does; a directory that changed since is read from its files,
and within a directory the row with the latest ``timestamp`` wins (on a tie the per-epoch file's), so
the rows equal :meth:`ResultsStore.metrics`'s (``tests/dashboard/test_dashboard.py`` checks it).

Remote storage (``s3://`` ...): one recursive listing per tick is the version; when it changed, the
store's own :meth:`ResultsStore.metrics` / :meth:`ResultsStore.trials` are re-run (no per-file cache).

Nothing here writes: no file, no directory, no lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gapinit_ray.names import SEQUENTIAL_FILE, SPEC_FILE
from gapinit_ray.results._fs import is_ignored, resolve
from gapinit_ray.results.store import (
    COMPACTED,
    MANIFEST_KEY,
    TRIAL_BASE_SCHEMA,
    ResultsStore,
)
from gapinit_ray.seedgroup.state import LOG_FILE as SCHEDULER_LOG
from gapinit_ray.seedgroup.state import STATE_FILE as SCHEDULER_STATE

Identity = tuple[int, int, int]  # (inode, mtime_ns, size), as ResultsStore._identities on a local disk


#: a directory written to this recently is listed on every tick, not only when its mtime moves
RECENT_S = 2.0


def _recent(mtime_ns: int) -> bool:
    return time.time_ns() - mtime_ns < RECENT_S * 1e9


def _identity(st: os.stat_result) -> Identity:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _stat(path: str) -> Identity | None:
    try:
        return _identity(os.stat(path))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _listing(directory: str, suffix: str = ".parquet") -> dict[str, Identity]:
    """``{name: identity}`` of the final data files in ``directory`` (temp / hidden names skipped)."""
    out: dict[str, Identity] = {}
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return out
    for e in entries:
        if is_ignored(e.name) or not e.name.endswith(suffix):
            continue
        try:
            out[e.name] = _identity(e.stat())
        except FileNotFoundError:
            continue
    return out


def _read_parquet(path: str) -> pa.Table | None:
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        return None


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    tables = [t for t in tables if t is not None]
    if not tables:
        return None
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")


def _latest_per_epoch(table: pa.Table, preferred: np.ndarray) -> pa.Table:
    """One row per epoch: the latest ``timestamp``, on a tie a ``preferred`` row (a per-epoch file's),
    then the later row: :meth:`ResultsStore.metrics`'s rule inside one trial directory."""
    n = table.num_rows
    if n < 2:
        return table
    epoch = pc.cast(table["epoch"], pa.float64()).to_numpy(zero_copy_only=False)
    ts = pc.fill_null(pc.cast(table["timestamp"], pa.int64()), np.iinfo(np.int64).min)
    ts = ts.to_numpy(zero_copy_only=False)
    row = np.arange(n)
    order = np.lexsort((-row, -preferred.astype(np.int64), -ts, epoch))
    e = epoch[order]
    first = np.ones(n, dtype=bool)
    first[1:] = ~(e[1:] == e[:-1])  # NaN epochs never equal: all kept
    keep = np.sort(order[first])
    return table if len(keep) == n else table.take(pa.array(keep))


@dataclass
class _TrialDir:
    """A trial directory's last listing and its rows (None: taken from the sweep file)."""

    mtime_ns: Any  # what _dir_mtimes said: the mtime, or (mtime, listing) while recently written
    files: dict[str, Identity]
    table: pa.Table | None


@dataclass
class _SweepFile:
    identity: Identity
    table: pa.Table
    manifest: dict[str, dict[str, tuple]]
    slices: dict[str, tuple[int, int]] = field(default_factory=dict)


class SweepReader:
    """Cached, read-only access to ``<root>/<sweep>``: metric rows, trial rows, spec, scheduler state.

    Thread-safe (one lock: the server may answer two requests at once). ``version()`` is the cheap
    fingerprint the pages poll; every other method re-reads only files whose identity changed."""

    def __init__(self, root: str, sweep: str):
        self.store = ResultsStore(root, sweep)  # paths and the remote fallback; never written through
        self.loc = self.store.loc
        self.name = sweep
        self.dir = self.loc.join(sweep)
        self._lock = threading.RLock()
        self._files: dict[str, tuple[Identity, pa.Table | None]] = {}  # path -> (identity, rows)
        self._dirs: dict[str, _TrialDir] = {}
        self._sweep_file: _SweepFile | None = None
        self._metrics: tuple[str, pa.Table] | None = None  # (fingerprint, rows)
        self._trials: tuple[str, pa.Table] | None = None
        self._json: dict[str, tuple[Any, Any]] = {}
        self._remote: dict[str, tuple[str, pa.Table]] = {}

    # ------------------------------------------------------------------------------ version
    def version(self) -> str:
        """A short hash of everything the pages show: the identities of ``metrics/`` and its trial
        directories, the sweep file, ``trials/``, ``spec.json`` and ``scheduler_state.json``. Changes
        whenever a report, a trial row or the rung state is written (every write renames into its
        directory, which moves the directory's mtime)."""
        h = hashlib.blake2b(digest_size=10)
        if not self.loc.local:
            infos = self.loc.fs.get_file_info(
                pafs.FileSelector(self.dir, recursive=True, allow_not_found=True)
            )
            for i in sorted(infos, key=lambda i: i.path):
                if "/results/" in i.path or i.path.endswith(
                    (SPEC_FILE, SCHEDULER_STATE, SCHEDULER_LOG, SEQUENTIAL_FILE)
                ):
                    h.update(f"{i.path}\0{i.mtime_ns}\0{i.size}\n".encode())
            return h.hexdigest()
        for path in (self.store.metrics_dir, self.store.trials_dir):
            st = _stat(path)
            h.update(repr(st).encode())
            if st is not None and _recent(st[1]):
                h.update(repr(sorted(_listing(path).items())).encode())
        for name in (SPEC_FILE, SCHEDULER_STATE, SCHEDULER_LOG, SEQUENTIAL_FILE):
            h.update(repr(_stat(f"{self.dir}/{name}")).encode())
        h.update(repr(_stat(self.store.sweep_path)).encode())
        for name, mtime in sorted(self._dir_mtimes().items()):
            h.update(f"{name}\0{mtime}\n".encode())
        return h.hexdigest()

    def _dir_mtimes(self) -> dict[str, Any]:
        """Trial directory -> its mtime; for one written to in the last :data:`RECENT_S` seconds, its
        mtime and listing (a filesystem with coarse timestamps may not move the mtime again for a
        second write within the same tick)."""
        out: dict[str, Any] = {}
        try:
            entries = list(os.scandir(self.store.metrics_dir))
        except FileNotFoundError:
            return out
        for e in entries:
            if is_ignored(e.name) or not e.name.startswith("trial_id="):
                continue
            try:
                if e.is_dir():
                    mtime = e.stat().st_mtime_ns
                    out[e.name] = (
                        (mtime, tuple(sorted(_listing(e.path).items()))) if _recent(mtime) else mtime
                    )
            except FileNotFoundError:
                continue
        return out

    # ------------------------------------------------------------------------------ metrics
    def metrics(self) -> pa.Table:
        """Every metric row, one per ``(trial_id, epoch)``: the rows :meth:`ResultsStore.metrics` returns
        (columns may come in another order)."""
        with self._lock:
            if not self.loc.local:
                return self._remote_read("metrics", self.store.metrics)
            return self._local_metrics()

    def _remote_read(self, what: str, read) -> pa.Table:
        v = self.version()
        cached = self._remote.get(what)
        if cached is None or cached[0] != v:
            cached = (v, read())
            self._remote[what] = cached
        return cached[1]

    def _local_sweep_file(self) -> _SweepFile | None:
        ident = _stat(self.store.sweep_path)
        if ident is None:
            self._sweep_file = None
            return None
        if self._sweep_file is not None and self._sweep_file.identity == ident:
            return self._sweep_file
        try:
            table = pq.read_table(self.store.sweep_path)
            raw = json.loads((table.schema.metadata or {})[MANIFEST_KEY])
            manifest = {d: {n: tuple(i) for n, i in files.items()} for d, files in raw["files"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._sweep_file = None  # unreadable: the trial files are the truth
            return None
        table = table.replace_schema_metadata(None)
        sf = _SweepFile(ident, table, manifest)
        # the sweep file is sorted by (trial_id, epoch): each trial's rows are one slice
        tids = table["trial_id"].to_numpy(zero_copy_only=False)
        if len(tids):
            starts = np.flatnonzero(np.r_[True, tids[1:] != tids[:-1]])
            ends = np.r_[starts[1:], len(tids)]
            sf.slices = {str(tids[s]): (int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)}
        self._sweep_file = sf
        return sf

    def _local_metrics(self) -> pa.Table:
        mtimes = self._dir_mtimes()
        sweep_file = self._local_sweep_file()
        fingerprint = repr((sorted(mtimes.items()), sweep_file.identity if sweep_file else None))
        if self._metrics is not None and self._metrics[0] == fingerprint:
            return self._metrics[1]
        base = self.store.metrics_dir
        for gone in set(self._dirs) - set(mtimes):
            del self._dirs[gone]
        covered: list[str] = []
        parts: list[pa.Table] = []
        for name in sorted(mtimes):
            cached = self._dirs.get(name)
            if cached is None or cached.mtime_ns != mtimes[name]:
                files = _listing(f"{base}/{name}")
                cached = _TrialDir(mtimes[name], files, None)
                if not (sweep_file is not None and sweep_file.manifest.get(name) == files):
                    cached.table = self._read_dir(f"{base}/{name}", files)
                self._dirs[name] = cached
            elif cached.table is None and not (
                sweep_file is not None and sweep_file.manifest.get(name) == cached.files
            ):
                cached.table = self._read_dir(f"{base}/{name}", cached.files)  # the sweep file went away
            if cached.table is None:
                covered.append(name)
            elif cached.table.num_rows:
                parts.append(cached.table)
        if covered and sweep_file is not None:
            # one vectorized filter of the sweep file: its rows minus those of the trials read from
            # their own files (or gone), not one slice per covered trial
            keep = {dir_trial_id(n) for n in covered}
            drop = [t for t in sweep_file.slices if t not in keep]
            rows = sweep_file.table
            if drop:
                mask = pc.is_in(rows["trial_id"], value_set=pa.array(drop, pa.string()))
                rows = rows.filter(pc.invert(mask))
            parts.insert(0, rows)
        table = _concat([p for p in parts if p.num_rows]) if parts else None
        if table is None:
            from gapinit_ray.results.store import METRIC_BASE_SCHEMA

            table = METRIC_BASE_SCHEMA.empty_table()
        self._metrics = (fingerprint, table)
        return table

    def _read_dir(self, directory: str, files: dict[str, Identity]) -> pa.Table:
        """The rows of one trial directory (each file read once per identity), de-duplicated by epoch."""
        tid = dir_trial_id(directory)
        tables, preferred = [], []
        for name, ident in sorted(files.items(), key=lambda kv: kv[0] != COMPACTED):
            path = f"{directory}/{name}"
            cached = self._files.get(path)
            if cached is None or cached[0] != ident:
                t = _read_parquet(path)
                if t is not None:
                    t = t.append_column(
                        pa.field("trial_id", pa.string()), pa.array([tid] * t.num_rows, pa.string())
                    )
                cached = (ident, t)
                self._files[path] = cached
            if cached[1] is not None:
                tables.append(cached[1])
                preferred.append(np.full(cached[1].num_rows, name != COMPACTED))
        for path in [p for p in self._files if p.rpartition("/")[0] == directory]:
            if path.rpartition("/")[2] not in files:
                del self._files[path]
        table = _concat(tables)
        if table is None:
            return pa.table({"trial_id": pa.array([], pa.string())})
        if COMPACTED in files and len(files) > 1:
            table = _latest_per_epoch(table, np.concatenate(preferred))
        return table

    # ------------------------------------------------------------------------------- trials
    def trials(self) -> pa.Table:
        """One row per trial (:meth:`ResultsStore.trials`), each file re-read only when replaced."""
        with self._lock:
            if not self.loc.local:
                return self._remote_read("trials", self.store.trials)
            files = _listing(self.store.trials_dir)
            fingerprint = repr(sorted(files.items()))
            if self._trials is not None and self._trials[0] == fingerprint:
                return self._trials[1]
            tables = []
            for name, ident in sorted(files.items()):
                path = f"{self.store.trials_dir}/{name}"
                cached = self._files.get(path)
                if cached is None or cached[0] != ident:
                    cached = (ident, _read_parquet(path))
                    self._files[path] = cached
                tables.append(cached[1])
            table = _concat(tables)
            if table is None:
                table = TRIAL_BASE_SCHEMA.empty_table()
            self._trials = (fingerprint, table)
            return table

    # ---------------------------------------------------------------------------- JSON files
    def _json_file(self, name: str, parse: Any = None) -> Any:
        path = f"{self.dir}/{name}"
        with self._lock:
            if self.loc.local:
                ident: Any = _stat(path)
            else:
                info = self.loc.fs.get_file_info(path)
                ident = (info.mtime_ns, info.size) if info.type == pafs.FileType.File else None
            cached = self._json.get(name)
            if cached is not None and cached[0] == ident:
                return cached[1]
            value = None
            if ident is not None:
                try:
                    with self.loc.fs.open_input_file(path) as f:
                        value = (parse or (lambda b: json.loads(b.decode())))(f.read())
                except (OSError, ValueError):
                    value = None  # a half-visible file on a store without rename: next tick
            self._json[name] = (ident, value)
            return value

    def spec(self) -> dict[str, Any] | None:
        """The validated spec the sweep saved (``spec.json``), or None."""
        return self._json_file(SPEC_FILE)

    def scheduler_state(self) -> dict[str, Any] | None:
        """Seed-group ASHA's saved rung state (``scheduler_state.json``), or None (other schedulers)."""
        return self._json_file(SCHEDULER_STATE)

    def sequential(self) -> dict[str, Any] | None:
        """The sequential phase's record (``sequential.json``: rounds, looks, verdicts), or None."""
        return self._json_file(SEQUENTIAL_FILE)

    def scheduler_log(self) -> bytes:
        """Seed-group ASHA's event log since its snapshots (``scheduler_state.jsonl``), or empty."""
        return self._json_file(SCHEDULER_LOG, parse=bytes) or b""


def dir_trial_id(name: str) -> str:
    """``.../trial_id=<escaped id>`` -> the id (the hive partition value, URI-decoded)."""
    from urllib.parse import unquote

    return unquote(name.rpartition("/")[2].removeprefix("trial_id="))


def list_sweeps(root: str) -> list[str]:
    """Names of the sweeps under a storage root: directories holding ``spec.json`` or ``results/``."""
    store_loc = resolve(root)
    out = []
    if store_loc.local:
        try:
            entries = list(os.scandir(store_loc.path))
        except FileNotFoundError:
            return []
        for e in entries:
            if is_ignored(e.name) or not e.is_dir():
                continue
            if os.path.exists(f"{e.path}/{SPEC_FILE}") or os.path.isdir(f"{e.path}/results"):
                out.append(e.name)
        return sorted(out)
    infos = store_loc.fs.get_file_info(
        pafs.FileSelector(store_loc.path, recursive=False, allow_not_found=True)
    )
    for i in infos:
        name = i.path.rstrip("/").rpartition("/")[2]
        if i.type == pafs.FileType.Directory and not is_ignored(name):
            sub = store_loc.fs.get_file_info([f"{i.path}/{SPEC_FILE}", f"{i.path}/results"])
            if any(s.type != pafs.FileType.NotFound for s in sub):
                out.append(name)
    return sorted(out)
