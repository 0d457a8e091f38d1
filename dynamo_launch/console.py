"""A terminal's stderr with a block of lines kept at its bottom, redrawn in place.

While ``up`` waits for processes to become ready, a terminal shows them in a block below the
scrolling log (as ``docker compose up``, ``kubectl rollout status`` or cargo do). structlog
writes its lines through :class:`LiveBlock`: each complete line erases the block, goes out, and
the block is drawn again below it, in a single write, so neither flickers nor is garbled. The
block drawn under a line is made afresh from its :attr:`LiveBlock.source` then: under
"llama-0 ready", llama-0 is no longer STARTING.

The lines of the block are made elsewhere (:func:`dynamo_launch.progress.render`), already
cleaned and cut to the terminal's width; this module only moves the cursor.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TextIO

from .progress import cells, truncate

__all__ = ["LiveBlock", "can_redraw"]

_UP = "\x1b[{}A"  # cursor up N lines (CUU)
_ERASE_BELOW = "\x1b[J"  # erase from the cursor to the end of the screen (ED 0)


def can_redraw(stream: Any, environ: dict[str, str] | None = None) -> bool:
    """True when ``stream`` is a terminal that moves its cursor (not ``TERM=dumb``)."""
    environ = dict(os.environ) if environ is None else environ
    try:
        return bool(stream.isatty()) and environ.get("TERM", "") not in ("", "dumb")
    except (AttributeError, ValueError):  # closed, or no stream at all
        return False


class LiveBlock:
    """``stream`` (a terminal) with :meth:`show`'s lines kept below whatever else is written.

    A file-like object for structlog: :meth:`write` holds text back until a line is complete.
    Thread-safe: libraries may log from their own threads (their lines get the block last made,
    not one made from :attr:`source`, which belongs to the thread that made this object)."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._lock = threading.Lock()
        self._owner = threading.get_ident()
        self.source: Callable[[], list[str]] | None = None
        """Makes the block's lines (None: no block); asked at :meth:`refresh` and under each log line."""
        self._block: list[str] = []
        self._drawn: list[int] = []  # the cells of each block line on the screen now
        self._partial = ""

    def size(self) -> tuple[int, int]:
        """The terminal's (columns, lines), 80×24 when it cannot say."""
        try:
            size = os.get_terminal_size(self._stream.fileno())
            return size.columns or 80, size.lines or 24
        except (OSError, ValueError, AttributeError):
            return 80, 24

    def show(self, lines: list[str]) -> None:
        """Make ``lines`` the block (``[]``: none); redrawn only when it changed."""
        with self._lock:
            if lines == self._block:
                return
            self._block = list(lines)
            self._out(self._erase() + self._draw())

    def refresh(self) -> None:
        """Redraw the block from :attr:`source` (take it away when there is none)."""
        self.show(self._made())

    def close(self) -> None:
        """Take the block off the screen for good and write out what is held back."""
        self.source = None
        self.show([])
        with self._lock:
            if self._partial:
                self._out(self._partial)
                self._partial = ""

    def write(self, text: str) -> int:
        """Write ``text`` above the block (complete lines now, the rest with the next newline)."""
        with self._lock:
            self._partial += text
            if "\n" in self._partial:
                done, _, self._partial = self._partial.rpartition("\n")
                if self.source is not None and threading.get_ident() == self._owner:
                    self._block = self._made()
                self._out(self._erase() + done + "\n" + self._draw())
        return len(text)

    def flush(self) -> None:
        """Flush the terminal (what is held back waits for its newline)."""
        self._stream.flush()

    def isatty(self) -> bool:
        """The terminal's answer (structlog colours its lines by it)."""
        return self._stream.isatty()

    def fileno(self) -> int:
        """The terminal's file descriptor."""
        return self._stream.fileno()

    def _made(self) -> list[str]:
        source = self.source
        if source is None:
            return []
        try:
            return source()
        except Exception:  # a fault of the block must never cost a log line
            return self._block

    def _erase(self) -> str:
        if not self._drawn:
            return ""
        columns = self.size()[0]
        # A narrowed terminal may have wrapped a line drawn at the old width onto several.
        rows = sum(max(1, -(-n // columns)) for n in self._drawn)
        self._drawn = []
        return "\r" + _UP.format(rows) + _ERASE_BELOW

    def _draw(self) -> str:
        if not self._block:
            return ""
        columns = self.size()[0]
        lines = [truncate(line, max(columns - 1, 1)) for line in self._block]  # a resize since it was made
        self._drawn = [cells(line) for line in lines]
        return "".join(line + "\n" for line in lines)

    def _out(self, text: str) -> None:
        if text:
            self._stream.write(text)
            self._stream.flush()
