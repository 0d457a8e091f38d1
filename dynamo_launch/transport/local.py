"""Local transport: the head node itself, through asyncio subprocesses (argv, never a shell).

What it starts (the node agent, and through it every process of a ``local = true`` head) gets
the same kind of environment a process on an SSH host gets from its login: :func:`base_env`,
the basics of a session (``PATH``, ``HOME``, locale…) taken from the daemon's environment, plus
what the call names — never the rest of the daemon's environment, which holds the secrets the
inventory refers to (``${VAR}``) and whatever else its operator or systemd set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import Mapping, Sequence

from ..errors import CommandTimeout, TransportError
from ..plan.spec import PlanHost
from .base import Channel, Completed, LineChannel, StderrTail, Transport, check_argv, check_env, decode_line

__all__ = ["BASE_ENV", "BASE_ENV_PREFIXES", "LocalTransport", "base_env"]

BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR")
"""Variables of the daemon's environment every local child gets (what sshd and a login give on an SSH host)."""
BASE_ENV_PREFIXES = ("LC_", "DYNAMO_AGENT_", "DYNAMO_LAUNCH_")
"""Prefixes kept too: the locale, and the agent's own settings (``DYNAMO_AGENT_CGROUP``…; see docs/internals.md)."""


def base_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The part of ``environ`` (default: this process's) that a local child inherits."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k in BASE_ENV or k.startswith(BASE_ENV_PREFIXES)}

_LINE_LIMIT = 64 * 1024 * 1024  # agent responses (`list`, `exec`) can be long lines


def _killpg(pid: int, sig: int) -> None:
    # Children run in their own session (start_new_session), so pgid == pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class _LocalChannel(LineChannel):
    """A local child process spoken to in lines."""

    GONE = (BrokenPipeError, ConnectionResetError, RuntimeError)
    NO_STATUS = "still running"

    def __init__(self, proc: asyncio.subprocess.Process, owner: "LocalTransport"):
        super().__init__(proc, owner, StderrTail())

    async def read_line(self) -> str | None:
        assert self._proc.stdout is not None
        try:
            data = await self._proc.stdout.readline()
        except ValueError as e:  # longer than the stream limit
            raise TransportError(f"{self._owner.describe()}: channel line too long: {e}", host=self._owner.host) from None
        return decode_line(data)

    async def close(self, grace: float = 2.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._owner._channels.discard(self)
        proc = self._proc
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 1.0)
            except asyncio.TimeoutError:
                _killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stderr_task, 1.0)


class LocalTransport(Transport):
    """Runs commands on this machine. ``connect`` is a no-op; ``lost`` is never set.

    Every child gets its own session (``setsid``): a terminal's Ctrl-C does not reach it, and
    a timeout kills its whole process group.
    """

    def __init__(self, host: PlanHost | None = None, *, name: str = "local", python: str | None = None):
        super().__init__(host.name if host else name, python or (host.python if host else sys.executable))
        self._closed = False
        self._channels: set[_LocalChannel] = set()

    @property
    def connected(self) -> bool:
        return not self._closed

    def describe(self) -> str:
        return f"{self.host} (local)"

    async def connect(self) -> None:
        self._closed = False

    async def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        argv = check_argv(argv)
        extra = check_env(env)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**base_env(), **extra},
                start_new_session=True,
            )
        except (FileNotFoundError, NotADirectoryError) as e:  # what a shell reports as 127
            return Completed(127, b"", f"{argv[0]}: {e.strerror}\n".encode())
        except PermissionError as e:
            return Completed(126, b"", f"{argv[0]}: {e.strerror}\n".encode())
        except OSError as e:
            raise TransportError(f"{self.describe()}: cannot run {argv[0]}: {e.strerror or e}", host=self.host) from None

        out, err = bytearray(), bytearray()

        async def pump(stream: asyncio.StreamReader | None, buf: bytearray) -> None:
            assert stream is not None
            while chunk := await stream.read(65536):
                buf += chunk

        async def feed() -> None:
            if input is None or proc.stdin is None:
                return
            try:
                proc.stdin.write(input)
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the command does not want (all of) its input: not our error
            finally:
                proc.stdin.close()

        tasks = [asyncio.create_task(pump(proc.stdout, out)), asyncio.create_task(pump(proc.stderr, err)),
                 asyncio.create_task(feed())]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks, proc.wait()), timeout)
        except asyncio.TimeoutError:
            _killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            await _settle(tasks)
            raise CommandTimeout(
                f"{self.describe()}: command timed out after {timeout:g}s and was killed: {argv[0]}",
                host=self.host, timeout=timeout or 0.0, stdout=bytes(out), stderr=bytes(err),
            ) from None
        except BaseException:  # cancelled: leave nothing behind
            _killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(BaseException):
                await asyncio.shield(proc.wait())
            for t in tasks:
                t.cancel()
            raise
        return Completed(proc.returncode, bytes(out), bytes(err))

    async def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Channel:
        argv = check_argv(argv)
        extra = check_env(env)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**base_env(), **extra},
                start_new_session=True,
                limit=_LINE_LIMIT,
            )
        except OSError as e:
            raise TransportError(f"{self.describe()}: cannot start {argv[0]}: {e.strerror or e}", host=self.host) from None
        channel = _LocalChannel(proc, self)
        self._channels.add(channel)
        return channel

    async def close(self) -> None:
        self._closed = True
        for channel in list(self._channels):
            await channel.close()


async def _settle(tasks: list[asyncio.Task], wait: float = 0.5) -> None:
    """Give output pumps a moment to read what is left, then cancel them."""
    _, pending = await asyncio.wait(tasks, timeout=wait)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)
