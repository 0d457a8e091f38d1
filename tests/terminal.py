"""A screen that obeys the few terminal controls ``up``'s live block uses, for tests.

Feed it what a program wrote to its terminal; :attr:`Screen.lines` is what a person would see
(scrolled-off lines kept). Understood: text, ``\\r``, ``\\n``, cursor up (``ESC [ n A``), erase
below (``ESC [ J``); colours (``ESC [ … m``) are dropped. Any other sequence fails the test: the
block must not use what this screen (and so a plain terminal) cannot be trusted to do.
"""

from __future__ import annotations

import re

_SEQUENCE = re.compile(r"\x1b\[([0-9;]*)([A-Za-z])")


class Screen:
    """Lines of text and a cursor (row, column); no width limit (lines never wrap here)."""

    def __init__(self) -> None:
        self.lines: list[str] = [""]
        self.row = 0
        self.col = 0

    def feed(self, text: str) -> None:
        """Apply ``text`` as a terminal would."""
        pos = 0
        while pos < len(text):
            m = _SEQUENCE.match(text, pos)
            if m:
                self._control(m.group(1), m.group(2))
                pos = m.end()
                continue
            ch = text[pos]
            pos += 1
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.row += 1
                self.col = 0  # as a pty with onlcr shows it
                if self.row == len(self.lines):
                    self.lines.append("")
            elif ch == "\x1b":
                raise AssertionError(f"unexpected escape sequence at {text[pos - 1:pos + 10]!r}")
            else:
                line = self.lines[self.row].ljust(self.col)
                self.lines[self.row] = line[: self.col] + ch + line[self.col + 1:]
                self.col += 1

    def _control(self, args: str, final: str) -> None:
        if final == "m":
            return
        if final == "A":
            self.row = max(0, self.row - int(args or "1"))
        elif final == "J" and args in ("", "0"):
            self.lines[self.row] = self.lines[self.row][: self.col]
            del self.lines[self.row + 1:]
        else:
            raise AssertionError(f"unexpected control sequence ESC[{args}{final}")

    @property
    def text(self) -> str:
        """The whole screen, lines joined with newlines (trailing spaces dropped)."""
        return "\n".join(line.rstrip() for line in self.lines)
