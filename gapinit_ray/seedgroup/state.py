"""The shared seed-group state on disk: one writer (the scheduler on the driver), one reader API.

Two files in the sweep dir, named here only:

- ``scheduler_state.jsonl`` (:data:`LOG_FILE`): an append-only log, one :class:`~.core.RungBook` event
  per line (a member's status, a value at a rung, a group's decision). A decision appends a few
  short lines, so the write cost per decision does not grow with the number of groups already decided;
- ``scheduler_state.json`` (:data:`STATE_FILE`): a :class:`Snapshot` -- the format ``version``, the
  schedule, the book as events, and the log offset it covers -- rewritten (atomically) only when the
  log has grown by more than the last snapshot's size, so snapshots cost at most as many bytes as the
  log itself (amortized O(1) per event). It lets a reader start without replaying the whole log and a
  resumed driver reload the rungs (Tune 2.60 restores no scheduler state: ray-project/ray#30838).

Readers (:class:`StateReader`) load the snapshot once, then read the log incrementally from their
offset; only complete lines count (a line being appended is read next time), so a read during an
append is never wrong, only late. A crash mid-append leaves a torn last line, which the writer cuts
off when it opens the log again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapinit_ray.atomic import write_atomic
from gapinit_ray.names import SCHEDULER_LOG_FILE, SCHEDULER_STATE_FILE
from gapinit_ray.seedgroup.core import DECISIONS, STATUSES, RungBook, Schedule

#: The snapshot's and the log's file names in the sweep dir (spelled out once, in gapinit_ray.names).
STATE_FILE = SCHEDULER_STATE_FILE
LOG_FILE = SCHEDULER_LOG_FILE
#: Version of the snapshot/log format; version 1 was one JSON document rewritten on every change.
STATE_VERSION = 2
#: The log is compacted into a new snapshot once it grew by max(this, the last snapshot's size) bytes.
COMPACT_MIN_BYTES = 64 * 1024


def state_path(sweep_root: str | os.PathLike[str]) -> Path:
    """The snapshot file of the sweep at ``sweep_root`` (the path a writer and its readers share)."""
    return Path(sweep_root) / STATE_FILE


def log_path(path: str | os.PathLike[str]) -> Path:
    """The log beside the snapshot ``path``."""
    return Path(path).with_name(LOG_FILE)


@dataclass
class Snapshot:
    """What :data:`STATE_FILE` holds. ``settings``: :meth:`Schedule.to_dict`; ``events``: the book as
    :meth:`RungBook.events`; ``log_offset``: the log bytes these events already include."""

    settings: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    log_offset: int = 0
    version: int = STATE_VERSION

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "settings": self.settings,
                "log_offset": self.log_offset,
                "events": self.events,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str, where: str = "seed-group state") -> Snapshot:
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{where}: not a seed-group state: {e}") from None
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            got = raw.get("version") if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(
                f"{where}: a seed-group state of version {got!r}, this version reads {STATE_VERSION} "
                "(a sweep started by another gapinit version: resume it with that version)"
            )
        try:
            settings = dict(raw["settings"])
            n = len(settings["milestones"])
            events = [check_event(e, n) for e in raw["events"]]
            return cls(settings, events, int(raw["log_offset"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where}: malformed seed-group state: {e!r}") from None


def check_event(event: Any, n_rungs: int) -> dict[str, Any]:
    """``event`` if it is a well-formed book event, else ValueError (a state file from elsewhere)."""
    ok = isinstance(event, dict)
    kind = event.get("k") if ok else None
    if kind == "member":
        ok = isinstance(event.get("trial"), str) and isinstance(event.get("group"), str)
        ok = ok and event.get("status") in STATUSES
    elif kind == "value":
        ok = isinstance(event.get("trial"), str) and isinstance(event.get("value"), int | float)
        ok = ok and isinstance(event.get("rung"), int) and 0 <= event["rung"] < n_rungs
    elif kind == "decision":
        ok = isinstance(event.get("group"), str) and event.get("decision") in DECISIONS
        ok = ok and isinstance(event.get("rung"), int) and 0 <= event["rung"] < n_rungs
        ok = ok and isinstance(event.get("mean"), int | float) and not isinstance(event["mean"], bool)
    else:
        ok = False
    if not ok:
        raise ValueError(f"malformed seed-group state event: {event!r}")
    return event


def schedule_of(settings: dict[str, Any]) -> Schedule:
    return Schedule(**{k: v for k, v in settings.items() if k != "milestones"})


def _complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """The complete lines of ``data`` and how many bytes they span (a torn tail is left for later)."""
    end = data.rfind(b"\n") + 1
    return [line for line in data[:end].split(b"\n") if line.strip()], end


def replay(book: RungBook, lines: list[bytes]) -> None:
    n = len(book.milestones)
    for line in lines:
        book.apply(check_event(json.loads(line), n))


class StateWriter:
    """The only writer: events are buffered by :meth:`append` and written by :meth:`flush` in one
    append; :meth:`flush` compacts into a snapshot when the log has grown enough."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.log = log_path(self.path)
        self._buffer: list[str] = []
        self._offset = 0  # log bytes written (the log's size)
        self._snapshot_bytes = 0
        self._since_snapshot = 0
        self.bytes_written = 0  # log + snapshot bytes, since this writer was made
        self.log_bytes_written = 0  # of which appended to the log

    def start(self, book: RungBook) -> None:
        """A fresh state (a new sweep, or another run's files left over): empty log, new snapshot."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb"):
            pass
        self._offset = 0
        self._buffer.clear()
        self.snapshot(book)

    def resume(self, offset: int) -> None:
        """Continue a log of ``offset`` complete bytes (cut a torn last line off)."""
        with open(self.log, "ab") as f:
            f.truncate(offset)
        self._offset = offset

    def append(self, event: dict[str, Any]) -> None:
        self._buffer.append(json.dumps(event, separators=(",", ":")))

    def flush(self, book: RungBook) -> None:
        if not self._buffer:
            return
        data = ("\n".join(self._buffer) + "\n").encode()
        self._buffer.clear()
        with open(self.log, "ab") as f:
            f.write(data)
        self._offset += len(data)
        self._since_snapshot += len(data)
        self.bytes_written += len(data)
        self.log_bytes_written += len(data)
        if self._since_snapshot > max(COMPACT_MIN_BYTES, self._snapshot_bytes):
            self.snapshot(book)

    def snapshot(self, book: RungBook) -> None:
        """Write the whole book as a snapshot covering the log up to now (atomic)."""
        text = Snapshot(book.schedule.to_dict(), book.events(), self._offset).to_json()
        write_atomic(self.path, text)
        self._snapshot_bytes = len(text)
        self._since_snapshot = 0
        self.bytes_written += len(text)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_buffer"] = []
        return state


def load(path: str | os.PathLike[str]) -> tuple[Snapshot, list[bytes], int] | None:
    """The snapshot at ``path``, the log's complete lines after it, and the offset they end at; None
    when there is no snapshot. ValueError when the files are not a state of this version."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    snap = Snapshot.from_json(text, str(path))
    try:
        with open(log_path(path), "rb") as f:
            f.seek(snap.log_offset)
            lines, size = _complete_lines(f.read())
    except FileNotFoundError:
        lines, size = [], 0
    return snap, lines, snap.log_offset + size


