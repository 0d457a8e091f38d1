"""What ``up`` shows while processes come up: the rows, the live block, the plain events (pure).

A model can take an hour to load; between "started" and "ready" the operator sees, per process
that is not ready yet, its state, how long it has been so against its startup deadline, and the
last line of its log. On a terminal that is a block redrawn in place below the scrolling log
(:func:`render`, drawn by :class:`dynamo_launch.console.LiveBlock`); elsewhere (systemd, a pipe,
``--log-format json``) it is one log event per such process now and then (:class:`Schedule`,
:func:`fields`). Everything here is a function of its arguments: no clock, no terminal, no I/O.

::

    3 of 5 processes ready; waiting for 2:
      llama-0  node1  STARTING  1m12s / 30m  Loading safetensors checkpoint shards:  45% | 9/20
      decode   node2  WAITING   1m12s        waiting: llama-0 starting
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from .printable import clean

__all__ = ["SHOWN", "Row", "Schedule", "cells", "duration", "fields", "last_line", "render", "truncate"]

SHOWN = ("BACKOFF", "STARTING", "WAITING")
"""The states of a process that is wanted but not ready yet, in the block's order: trouble first."""


@dataclass(frozen=True)
class Row:
    """One process that is not ready yet."""

    name: str
    host: str
    state: str  # one of SHOWN
    elapsed: float  # seconds in this state
    deadline: float | None = None  # its startup deadline in seconds (STARTING only)
    detail: str = ""  # STARTING: the last line of its log; WAITING: what it waits for; BACKOFF: why it is down


def last_line(text: str) -> str:
    """The line a terminal would show last for ``text`` (the end of a log), on one safe line.

    The last line that is not blank; of a line redrawn with carriage returns (a progress bar),
    what follows the last one; tabs as spaces, every other control character escaped."""
    for line in reversed(text.split("\n")):  # not splitlines(): \x1c or \u2028 is shown, not obeyed
        shown = next((part for part in reversed(line.split("\r")) if part.strip()), "")
        if shown:
            return clean(shown.replace("\t", " ").strip())
    return ""


def duration(seconds: float, *, short: bool = False) -> str:
    """``12s``, ``1m12s``, ``1h02m``; ``short`` drops zero tails (``30m``, ``2h``: a deadline)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        m, rest = divmod(s, 60)
        return f"{m}m" if short and not rest else f"{m}m{rest:02d}s"
    h, m = divmod(s // 60, 60)
    return f"{h}h" if short and not m else f"{h}h{m:02d}m"


def _cells(ch: str) -> int:
    """Terminal cells of one (printable) character: wide East Asian ones take two, marks none."""
    if unicodedata.combining(ch) or unicodedata.category(ch) == "Cf":
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def cells(text: str) -> int:
    """The terminal cells ``text`` (printable, on one line) takes."""
    return sum(_cells(c) for c in text)


def truncate(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` terminal cells, ending in ``…`` when cut."""
    if cells(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = _cells(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…" if width > 0 else ""


def _pad(text: str, width: int) -> str:
    return text + " " * (width - cells(text))


def _time(row: Row) -> str:
    spent = duration(row.elapsed)
    return spent if row.deadline is None else f"{spent} / {duration(row.deadline, short=True)}"


def _order(row: Row) -> int:
    return SHOWN.index(row.state) if row.state in SHOWN else len(SHOWN)


def render(rows: Sequence[Row], total: int, width: int, height: int | None = None) -> list[str]:
    """The block for ``rows`` (of ``total`` processes), each line at most ``width - 1`` cells.

    Rows go in state order (BACKOFF, STARTING, WAITING), the given order within a state. With
    ``height`` (the terminal's lines), the block leaves one line free and ends in ``… and N more``
    when the rows do not fit. No rows, no block."""
    if not rows:
        return []
    limit = max(width - 1, 1)  # the last column would wrap on some terminals
    ordered = sorted(rows, key=_order)
    room = len(ordered) if height is None else max(height - 2, 0)
    shown = ordered if len(ordered) <= room else ordered[: max(room - 1, 0)]
    lines = [f"{total - len(rows)} of {total} processes ready; waiting for {len(rows)}:"]
    table = [[clean(r.name), clean(r.host), clean(r.state), _time(r)] for r in shown]
    widths = [max((cells(row[i]) for row in table), default=0) for i in range(4)]
    for row, r in zip(table, shown):
        line = "  " + "  ".join(_pad(c, w) for c, w in zip(row, widths))
        lines.append((line + "  " + clean(r.detail)).rstrip())
    if len(shown) < len(ordered) and room:
        lines.append(f"  … and {len(ordered) - len(shown)} more")
    return [truncate(line, limit) for line in lines]


def fields(row: Row) -> dict[str, object]:
    """The fields of ``row``'s plain log event (``not ready yet``): numbers in seconds."""
    out: dict[str, object] = {"process": row.name, "host": row.host, "state": row.state,
                              "elapsed_s": int(row.elapsed)}
    if row.deadline is not None:
        out["deadline_s"] = int(row.deadline)
    out["last_line" if row.state == "STARTING" else "detail"] = clean(row.detail)
    return out


class Schedule:
    """Which rows a plain log reports now: a process once it has been ``first`` seconds in its
    state, then every ``every`` seconds of that stay, every ``slower`` seconds once the stay
    passed ``slow_after`` (a process waiting for a failed dependency waits for good: its
    reminder must not flood the journal). A new stay (another state, or the elapsed time going
    back: a restart) starts over."""

    def __init__(self, first: float = 10.0, every: float = 30.0, slow_after: float = 600.0,
                 slower: float = 300.0):
        self.first, self.every, self.slow_after, self.slower = first, every, slow_after, slower
        self._seen: dict[str, tuple[str, float, float | None]] = {}  # name → (state, elapsed, reported at)

    def due(self, rows: Sequence[Row]) -> list[Row]:
        """The rows to report now (and noted as reported); names not in ``rows`` are forgotten."""
        out, seen = [], {}
        for r in rows:
            state, elapsed, reported = self._seen.get(r.name, ("", 0.0, None))
            if state != r.state or r.elapsed < elapsed:
                reported = None
            period = self.every if r.elapsed < self.slow_after else self.slower
            if r.elapsed >= self.first and (reported is None or r.elapsed - reported >= period):
                out.append(r)
                reported = r.elapsed
            seen[r.name] = (r.state, r.elapsed, reported)
        self._seen = seen
        return out
