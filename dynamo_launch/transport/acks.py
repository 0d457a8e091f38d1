"""The TCP connection under an SSH connection, acknowledging at once until its first session is open.

OpenSSH's sshd turns Nagle's algorithm off (``TCP_NODELAY``) only when a session starts. Until
then, a small packet it writes waits for the acknowledgement of the one before. Right after
authentication it writes two (a debug message, its host keys) and, a moment later, the answer to
the client's first channel open. The client's kernel, seeing a request/response exchange, delays
its acknowledgement (up to ~40 ms) hoping to send it with data that never comes, so the channel
open waits out that timer: measured 45 ms of the 47 ms a first channel took on the test bed,
2 ms with the acknowledgements sent at once. Every connection pays it once; at bring-up it sits on
the critical path of every host.

asyncssh lets a ``tunnel`` object open the connection it runs over (``create_connection``);
:class:`AckingConnector` opens a plain TCP connection and sets ``TCP_QUICKACK`` after each read,
which sends the pending acknowledgement now, until :meth:`AckingConnector.settle` (the first
session is open, sshd has turned Nagle off). Nothing else about the connection changes: the same
socket options, the same bytes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["AckingConnector"]

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only: elsewhere nothing changes


class AckingConnector:
    """asyncssh's ``tunnel=``: a direct TCP connection whose reads are acknowledged at once
    until :meth:`settle`. One per connection attempt."""

    def __init__(self) -> None:
        self.quick = _QUICKACK is not None
        self.acks = 0  # reads followed by an immediate acknowledgement (tests)

    async def create_connection(self, session_factory: Callable[[], asyncio.Protocol], host: str,
                                port: int) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        """Connect to ``host:port``; the transport and asyncssh's own protocol (not the wrapper)."""
        loop = asyncio.get_running_loop()
        transport, wrapper = await loop.create_connection(lambda: _Acking(session_factory(), self), host, port)
        return transport, wrapper.inner

    def settle(self) -> None:
        """Stop forcing acknowledgements: the kernel's own timing serves from now on."""
        self.quick = False


class _Acking(asyncio.Protocol):
    """Passes every call on to asyncssh's protocol, then acknowledges what was read."""

    def __init__(self, inner: Any, owner: AckingConnector):
        self.inner, self._owner = inner, owner
        self._sock: socket.socket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sock = transport.get_extra_info("socket")
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)
        if self._owner.quick and self._sock is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                self._owner.acks += 1
            except OSError:  # closed under us, or refused: only the speed-up is lost
                self._owner.quick = False

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