def load_book(path: str | os.PathLike[str]) -> tuple[RungBook, int] | None:
    """The book the files at ``path`` hold and the log offset read up to."""
    loaded = load(path)
    if loaded is None:
        return None
    snap, lines, offset = loaded
    book = RungBook(schedule_of(snap.settings))
    for event in snap.events:
        book.apply(event)
    replay(book, lines)
    return book, offset


class StateReader:
    """The trial side's view of the state: :meth:`book` is up to date with every complete log line.

    Cheap to call often: after the first call it reads only the bytes appended since."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._book: RungBook | None = None
        self._offset = 0

    def book(self) -> RungBook | None:
        """The current book, or None while there is no readable state (not written yet, or not one)."""
        try:
            if self._book is not None:
                with open(log_path(self.path), "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size >= self._offset:
                        f.seek(self._offset)
                        lines, used = _complete_lines(f.read())
                        replay(self._book, lines)
                        self._offset += used
                        return self._book
                self._book = None  # the log was started again (a new run): read from the snapshot
            loaded = load_book(self.path)
        except (OSError, ValueError, KeyError, TypeError):
            self._book = None
            return None
        if loaded is None:
            return None
        self._book, self._offset = loaded
        return self._book


def rung_state_of(snapshot_text: str, log: bytes = b"") -> dict[str, Any]:
    """:meth:`RungBook.rung_state` of a snapshot's text and the log's bytes (a reader that has the
    files' contents, e.g. the dashboard on any filesystem), plus ``labels`` (group id -> config)."""
    snap = Snapshot.from_json(snapshot_text)
    book = RungBook(schedule_of(snap.settings))
    for event in snap.events:
        book.apply(event)
    replay(book, _complete_lines(log[snap.log_offset :])[0])
    return {**book.rung_state(), "labels": dict(book.labels)}


def write_snapshot(path: str | os.PathLike[str], book: RungBook) -> None:
    """A standalone snapshot of ``book`` (no log: ``log_offset`` 0), written atomically."""
    write_atomic(path, Snapshot(book.schedule.to_dict(), book.events(), 0).to_json())


def read_snapshot(path: str | os.PathLike[str]) -> RungBook:
    """The book of a standalone snapshot (:func:`write_snapshot`); ValueError if it is not one."""
    snap = Snapshot.from_json(Path(path).read_text(encoding="utf-8"), str(path))
    book = RungBook(schedule_of(snap.settings))
    for event in snap.events:
        book.apply(event)
    return book
