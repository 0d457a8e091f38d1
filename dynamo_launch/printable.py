"""Text that came from outside, made safe to print on a terminal or paste into a shell (pure).

Anything the launcher prints may hold what an inventory, a node, etcd or NATS handed it. A
newline there can start a new line of a pasteable plan (``# comment\\nrm -rf ~``) and an escape
sequence can rewrite the terminal (clear it, move the cursor, set its title, OSC 52 to the
clipboard). :func:`clean` shows every such character as a visible escape instead;
:func:`shell_quote` quotes a word so the pasted command holds exactly it.

::

    clean("web\\x1b[2J")          -> 'web\\\\x1b[2J'   (prints as web\\x1b[2J)
    shell_quote("a b")            -> "'a b'"
    shell_quote("line1\\nline2")   -> "$'line1\\\\nline2'"
"""

from __future__ import annotations

import re
import shlex

__all__ = ["clean", "has_control", "shell_quote"]

# C0 (tab and newline included), DEL, C1 (CSI 0x9b among them); the Unicode line and paragraph
# separators some terminals break lines at; bidirectional overrides and isolates, which make a
# line read differently from what it holds ("Trojan Source").
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def has_control(text: str) -> bool:
    """True when ``text`` holds a character :func:`clean` would escape."""
    return _CONTROL.search(text) is not None


def _escape_char(ch: str) -> str:
    # \u for everything past ASCII: bash's $'\x9b' is the byte 0x9b, $'\u009b' the character.
    code = ord(ch)
    return _NAMED.get(ch) or (f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")


def _escape(m: re.Match[str]) -> str:
    return _escape_char(m.group())


def clean(value: object) -> str:
    """``value`` as text on one line, each control character shown as an escape (``\\x1b``, ``\\n``)."""
    text = value if isinstance(value, str) else str(value)
    return _CONTROL.sub(_escape, text)


def _ansi_c(text: str) -> str:
    out = []
    for ch in text:
        if ch in ("\\", "'"):
            out.append("\\" + ch)
        elif _CONTROL.fullmatch(ch):
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "$'" + "".join(out) + "'"


def shell_quote(word: str) -> str:
    """``word`` quoted for a shell, on one line and free of raw control characters.

    Plain words get POSIX single quotes (:func:`shlex.quote`); a word with a control character
    gets ANSI-C quoting (``$'...'``: bash, zsh, ksh, busybox sh and POSIX.1-2024 sh), which
    reproduces it exactly without printing it raw.
    """
    return _ansi_c(word) if has_control(word) else shlex.quote(word)
