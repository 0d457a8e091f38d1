"""The systemd notify protocol (sd_notify(3)), stdlib only.

Under ``systemd/dynamo-launch@.service`` (``Type=notify``, ``WatchdogSec=30``) the daemon tells
systemd how it is doing. Outside systemd (``$NOTIFY_SOCKET`` unset) every call is a no-op, so the
daemon calls them unconditionally. No call ever raises: each returns True when systemd got the
message, False otherwise (not under systemd, or the send failed).

Wiring in ``up`` (one :class:`Notifier` per daemon)::

    notifier = Notifier()                  # first thing, before the agent or any child starts:
                                           # it takes NOTIFY_SOCKET/WATCHDOG_* out of os.environ
    notifier.status("preflight: 4 hosts")  # any time: the line `systemctl status` shows
    notifier.ready("supervising 7 processes, 3 ready")  # once the control socket listens
    interval = notifier.watchdog_interval()   # seconds (half of WatchdogSec=), or None
    # if interval: a task on the event loop does `notifier.watchdog(); await asyncio.sleep(interval)`
    #              forever, so a stuck loop (not just a dead process) gets the daemon restarted
    notifier.reloading(); ...reload...; notifier.ready()   # SIGHUP (ExecReload=)
    notifier.stopping("stopping 7 processes")              # SIGTERM, before the stop begins
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping, MutableMapping

__all__ = ["Notifier", "watchdog_interval"]

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# A send must never stall the event loop for long; systemd drains its socket promptly, so this
# bound is only hit when the manager is wedged, and then a lost message is the lesser harm.
_SEND_TIMEOUT = 1.0


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings that systemd asks for, or None when it asks for none.

    Half of ``$WATCHDOG_USEC`` (as sd_watchdog_enabled(3) recommends), and only when
    ``$WATCHDOG_PID`` is unset or names ``pid`` (default: this process) — the variables may have
    been inherited from a parent that is the one being watched.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2_000_000


def _address(value: str) -> str | None:
    """The socket address of ``$NOTIFY_SOCKET``: a path, or ``@name`` for an abstract socket."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # unset, relative or a transport we do not speak (vsock:): behave as outside systemd


class Notifier:
    """Sends sd_notify messages to systemd over one datagram socket, kept open.

    ``environ`` (default ``os.environ``) is read once, here. With ``unset_environment`` (the
    default) the variables are then removed from it, so that processes the daemon starts — the
    agent, and through it the workers on the head — do not inherit systemd's socket and watchdog.
    """

    def __init__(self, environ: MutableMapping[str, str] | None = None, *, unset_environment: bool = True):
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog = watchdog_interval(env)
        if unset_environment:
            for name in _VARIABLES:
                env.pop(name, None)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`watchdog` calls systemd expects, or None (no watchdog)."""
        return self._watchdog

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments as one message; True when it was delivered."""
        if self.address is None or not assignments:
            return False
        data = "\n".join(assignments).encode("utf-8", errors="replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.settimeout(_SEND_TIMEOUT)
                self._sock.sendto(data, self.address)
                return True
            except OSError:
                # A fresh socket next time: this one may be what is broken.
                self._close_locked()
                return False

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up (or a reload) is complete."""
        return self.send("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        """``STATUS=text``: one line shown by ``systemctl status``."""
        return self.send(*self._status(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the daemon is alive; due every :meth:`watchdog_interval` seconds."""
        return self.send("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``: a reload began; send :meth:`ready` when done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *self._status(status))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the daemon is stopping the cluster and will exit."""
        return self.send("STOPPING=1", *self._status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: ask for ``seconds`` more before a start or stop times out."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def close(self) -> None:
        """Close the socket (a later call opens a new one)."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        # A newline would end the assignment and start a bogus one.
        return () if text is None else ("STATUS=" + " ".join(text.splitlines()),)
