"""The transport interface: commands and long-lived channels on one host.

Every command is an argv list, never a shell string. A local transport hands argv straight
to ``exec``. Over SSH there is no way around a shell: the server runs the *user's* shell as
``$SHELL -c <command string>`` (not a login shell: no profile is read). So the SSH transport
turns argv into that one string with :func:`remote_command` — ``shlex.join`` applied exactly
once, which a POSIX shell (sh, dash, bash, zsh) splits back into the very same argv. Nothing
user-provided is ever pasted into a command string any other way. Accounts whose shell is not
POSIX (csh, fish) are not supported.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import re
import shlex
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..errors import ChannelClosed

__all__ = ["Channel", "Completed", "LineChannel", "Transport", "decode_line", "remote_command"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

def check_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` as a list of str; raises ValueError for an empty or non-string argv."""
    if isinstance(argv, (str, bytes)) or not argv:
        raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
    out = list(argv)
    for a in out:
        if not isinstance(a, str):
            raise ValueError(f"argv items must be str, got {a!r}")
        if "\0" in a:
            raise ValueError(f"argv item contains a NUL byte: {a!r}")
    return out


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """``env`` as a dict; raises ValueError for names a shell or ``env`` could misread."""
    out = dict(env or {})
    for k, v in out.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise ValueError(f"invalid environment variable name {k!r}")
        if not isinstance(v, str) or "\0" in v:
            raise ValueError(f"environment variable {k}: value must be a str without NUL bytes")
    return out


def remote_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The one command string for a remote ``$SHELL -c``: ``shlex.join`` of argv, exactly once.

    ``env`` is applied through ``env NAME=VALUE… argv`` rather than SSH "env" requests, which
    sshd refuses unless its AcceptEnv allows the names.
    """
    argv = check_argv(argv)
    env = check_env(env)
    if env:
        if "=" in argv[0]:  # `env` would take it for another assignment
            raise ValueError(f"argv[0] must not contain '=' when env is given: {argv[0]!r}")
        argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
    return shlex.join(argv)


@dataclass(frozen=True)
class Completed:
    """The outcome of :meth:`Transport.run`.

    ``code`` is the exit status; ``-N`` when the process was killed by signal N (as in
    :mod:`subprocess`); ``None`` when no exit status was reported at all.
    """

    code: int | None
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.code == 0


class Channel(abc.ABC):
    """A long-lived process on a host, spoken to in lines over its stdin and stdout.

    Its stderr is drained in the background (so it can never block the process) and the last
    lines are kept for error messages (:meth:`stderr_tail`).
    """

    @property
    @abc.abstractmethod
    def returncode(self) -> int | None:
        """Exit status once the process has ended (``-N`` for signal N), else None."""

    @abc.abstractmethod
    async def write_line(self, line: str) -> None:
        """Send ``line`` plus a newline; raises ChannelClosed when the process is gone."""

    @abc.abstractmethod
    async def read_line(self) -> str | None:
        """The next line of stdout without its newline; None at end of file."""

    @abc.abstractmethod
    async def close(self, grace: float = 2.0) -> None:
        """Close stdin, give the process ``grace`` seconds to exit, then kill it. Idempotent."""

    @abc.abstractmethod
    def stderr_tail(self) -> str:
        """The last lines the process wrote to stderr, joined with `` | `` (for messages)."""


class LineChannel(Channel):
    """What the local and SSH channels share: a process object with ``stdin``/``stdout``/
    ``returncode``, its stderr tail, and how a vanished channel is reported.

    Subclasses name the exceptions that mean "the channel is gone" (``GONE``) and how a
    missing exit status reads (``NO_STATUS``).
    """

    GONE: tuple[type[BaseException], ...] = ()
    NO_STATUS = "no exit status"

    def __init__(self, proc, owner: "Transport", tail: "StderrTail"):
        self._proc = proc
        self._owner = owner
        self._tail = tail
        self._stderr_task = asyncio.create_task(tail.drain(proc.stderr.readline))
        self._closed = False

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def stderr_tail(self) -> str:
        return self._tail.text()

    def _gone(self, what: str) -> ChannelClosed:
        code = self._proc.returncode
        status = f"exit status {code}" if code is not None else self.NO_STATUS
        tail = self._tail.text()
        return ChannelClosed(
            f"{self._owner.describe()}: channel closed ({what}; {status})" + (f": {tail}" if tail else ""),
            host=self._owner.host,
        )

    async def write_line(self, line: str) -> None:
        if "\n" in line:
            raise ValueError("a line must not contain a newline")
        if self._closed:
            raise self._gone("closed by us")
        try:
            self._proc.stdin.write(line.encode() + b"\n")
            await self._proc.stdin.drain()
        except self.GONE as e:
            raise self._gone(f"write failed: {self._why(e)}") from None

    @staticmethod
    def _why(e: BaseException) -> str:
        """One line for an exception in ``GONE``."""
        return str(e) or type(e).__name__


def decode_line(data: bytes) -> str | None:
    """A line read from a channel without its newline; None at end of file."""
    if not data:
        return None
    return data[:-1].decode("utf-8", "replace") if data.endswith(b"\n") else data.decode("utf-8", "replace")


class Transport(abc.ABC):
    """How the daemon acts on one host. Implementations: local subprocesses and SSH.

    ``lost`` is set when the connection to the host is lost (keepalive failed, peer closed);
    a later successful :meth:`connect` clears it. :meth:`run` and :meth:`start` connect on
    first use.
    """

    def __init__(self, host: str, python: str):
        self.host = host
        self.python = python
        self.lost = asyncio.Event()

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True while a usable connection exists."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The host for messages, e.g. ``node1 (root@10.0.0.2:22)``."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect now (a no-op when already connected)."""

    @abc.abstractmethod
    async def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        """Run ``argv`` to completion, feeding it ``input`` (stdin is empty otherwise).

        ``env`` is added to the host's environment. A command that outlives ``timeout``
        seconds is killed and raises :class:`~dynamo_launch.errors.CommandTimeout`. A missing
        program is not an exception: it completes with code 127 (126: not executable).
        """

    @abc.abstractmethod
    async def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Channel:
        """Start ``argv`` as a long-lived process and return its :class:`Channel`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every channel and the connection. Idempotent; does not set ``lost``."""

    async def abort(self) -> None:
        """Drop the connection at once, discarding whatever was written but not yet sent: a
        request queued behind a partition must never reach the host late. Does not set ``lost``."""
        await self.close()

    async def __aenter__(self) -> "Transport":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class StderrTail:
    """The last ``keep`` lines of a stream, filled by :meth:`drain` (a background task)."""

    def __init__(self, keep: int = 20, pid_marker: str | None = None):
        self._lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._marker = pid_marker
        #: the pid announced by a ``<pid_marker><pid>`` line (SSH channels), else None
        self.pid: int | None = None

    async def drain(self, readline) -> None:
        """Read lines with ``readline()`` (bytes, empty at EOF) until EOF or an error."""
        try:
            while True:
                line = await readline()
                if not line:
                    return
                text = line.decode("utf-8", "replace").rstrip()
                if self._marker and self.pid is None and text.startswith(self._marker):
                    with contextlib.suppress(ValueError):
                        self.pid = int(text[len(self._marker):])
                        continue
                if text:
                    self._lines.append(text[:500])
        except Exception:  # the channel went away: nothing more to keep
            return

    def text(self) -> str:
        """The kept lines joined with `` | ``."""
        return " | ".join(self._lines)
