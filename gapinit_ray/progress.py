"""What the sweep driver shows while trials run: one live status on a terminal, one line per change
elsewhere (CI logs, ``gapinit logs`` of a submitted sweep, a file).

The status holds trials by state, seed-group rungs decided so far (groups judged, promoted, stopped),
the best value of the scheduler's metric with its trial, and the elapsed time. On a terminal it is a
`rich` live display redrawn in place; otherwise a line is printed only when something other than the
clock changed, so a log grows with events, not with time.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

#: the order states are shown in
_STATES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "STOPPED", "ERROR")


@dataclass
class SweepStatus:
    """A snapshot of a sweep for display; :meth:`line` is its one-line form (without the clock)."""

    states: Counter = field(default_factory=Counter)
    # per rung (milestone epoch): (groups judged, groups promoted, groups stopped)
    rungs: dict[float, tuple[int, int, int]] = field(default_factory=dict)
    groups: int = 0
    metric: str = ""
    best: tuple[float, str] | None = None

    def states_text(self) -> str:
        order = [s for s in _STATES if self.states.get(s)] + sorted(set(self.states) - set(_STATES))
        return ", ".join(f"{self.states[s]} {s.lower()}" for s in order) or "no trials yet"

    def rungs_text(self) -> str:
        if not self.rungs:
            return ""
        parts = [
            f"epoch {m:g}: {judged}/{self.groups} judged ({promoted} on, {stopped} stopped)"
            for m, (judged, promoted, stopped) in sorted(self.rungs.items())
        ]
        return "rungs " + "; ".join(parts)

    def best_text(self) -> str:
        if self.best is None:
            return f"best {self.metric}: no report yet"
        return f"best {self.metric} {self.best[0]:.4g} ({self.best[1]})"

    def line(self) -> str:
        return " | ".join(p for p in (self.states_text(), self.rungs_text(), self.best_text()) if p)


def rung_summary(rung_state: dict[str, Any]) -> tuple[int, dict[float, tuple[int, int, int]]]:
    """(number of groups, per milestone: groups judged, promoted, stopped) from seed-group ASHA's
    :meth:`~gapinit_ray.seedgroup.tune.SeedGroupASHA.rung_state`."""
    groups = rung_state.get("groups", {})
    out: dict[float, tuple[int, int, int]] = {}
    for m in rung_state.get("milestones", []):
        decisions = [g.get("decisions", {}).get(m) for g in groups.values()]
        judged = [d for d in decisions if d is not None]
        stopped = sum(1 for d in judged if str(d).upper() == "STOP")
        out[float(m)] = (len(judged), len(judged) - stopped, stopped)
    return len(groups), out


class ProgressView:
    """Shows :class:`SweepStatus` snapshots: live on a terminal (``rich``), else one line per change."""

    def __init__(self, stream: IO[str] | None = None, *, live: bool | None = None, quiet: bool = False):
        self._stream = stream  # None: sys.stderr, looked up when written to
        self.quiet = quiet
        self.live = (self.stream.isatty() if live is None else live) and not quiet
        self.t0 = time.time()
        self._last_line: str | None = None
        self._live = None
        self._status: SweepStatus | None = None

    @property
    def stream(self) -> IO[str]:
        return self._stream or sys.stderr

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks (this view is in one): a copy writes to its own process's stderr
        return {**self.__dict__, "_stream": None, "_live": None}

    def elapsed(self) -> str:
        s = int(time.time() - self.t0)
        return f"{s // 60}:{s % 60:02d}" if s < 3600 else f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"

    def update(self, status: SweepStatus) -> None:
        if self.quiet:
            return
        self._status = status
        if self.live:
            self._draw()
            return
        line = status.line()
        if line != self._last_line:
            self._last_line = line
            print(f"[{self.elapsed():>7}] {line}", file=self.stream, flush=True)

    def _renderable(self):
        from rich.table import Table

        st = self._status or SweepStatus()
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("elapsed", self.elapsed())
        table.add_row("trials", st.states_text())
        if st.rungs:
            for m, (judged, promoted, stopped) in sorted(st.rungs.items()):
                table.add_row(
                    f"rung @ epoch {m:g}",
                    f"{judged}/{st.groups} groups judged: {promoted} promoted, {stopped} stopped",
                )
        table.add_row("best", st.best_text().removeprefix("best "))
        return table

    def _draw(self) -> None:
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                get_renderable=self._renderable,
                console=Console(file=self.stream),
                refresh_per_second=1,
                transient=False,
            )
            self._live.start()
        else:
            self._live.refresh()

    def close(self) -> None:
        """Stop the live display (its last state stays on screen)."""
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None
