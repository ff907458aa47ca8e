"""The shared state protocol: one writer, incremental readers, torn lines, compaction, versions."""

from __future__ import annotations

import json

import pytest

from gapinit_ray.seedgroup import state as st
from gapinit_ray.seedgroup.core import MemberPlan, RungBook, Schedule


def _writer_book(path) -> tuple[RungBook, st.StateWriter]:
    writer = st.StateWriter(path)
    book = RungBook(Schedule(max_t=9, metric="m", mode="max", group_size=2), sink=writer.append)
    writer.start(book)
    return book, writer


def test_a_reader_follows_the_writer_incrementally(tmp_path):
    path = st.state_path(tmp_path)
    book, writer = _writer_book(path)
    reader = st.StateReader(path)
    assert reader.book() is not None and reader.book().plan("a0") == MemberPlan("unknown")
    book.add("a0", "a", label="init=gap")
    book.add("a1", "a")
    writer.flush(book)
    assert reader.book().plan("a0") == MemberPlan("train", 0, 1.0)
    book.report("a0", 1, 5.0)
    writer.flush(book)
    assert reader.book().plan("a0") == MemberPlan("wait", 0, 1.0)
    book.report("a1", 1, 7.0)
    writer.flush(book)
    assert reader.book().plan("a0") == MemberPlan("train", 1, 3.0)
    assert reader.book().rung_state() == book.rung_state() and reader.book().labels == {"a": "init=gap"}
    assert st.load_book(path)[0].rung_state() == book.rung_state()


def test_only_complete_lines_count_and_a_torn_line_is_cut_on_resume(tmp_path):
    path = st.state_path(tmp_path)
    book, writer = _writer_book(path)
    book.add("a0", "a")
    writer.flush(book)
    reader = st.StateReader(path)
    event = json.dumps({"k": "member", "trial": "a1", "group": "a", "status": "active"})
    with open(st.log_path(path), "ab") as f:
        f.write(event[:20].encode())  # an append in progress (or a crash mid-append)
    assert set(reader.book().members) == {"a0"}
    with open(st.log_path(path), "ab") as f:
        f.write(event[20:].encode() + b"\n")
    assert set(reader.book().members) == {"a0", "a1"}  # the rest of the line arrived
    with open(st.log_path(path), "ab") as f:
        f.write(b'{"k": "val')  # the driver dies here
    again, offset = st.load_book(path)
    writer2 = st.StateWriter(path)
    writer2.resume(offset)
    again.sink = writer2.append
    again.add("a2", "a", strict_size=False)
    writer2.flush(again)
    assert set(st.load_book(path)[0].members) == {"a0", "a1", "a2"}


def test_compaction_keeps_the_snapshot_small_and_the_readers_right(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "COMPACT_MIN_BYTES", 200)
    path = st.state_path(tmp_path)
    book, writer = _writer_book(path)
    reader = st.StateReader(path)
    reader.book()
    for g in range(40):
        for s in range(2):
            book.add(f"g{g}s{s}", f"g{g}")
            book.report(f"g{g}s{s}", 1, float(g + s))
        writer.flush(book)
    snap = st.Snapshot.from_json(path.read_text())
    assert snap.log_offset > 0  # compacted at least once
    assert reader.book().rung_state() == book.rung_state()
    assert st.StateReader(path).book().rung_state() == book.rung_state()  # a new reader: snapshot + tail
    log_bytes = st.log_path(path).stat().st_size
    assert writer.bytes_written <= 3 * log_bytes  # snapshots cost no more than the log itself (amortized)


def test_a_state_of_another_version_or_not_a_state_is_refused(tmp_path):
    path = st.state_path(tmp_path)
    path.write_text(json.dumps({"version": 1, "trials": {}}))
    with pytest.raises(ValueError, match="version 1"):
        st.load_book(path)
    assert st.StateReader(path).book() is None  # a reader only says "not readable"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a seed-group state"):
        st.load(path)
    assert st.load(tmp_path / "missing.json") is None


def test_a_new_run_starts_the_log_again_and_readers_notice(tmp_path):
    path = st.state_path(tmp_path)
    book, writer = _writer_book(path)
    book.add("old0", "a")
    book.add("old1", "a")
    writer.flush(book)
    reader = st.StateReader(path)
    assert "old0" in reader.book().members
    fresh, writer2 = _writer_book(path)
    fresh.add("new0", "b")
    writer2.flush(fresh)
    assert set(reader.book().members) == {"new0"}
