"""Typed, located reading of raw TOML tables.

The loader walks the parsed document with a :class:`Reader`, which checks each
key's type and range, reports unknown keys (typos) and records every problem
with its line instead of stopping at the first one.
"""

from __future__ import annotations

import enum
import re
from typing import Any, TypeVar

from .errors import Problem
from .printable import clean, has_control
from .tomlpos import KeyPath, LineMap, format_path

__all__ = ["MISSING", "Reader"]

E = TypeVar("E", bound=enum.Enum)

MISSING: Any = object()
"""Sentinel default: the key is required."""

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


class Reader:
    """Collects :class:`Problem` s while converting raw values to typed ones."""

    def __init__(self, lines: LineMap, file: str):
        self.lines = lines
        self.file = file
        self.problems: list[Problem] = []

    def problem(self, path: KeyPath, message: str) -> None:
        """Record one problem at ``path``."""
        self.problems.append(Problem(self.lines.line(path), format_path(path), message, self.file))

    def table(self, raw: Any, path: KeyPath, allowed: set[str] | None) -> dict[str, Any]:
        """``raw`` as a table; unknown keys are reported (``allowed=None``: any)."""
        if not isinstance(raw, dict):
            self.problem(path, f"must be a table, got {_describe(raw)}")
            return {}
        if allowed is not None:
            for key in raw:
                if key not in allowed:
                    hint = _closest(key, allowed)
                    self.problem(
                        path + (key,),
                        f"unknown key{f' (did you mean {hint!r}?)' if hint else ''}",
                    )
        return raw

    def tables(self, raw: Any, path: KeyPath) -> list[dict[str, Any]]:
        """An array of tables (``[[x]]``); a single table is accepted as one element."""
        if raw is None:
            return []
        if isinstance(raw, dict):
            self.problem(path, "must be an array of tables: write [[" + format_path(path) + "]]")
            return []
        if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
            self.problem(path, f"must be an array of tables, got {_describe(raw)}")
            return []
        return raw

    def get(
        self,
        raw: dict[str, Any],
        path: KeyPath,
        key: str,
        kind: type,
        default: Any = MISSING,
        *,
        choices: tuple[str, ...] = (),
        minimum: float | None = None,
        maximum: float | None = None,
        pattern: str | None = None,
    ) -> Any:
        """Read ``raw[key]`` as ``kind``; report and return ``default`` when wrong."""
        where = path + (key,)
        if key not in raw:
            if default is MISSING:
                self.problem(where, "missing (required)")
                return _fallback(kind)
            return default
        value = raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem(where, f"must be {_TYPE_NAMES.get(kind, kind.__name__)}, got {_describe(value)}")
            return default if default is not MISSING else _fallback(kind)
        if kind is str and default is MISSING and not value:
            self.problem(where, "must not be empty")
            return value
        if kind is str and not self.printable(where, value):
            return value
        if choices and value not in choices:
            hint = _closest(value, set(choices)) if isinstance(value, str) else None
            self.problem(where, f"must be one of {', '.join(choices)}; got {value!r}"
                                + (f" (did you mean {hint!r}?)" if hint else ""))
            return default if default is not MISSING else choices[0]
        if minimum is not None and value < minimum:
            self.problem(where, f"must be at least {_num(minimum)}, got {_num(value)}")
        if maximum is not None and value > maximum:
            self.problem(where, f"must be at most {_num(maximum)}, got {_num(value)}")
        if pattern is not None and not re.fullmatch(pattern, value):
            self.problem(where, f"{value!r} is not a valid {key} ({_PATTERN_HINT.get(pattern, pattern)})")
        return value

    def printable(self, where: KeyPath, value: str) -> bool:
        """False (and a problem) when ``value`` holds a control character: names, paths, commands and
        arguments end up in pasteable plans, terminals and command lines, where a newline or an escape
        sequence would do something else than what the file shows."""
        if not has_control(value):
            return True
        at = next(i for i, ch in enumerate(value) if has_control(ch))
        self.problem(where, f"contains a control character ({clean(value[at])} at position {at}): names, paths, "
                            f"commands and arguments must be printable text (multi-line text goes in a file: "
                            f"give its path)")
        return False

    def choice(self, raw: dict[str, Any], path: KeyPath, key: str, enum: type[E], default: Any = MISSING) -> E:
        """One of an Enum's values; a wrong or missing value yields ``default`` (or the first member)."""
        values = tuple(m.value for m in enum)  # type: ignore[attr-defined]
        fallback = default.value if default is not MISSING else values[0]
        value = self.get(raw, path, key, str, default.value if default is not MISSING else MISSING, choices=values)
        return enum(value if value in values else fallback)

    def port(self, raw: dict[str, Any], path: KeyPath, key: str, default: Any = MISSING) -> Any:
        """A TCP port number 1..65535."""
        return self.get(raw, path, key, int, default, minimum=1, maximum=65535)

    def strings(self, raw: dict[str, Any], path: KeyPath, key: str, default: Any = MISSING) -> tuple[str, ...]:
        """A list of strings, as a tuple."""
        where = path + (key,)
        if key not in raw:
            if default is MISSING:
                self.problem(where, "missing (required)")
                return ()
            return default
        value = raw[key]
        if not isinstance(value, list):
            self.problem(where, f"must be a list of strings, got {_describe(value)}")
            return ()
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                self.printable(where + (i,), item)
                out.append(item)
            else:
                self.problem(where + (i,), f"must be a string, got {_describe(item)}")
        return tuple(out)


NAME = r"[a-z0-9][a-z0-9_-]{0,62}"
HOSTNAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PATTERN_HINT = {
    NAME: "lowercase letters, digits, '-' and '_', starting with a letter or digit",
    HOSTNAME: "letters, digits, '.', '-' and '_'",
    ENV_NAME: "letters, digits and '_', not starting with a digit",
}


def _fallback(kind: type) -> Any:
    return {str: "", int: 0, float: 0.0, bool: False}.get(kind)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"string {value!r}" if len(value) < 40 else "a string"
    return f"{type(value).__name__} {value!r}"


def _closest(key: str, allowed: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
    return match[0] if match else None
