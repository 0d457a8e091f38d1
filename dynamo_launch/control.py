"""The daemon's control socket: a Unix socket, owner-only, one JSON line each way.

``status``, ``restart`` and ``logs`` talk to the running daemon through it.
Sockets live in one runtime directory, one per cluster, so ``dynamo-launch
status`` can find the daemon without being told which inventory it runs.

The server trusts no request: a line longer than :data:`MAX_REQUEST` bytes, one that is not
UTF-8 JSON, not an object, nested too deeply, or whose ``op`` or arguments are wrong gets an
error reply (``{"ok": false, "error": "bad request: ..."}``) and never a traceback; a client
that sends nothing for :data:`IDLE_TIMEOUT` seconds is disconnected, and beyond
:data:`MAX_CONNECTIONS` at once a new one is answered "busy" and closed at once.
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
from .errors import BadRequest, ControlError, DynamoLaunchError, NoDaemon, UnsafePath
from .printable import clean

if TYPE_CHECKING:  # asyncio only for the daemon's server: the CLI's requests are plain blocking sockets
    import asyncio

__all__ = ["IDLE_TIMEOUT", "MAX_CONNECTIONS", "MAX_REQUEST", "ControlServer", "find_socket", "parse_request",
           "remove_stale", "request", "runtime_dir", "socket_path"]

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

MAX_REQUEST = 64 * 1024
"""Bytes in one request line (the largest real request, a reload's path, is far below)."""
IDLE_TIMEOUT = 10.0
"""Seconds a client may take to send its request line."""
MAX_CONNECTIONS = 64
"""Connections served at once; each holds one file descriptor of the daemon."""
_MAX_DEPTH = 32  # nesting of a request's JSON (real ones have 1)


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
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError(f"the answer on {path} is not a daemon's (not a JSON object)")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "unknown error")))
    result = reply.get("result", {})
    if not isinstance(result, dict):
        raise ControlError(f"the answer on {path} is not a daemon's (its result is not an object)")
    return result


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line as a JSON object with a string ``op``; :class:`BadRequest` otherwise."""
    if len(line) > MAX_REQUEST:
        raise BadRequest(f"request longer than {MAX_REQUEST} bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request is not UTF-8") from None
    if _depth(text) > _MAX_DEPTH:
        raise BadRequest(f"request nested deeper than {_MAX_DEPTH} levels")
    try:
        req = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"request is not JSON ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(req, dict):
        raise BadRequest(f"a request is a JSON object like {{\"op\": \"status\"}}, got {type(req).__name__}")
    if not isinstance(req.get("op"), str):
        raise BadRequest("a request needs \"op\": a string")
    return req


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(text: str) -> int:
    """The deepest nesting of brackets outside strings (json.loads would recurse that deep)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


class ControlServer:
    """Serves requests on a Unix socket created with mode 0600.

    ``on_error(message)`` hears, as one line, what went wrong with a request that is not the
    client's fault (a bug answered as ``internal error``); nothing here logs a traceback.
    """

    def __init__(self, path: str, handler: Handler, *, idle_timeout: float = IDLE_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, on_error: Callable[[str], None] | None = None):
        self.path = path
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._on_error = on_error
        self.connections = 0

    async def start(self) -> None:
        """Bind (replacing a stale socket) and start serving."""
        private_socket_dir(os.path.dirname(self.path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        import asyncio

        old = os.umask(0o177)  # the socket is born owner-only: no window where others can connect
        try:
            # limit: readline() stops at one byte past the largest request instead of buffering a flood
            self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_REQUEST + 1)
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

        self.connections += 1
        try:
            if self.connections > self.max_connections:
                reply: dict[str, Any] = {"ok": False, "error": f"busy: {self.max_connections} connections are open; "
                                                                "try again"}
            else:
                reply = await self._answer(reader)
            writer.write(json.dumps(reply).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), self.idle_timeout)  # a client that never reads is dropped too
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            self.connections -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        import asyncio

        try:
            line = await asyncio.wait_for(reader.readline(), self.idle_timeout)
        except asyncio.TimeoutError:
            return {"ok": False, "error": f"bad request: nothing received within {self.idle_timeout:g}s"}
        except (ValueError, asyncio.LimitOverrunError):  # the line outgrew the reader's limit
            return {"ok": False, "error": f"bad request: request longer than {MAX_REQUEST} bytes"}
        except asyncio.IncompleteReadError:
            return {"ok": False, "error": "bad request: connection closed mid-request"}
        try:
            result = await self._handler(parse_request(line))
            return {"ok": True, "result": result}
        except BadRequest as e:
            return {"ok": False, "error": f"bad request: {e}"}
        except DynamoLaunchError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a bug: the client gets one line, the daemon carries on
            message = clean(f"{type(e).__name__}: {e}")[:300]
            if self._on_error is not None:
                self._on_error(message)
            return {"ok": False, "error": f"internal error: {message}"}
