"""The driver's progress: one line per change off a terminal, a live status on one."""

from __future__ import annotations

import io
from collections import Counter

from gapinit_ray.progress import ProgressView, SweepStatus, rung_summary


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _status(running: int, done: int, best: float | None = None) -> SweepStatus:
    states = Counter({"RUNNING": running, "TERMINATED": done})
    return SweepStatus(+states, metric="val_cider", best=(best, "t1") if best is not None else None)


def test_off_a_terminal_a_line_is_printed_only_when_something_changed() -> None:
    out = io.StringIO()
    view = ProgressView(out)
    assert not view.live
    for status in [_status(3, 0), _status(3, 0), _status(3, 0, 0.5), _status(3, 0, 0.5), _status(2, 1, 0.5)]:
        view.update(status)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith("3 running | best val_cider: no report yet")
    assert lines[1].endswith("3 running | best val_cider 0.5 (t1)")
    assert lines[2].endswith("2 running, 1 terminated | best val_cider 0.5 (t1)")


def test_quiet_prints_nothing() -> None:
    out = _Tty()
    view = ProgressView(out, quiet=True)
    view.update(_status(1, 0))
    view.close()
    assert out.getvalue() == ""


def test_on_a_terminal_one_live_status_is_redrawn() -> None:
    out = _Tty()
    view = ProgressView(out)
    assert view.live
    view.update(_status(3, 0))
    view.update(_status(2, 1, 0.75))
    view.close()
    text = out.getvalue()
    assert "2 running, 1 terminated" in text and "val_cider 0.75 (t1)" in text
    assert "\x1b[" in text  # drawn in place with cursor controls, not appended line by line


def test_rung_summary_counts_groups_judged_promoted_and_stopped() -> None:
    state = {
        "milestones": [1.0, 2.0],
        "groups": {
            "a": {"decisions": {1.0: "CONTINUE", 2.0: "STOP"}},
            "b": {"decisions": {1.0: "STOP"}},
            "c": {"decisions": {}},
        },
    }
    groups, rungs = rung_summary(state)
    assert groups == 3 and rungs == {1.0: (2, 1, 1), 2.0: (1, 0, 1)}
    status = SweepStatus(Counter({"RUNNING": 1}), rungs=rungs, groups=groups, metric="m")
    assert "rungs epoch 1: 2/3 judged (1 on, 1 stopped)" in status.line()
