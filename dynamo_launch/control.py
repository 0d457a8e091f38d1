"""The daemon's control socket: a Unix socket, owner-only, one JSON line each way.

``status``, ``restart`` and ``logs`` talk to the running daemon through it.
Sockets live in one runtime directory, one per cluster, so ``dynamo-launch
status`` can find the daemon without being told which inventory it runs.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .agent import Unsafe, private_dir
from .errors import ControlError, DynamoLaunchError, NoDaemon, UnsafePath

if TYPE_CHECKING:  # asyncio only for the daemon's server: the CLI's requests are plain blocking sockets
    import asyncio

__all__ = ["ControlServer", "find_socket", "remove_stale", "request", "runtime_dir", "socket_path"]

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def runtime_dir() -> str:
    """``/run/dynamo-launch`` for root, ``$XDG_RUNTIME_DIR/dynamo-launch`` (or /tmp) otherwise."""
    override = os.environ.get("DYNAMO_LAUNCH_RUNTIME_DIR")
    if override:
        return override
    if os.geteuid() == 0:
        return "/run/dynamo-launch"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/dynamo-launch-{os.geteuid()}"
    return os.path.join(base, "dynamo-launch")


def private_socket_dir(path: str) -> None:
    """Make or check the directory of control sockets ``path``: ours, 0700 when made, not
    writable by others, nobody else's above it (the ``/tmp/dynamo-launch-UID`` fallback could have
    been made first by another user, who would then answer ``status``). Raises :class:`UnsafePath`."""
    try:
        private_dir(path, 0o700, "control socket directory")
    except Unsafe as e:
        raise UnsafePath(str(e)) from None


def socket_path(cluster: str) -> str:
    """Where the daemon of ``cluster`` listens."""
    return os.path.join(runtime_dir(), f"{cluster}.sock")


def find_socket(cluster: str | None = None) -> str:
    """The socket of ``cluster``, or of the only running cluster; :class:`NoDaemon` otherwise.

    A socket nobody answers on (its daemon died) does not count: when it is ours it is removed
    on the way (:func:`remove_stale`)."""
    if os.path.lexists(runtime_dir()):
        private_socket_dir(runtime_dir())
    if cluster:
        path = socket_path(cluster)
        if not os.path.exists(path):
            raise NoDaemon(f"no dynamo-launch daemon is running for cluster {cluster!r} (no {path})")
        if remove_stale(path):
            raise NoDaemon(f"no dynamo-launch daemon is running for cluster {cluster!r} "
                           f"(removed the stale socket {path} of one that died)")
        return path
    found = [p for p in sorted(glob.glob(os.path.join(runtime_dir(), "*.sock"))) if not remove_stale(p)]
    if not found:
        raise NoDaemon(f"no dynamo-launch daemon is running (no live control socket in {runtime_dir()})")
    if len(found) > 1:
        names = ", ".join(os.path.basename(p)[: -len(".sock")] for p in found)
        raise ControlError(f"several clusters are running ({names}); name one: --cluster NAME")
    return found[0]


def remove_stale(path: str) -> bool:
    """Remove ``path`` when it is a control socket nobody listens on (a daemon that died without
    cleaning up) and it belongs to this user; True when it was removed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        return False  # not ours to remove
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return False  # a daemon answers: not stale
    except ConnectionRefusedError:
        pass
    except OSError:
        return False
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


def request(path: str, op: str, /, *, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """Send one request and return the daemon's result (blocking; for the CLI).

    ``path`` and ``op`` are positional-only, so a request may carry arguments of those names.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoDaemon(f"no dynamo-launch daemon is listening on {path} (stale socket?)") from None
        sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        with sock.makefile("rb") as f:
            line = f.readline()
    except TimeoutError:
        raise ControlError(f"the daemon did not answer {op!r} within {timeout:g}s ({path})") from None
    except OSError as e:
        raise ControlError(f"control socket {path}: {e.strerror or e}") from None
    finally:
        sock.close()
    if not line:
        raise ControlError(f"the daemon closed the connection without answering {op!r}")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply.get("result", {})


class ControlServer:
    """Serves requests on a Unix socket created with mode 0600."""

    def __init__(self, path: str, handler: Handler):
        self.path = path
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        """Bind (replacing a stale socket) and start serving."""
        private_socket_dir(os.path.dirname(self.path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        import asyncio

        old = os.umask(0o177)  # the socket is born owner-only: no window where others can connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        finally:
            os.umask(old)

    async def close(self) -> None:
        """Stop serving and remove the socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import asyncio

        try:
            line = await reader.readline()
            try:
                req = json.loads(line)
                result = await self._handler(req)
                reply: dict[str, Any] = {"ok": True, "result": result}
            except DynamoLaunchError as e:
                reply = {"ok": False, "error": str(e)}
            except (ValueError, KeyError, TypeError) as e:
                reply = {"ok": False, "error": f"bad request: {e}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
