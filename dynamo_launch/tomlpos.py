"""Line numbers for TOML key paths.

``tomllib`` gives values but not where they came from. Errors must name the
line, so this module scans the (already syntax-checked) text once — on the first
lookup, i.e. only when there is a problem to report — and records
the line on which every key, table header and array element starts. It
understands only structure — keys, headers, strings, arrays, inline tables —
and never raises: anything it cannot follow maps to the nearest enclosing key.
"""

from __future__ import annotations

__all__ = ["KeyPath", "LineMap", "format_path"]

KeyPath = tuple[str | int, ...]

_BARE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def format_path(path: KeyPath) -> str:
    """``("workers", 1, "hosts")`` → ``workers[1].hosts``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if part and set(part) <= _BARE else _quote(part)
            out += ("." if out else "") + text
    return out


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_UNESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def _quote(key: str) -> str:
    """``key`` as a TOML basic string, on one line: control and other unprintable characters escaped."""
    out = []
    for c in key:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif not c.isprintable():
            out.append(f"\\u{ord(c):04X}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


class LineMap:
    """Maps key paths of one TOML document to 1-based line numbers."""

    def __init__(self, text: str):
        self._lines: dict[KeyPath, int] = {}
        self._text = text
        self._pos = 0
        self._line = 1
        self._aot_last: dict[KeyPath, int] = {}
        self._scanned = False  # the scan waits for the first lookup: a valid inventory never needs one

    def line(self, path: KeyPath) -> int:
        """Line of ``path``, else of its nearest recorded ancestor, else 1."""
        if not self._scanned:
            self._scanned = True
            try:
                self._document()
            except (IndexError, ValueError, RecursionError):
                pass  # partial map: lookups fall back to enclosing keys
        for n in range(len(path), 0, -1):
            found = self._lines.get(tuple(path[:n]))
            if found is not None:
                return found
        return 1

    # -- scanner -----------------------------------------------------------------

    def _peek(self, n: int = 0) -> str:
        i = self._pos + n
        return self._text[i] if i < len(self._text) else ""

    def _advance(self, n: int = 1) -> None:
        for _ in range(n):
            if self._pos < len(self._text):
                if self._text[self._pos] == "\n":
                    self._line += 1
                self._pos += 1

    def _skip_inline_space(self) -> None:
        while self._peek() in (" ", "\t"):
            self._advance()

    def _skip_space_and_comments(self) -> None:
        while True:
            c = self._peek()
            if c in (" ", "\t", "\r", "\n"):
                self._advance()
            elif c == "#":
                while self._peek() not in ("\n", ""):
                    self._advance()
            else:
                return

    def _record(self, path: KeyPath, line: int) -> None:
        self._lines.setdefault(path, line)

    def _document(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_space_and_comments()
            c = self._peek()
            if c == "":
                return
            line = self._line
            if c == "[":
                aot = self._peek(1) == "["
                self._advance(2 if aot else 1)
                keys = self._key()
                self._advance(2 if aot else 1)
                table = self._resolve(keys[:-1]) + (keys[-1],)
                if aot:
                    index = self._aot_last.get(table, -1) + 1
                    self._aot_last[table] = index
                    self._record(table, line)
                    table = table + (index,)
                self._record(table, line)
            else:
                keys = self._key()
                path = table + keys
                self._record(path, line)
                self._advance()  # '='
                self._value(path)

    def _resolve(self, keys: tuple[str, ...]) -> KeyPath:
        resolved: KeyPath = ()
        for k in keys:
            resolved = resolved + (k,)
            if resolved in self._aot_last:
                resolved = resolved + (self._aot_last[resolved],)
        return resolved

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip_inline_space()
            c = self._peek()
            if c in ('"', "'"):
                parts.append(self._string())
            else:
                start = self._pos
                while self._peek() in _BARE and self._peek() != "":
                    self._advance()
                if self._pos == start:
                    raise ValueError("expected a key")
                parts.append(self._text[start : self._pos])
            self._skip_inline_space()
            if self._peek() == ".":
                self._advance()
                continue
            return tuple(parts)

    def _string(self) -> str:
        quote = self._peek()
        if self._text.startswith(quote * 3, self._pos):
            self._advance(3)
            end = self._text.find(quote * 3, self._pos)
            if end < 0:
                raise ValueError("unterminated string")
            while self._text.startswith(quote, end + 3):  # up to two quotes may close it
                end += 1
            value = self._text[self._pos : end]
            self._advance(end + 3 - self._pos)
            return value
        self._advance()
        out = []
        while True:
            c = self._peek()
            if c in ("", "\n"):
                raise ValueError("unterminated string")
            if c == "\\" and quote == '"':
                out.append(self._escape())
                continue
            self._advance()
            if c == quote:
                return "".join(out)
            out.append(c)

    def _escape(self) -> str:
        """The character a basic-string escape stands for (keys are looked up by their value)."""
        c = self._peek(1)
        digits = {"u": 4, "U": 8}.get(c, 0)
        if digits:
            code = self._text[self._pos + 2 : self._pos + 2 + digits]
            self._advance(2 + digits)
            return chr(int(code, 16))  # tomllib accepted it: a valid scalar value
        self._advance(2)
        return _UNESCAPES.get(c, c)

    def _value(self, path: KeyPath) -> None:
        self._skip_inline_space()
        c = self._peek()
        if c in ('"', "'"):
            self._string()
        elif c == "[":
            self._advance()
            index = 0
            while True:
                self._skip_space_and_comments()
                if self._peek() == "]":
                    self._advance()
                    return
                self._record(path + (index,), self._line)
                self._value(path + (index,))
                self._skip_space_and_comments()
                if self._peek() == ",":
                    self._advance()
                    index += 1
        elif c == "{":
            self._advance()
            while True:
                self._skip_inline_space()
                if self._peek() == "}":
                    self._advance()
                    return
                line = self._line
                keys = self._key()
                self._record(path + keys, line)
                self._advance()  # '='
                self._value(path + keys)
                self._skip_inline_space()
                if self._peek() == ",":
                    self._advance()
        else:
            while self._peek() not in ("", ",", "]", "}", "\n", "#"):
                self._advance()
