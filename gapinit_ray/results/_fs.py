"""Where results live and how they are written: one local or pyarrow filesystem, atomic writes.

A results root is a local directory or a URI that :meth:`pyarrow.fs.FileSystem.from_uri` understands
(``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``, ``file:///abs/path``). Every file is written
atomically so that a reader running next to the sweep (``gapinit results`` while trials report) never
sees half a file:

* local disks and HDFS-like filesystems (atomic rename): write ``.<name>.<pid>-<rand>.tmp`` in the same
  directory, flush (``fsync`` locally) and rename it over the final name;
* object stores (S3, GCS, Azure): write the final key in one ``open_output_stream``; an object only
  becomes visible when its upload completes, and there is no cheap rename to use anyway.

Readers skip every name that starts with ``.`` or ``_`` (temp files, ``_tmp*``, ``_SUCCESS``), the
same rule as pyarrow.dataset's default ``selector_ignore_prefixes``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pyarrow.fs as pafs

from gapinit_ray.atomic import storage_error, write_atomic
from gapinit_ray.errors import GapinitError


class ResultsError(GapinitError):
    """A results root, sweep, query or report argument is invalid, or stored results are unreadable."""


# URI schemes pyarrow can open (the same list the sweep spec accepts for `storage`).
URI_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az")
# object stores: one upload is atomic per object, so no temp name + rename there
_OBJECT_STORES = ("S3FileSystem", "GcsFileSystem", "AzureFileSystem")
IGNORED_PREFIXES = (".", "_")


@dataclass(frozen=True)
class Location:
    """A resolved results root: the filesystem, the path inside it, and whether it is the local disk
    (then plain ``os`` calls are used: they are faster and ``os.replace`` is the atomic rename)."""

    fs: pafs.FileSystem
    path: str
    local: bool
    uri: str

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts]) if self.path else "/".join(parts)

    @property
    def object_store(self) -> bool:
        return type(self.fs).__name__ in _OBJECT_STORES


def resolve(root: str) -> Location:
    """Resolve a local path or a filesystem URI; an unknown scheme is a user error naming it."""
    if not isinstance(root, str | os.PathLike) or not str(root).strip():
        raise ResultsError(
            f"results root {root!r}: expected a local directory or a URI such as s3://bucket/p"
        )
    root = str(root)
    if "://" not in root:
        path = Path(root).expanduser().absolute()
        return Location(pafs.LocalFileSystem(), path.as_posix(), True, root)
    scheme = root.split("://", 1)[0].lower()
    if scheme not in URI_SCHEMES:
        raise ResultsError(
            f"results root {root}: unknown URI scheme {scheme!r}; use a local path or one of "
            f"{', '.join(s + '://' for s in URI_SCHEMES)}"
        )
    try:
        fs, path = pafs.FileSystem.from_uri(root)
    except (OSError, ValueError, NotImplementedError) as e:  # ArrowInvalid is a ValueError
        raise ResultsError(f"results root {root}: cannot open it ({str(e).splitlines()[0]})") from None
    return Location(fs, path.rstrip("/"), isinstance(fs, pafs.LocalFileSystem), root)


def encode_name(name: str) -> str:
    """A file/dir-name-safe form of an id that pyarrow's hive partitioning decodes back (URI escapes).

    ``=`` and ``,`` stay readable (ids built from ``init=gap,seed=1`` keep their look); a leading ``.``
    or ``_`` is escaped so that readers do not skip the file as a temp name."""
    enc = quote(name, safe="=,-_.~")
    if enc[:1] in IGNORED_PREFIXES:
        enc = f"%{ord(enc[0]):02X}{enc[1:]}"
    return enc


def is_ignored(name: str) -> bool:
    """Temp and hidden names (``.x.tmp``, ``_tmp...``, ``_SUCCESS``): never read as data."""
    return name.startswith(IGNORED_PREFIXES)


def temp_path(path: str) -> str:
    """The temp name a writer uses for ``path`` (same directory, so the rename is atomic)."""
    head, _, name = path.rpartition("/")
    tmp = f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    return f"{head}/{tmp}" if head else tmp


def write_bytes(loc: Location, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring for how, per filesystem)."""
    head = path.rpartition("/")[0]
    if loc.local:
        write_atomic(path, data)
        return
    try:
        if loc.object_store:
            with loc.fs.open_output_stream(path) as out:
                out.write(data)
            return
        loc.fs.create_dir(head, recursive=True)
        tmp = temp_path(path)
        try:
            with loc.fs.open_output_stream(tmp) as out:
                out.write(data)
            loc.fs.move(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                loc.fs.delete_file(tmp)
            raise
    except OSError as e:  # a refusal that says which (errno): the same one-line StorageError as locally
        refused = storage_error(path, e)
        if refused is None:
            raise
        raise refused from None


def list_files(loc: Location, base: str, suffix: str, depth: int) -> list[str]:
    """Final data files exactly ``depth`` levels under ``base`` (1 = directly in it), skipping temp and
    hidden names at every level. Tolerates files appearing / vanishing while it lists (a writer's temp
    files do both); a missing ``base`` is an empty listing."""
    out: list[str] = []
    if loc.local:

        def walk(d: str, level: int) -> None:
            try:
                entries = list(os.scandir(d))
            except (FileNotFoundError, NotADirectoryError):
                return
            for e in entries:
                if is_ignored(e.name):
                    continue
                try:
                    if level < depth and e.is_dir():
                        walk(e.path, level + 1)
                    elif level == depth and e.name.endswith(suffix) and e.is_file():
                        out.append(e.path if os.sep == "/" else Path(e.path).as_posix())
                except FileNotFoundError:
                    continue

        walk(base, 1)
        return sorted(out)
    infos = loc.fs.get_file_info(pafs.FileSelector(base, recursive=depth > 1, allow_not_found=True))
    prefix = base.rstrip("/") + "/"
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.startswith(prefix):
            continue
        parts = info.path[len(prefix) :].split("/")
        if len(parts) == depth and parts[-1].endswith(suffix) and not any(map(is_ignored, parts)):
            out.append(info.path)
    return sorted(out)
