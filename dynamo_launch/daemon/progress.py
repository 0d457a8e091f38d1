"""What ``up`` shows while processes come up: rows from memory, last log lines from the nodes.

:class:`Progress` makes the :class:`~dynamo_launch.progress.Row` of every process that is
wanted but not ready yet (WAITING, STARTING, BACKOFF) from the runner's machines, and reads the
last line of the starting ones' logs from their nodes: one ``tails`` request per host for all
its starting processes, 2 KiB from the end of each file, secrets redacted on the head as for
the lines ``status`` shows after an exit. Two ways to follow it, both idle (no request, no
timer) while nothing is starting:

- :meth:`Progress.live`: a terminal's block, which a callback draws from it about twice a
  second (sooner on a change of state), the log lines read once a second in the background (a
  slow host never holds a redraw);
- :meth:`Progress.log`: a ``not ready yet`` log event per such process, on the
  :class:`~dynamo_launch.progress.Schedule` (after 10 s, then every 30 s), its log line read
  just before.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable
from typing import Any

from .. import secrets
from ..errors import DynamoLaunchError
from ..progress import SHOWN, Row, Schedule, fields, last_line
from ..supervisor import State
from .runner import Runner

__all__ = ["LINES_EVERY", "REDRAW", "Progress", "Show"]

REDRAW = 0.5  # seconds between redraws of a terminal's block
QUICKEST = 0.25  # seconds at least between two redraws (a state change redraws before REDRAW)
LINES_EVERY = 1.0  # seconds between reads of the last log lines for the block
PLAIN_TICK = 1.0  # seconds between looks at the schedule of the plain events
TAIL_BYTES = 2048  # read from the end of each log: a terminal line, or a progress bar's last redraw
TAIL_LINES = 3  # the last line may be blank
TAIL_TIMEOUT = 5.0

Show = Callable[["Progress | None"], None]
"""Takes what to draw from (its :meth:`Progress.rows` are fresh whenever asked, in the event
loop's thread: a block redrawn under a log line shows the state that line reports), or None
when there is nothing left to show."""

_SHOWN = tuple(State[s] for s in SHOWN)


class Progress:
    """The processes of ``runner`` that are not ready yet, with the last line of their logs."""

    def __init__(self, runner: Runner):
        self._runner = runner
        self._lines: dict[tuple[str, int], str] = {}  # (name, generation) → its log's last line

    def rows(self) -> list[Row]:
        """A row per process that is wanted but not ready yet, in the plan's order."""
        now = self._runner.now()
        out = []
        for p in self._runner.procs.values():
            m = p.machine
            if m.state not in _SHOWN:
                continue
            if m.state is State.STARTING:
                deadline: float | None = m.config.startup_timeout
                detail = self._lines.get((p.name, m.generation), "")
            else:  # no log of this copy yet (an older copy's would mislead): what it waits for, why it is down
                deadline, detail = None, p.health if m.state is State.WAITING else m.reason
            out.append(Row(p.name, p.spec.host, m.state.name, max(0.0, now - m.since), deadline, detail))
        return out

    def total(self) -> int:
        """How many processes are supervised."""
        return len(self._runner.procs)

    def _states(self) -> list[tuple[str, State]]:
        return [(n, p.machine.state) for n, p in self._runner.procs.items() if p.machine.state in _SHOWN]

    def starting(self) -> bool:
        """True while a process is wanted but not ready yet."""
        return any(p.machine.state in _SHOWN for p in self._runner.procs.values())

    async def read_lines(self, names: Iterable[str]) -> None:
        """Read the last line of the logs of ``names`` that are STARTING: one request per host."""
        by_host: dict[str, list[tuple[str, int, str]]] = collections.defaultdict(list)
        for name in names:
            p = self._runner.procs.get(name)
            if p is not None and p.machine.state is State.STARTING:
                by_host[p.spec.host].append((name, p.machine.generation, p.spec.log_file))
        await asyncio.gather(*(self._read_host(host, wanted) for host, wanted in by_host.items()))
        alive = {(n, p.machine.generation) for n, p in self._runner.procs.items() if p.machine.state is State.STARTING}
        self._lines = {k: v for k, v in self._lines.items() if k in alive}

    async def _read_host(self, host: str, wanted: list[tuple[str, int, str]]) -> None:
        link = self._runner.links.get(host)
        if link is None or not link.up:
            return
        try:
            answer = await link.call("tails", paths=sorted({path for _, _, path in wanted}), lines=TAIL_LINES,
                                     max_bytes=TAIL_BYTES, timeout=TAIL_TIMEOUT)
        except DynamoLaunchError:  # the host's trouble is reported by its link, not here
            return
        texts = answer.get("texts") if isinstance(answer, dict) else None
        for name, generation, path in wanted:
            text = texts.get(path) if isinstance(texts, dict) else None
            p = self._runner.procs.get(name)
            if isinstance(text, str) and p is not None:
                self._lines[(name, generation)] = last_line(secrets.redact(text, p.spec.env))

    async def live(self, show: Show, *, redraw: float = REDRAW, lines_every: float = LINES_EVERY) -> None:
        """Call ``show(self)`` every ``redraw`` seconds (and on a change of state) while any
        process is not ready, ``show(None)`` once none is (and when cancelled); runs until cancelled."""
        reading: asyncio.Task | None = None
        last_read, read = float("-inf"), []  # when, and which, the last read asked for
        try:
            while True:
                await self._runner.wait_for(self.starting)
                while rows := self.rows():
                    starting = [r.name for r in rows if r.state == "STARTING"]
                    due = time.monotonic() - last_read >= lines_every or starting != read  # a new one: at once
                    if starting and due and (reading is None or reading.done()):
                        reading = asyncio.create_task(self.read_lines(starting), name="progress-lines")
                        last_read, read = time.monotonic(), starting
                    show(self)
                    drawn = time.monotonic()
                    # Sooner when a process changes state (one that begins STARTING gets its log
                    # line read at once), but never more than 1/QUICKEST times a second.
                    states = self._states()
                    await self._runner.wait_for(lambda before=states: self._states() != before, redraw)
                    await asyncio.sleep(max(0.0, drawn + QUICKEST - time.monotonic()))
                show(None)
        finally:
            if reading is not None:
                reading.cancel()
            show(None)

    async def log(self, log: Any, schedule: Schedule | None = None, *, tick: float = PLAIN_TICK) -> None:
        """Log ``not ready yet`` (the fields of :func:`~dynamo_launch.progress.fields`) for each
        process not ready yet, on ``schedule``; runs until cancelled."""
        schedule = schedule or Schedule()
        while True:
            await self._runner.wait_for(self.starting)
            while rows := self.rows():
                due = schedule.due(rows)
                if due:
                    await self.read_lines(r.name for r in due if r.state == "STARTING")
                    now = {r.name: r for r in self.rows()}
                    for r in due:
                        log.info("not ready yet", **fields(now.get(r.name, r)))
                await asyncio.sleep(tick)
            schedule.due([])

