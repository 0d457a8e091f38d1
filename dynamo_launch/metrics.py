"""Prometheus metrics of the daemon: a text rendering of the status snapshot, and a tiny server.

::

    server = MetricsServer("127.0.0.1", 9400, lambda: render(snapshot(daemon)))
    await server.start()        # GET /metrics → text/plain; version=0.0.4

:func:`render` is pure (a snapshot in, exposition text out). States are one-hot gauges (one
series per state, 1 for the current one), the usual way to expose an enum to Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

__all__ = ["HEADER_TIMEOUT", "MAX_CONNECTIONS", "MAX_HEADERS", "MAX_LINE", "MetricsServer", "render"]

STATES = ("STOPPED", "WAITING", "STARTING", "READY", "RUNNING", "STOPPING", "BACKOFF", "FAILED", "UNKNOWN")
GANG_STATES = ("STOPPED", "STARTING", "RUNNING", "STOPPING", "BACKOFF", "FAILED")


def _labels(**kv: Any) -> str:
    def esc(v: Any) -> str:
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in kv.items()) + "}"


def render(snap: dict[str, Any]) -> str:
    """Prometheus text exposition (format 0.0.4) of a status snapshot."""
    cluster = snap["cluster"]
    out: list[str] = []

    def family(name: str, kind: str, help_: str, samples: list[tuple[dict[str, Any], float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{_labels(**labels)} {value:g}" for labels, value in samples)

    procs = snap["processes"]
    ident = [({"cluster": cluster, "host": p["host"], "process": p["name"]}, p) for p in procs]
    family("dynamo_launch_process_state", "gauge", "1 for the state the process is in.",
           [({**lab, "state": s}, float(p["state"] == s)) for lab, p in ident for s in STATES])
    family("dynamo_launch_process_restarts_total", "counter", "Restarts decided by the restart policy.",
           [(lab, p["restarts"]) for lab, p in ident])
    family("dynamo_launch_process_generation", "gauge", "Generation of the current (or last) copy.",
           [(lab, p["generation"]) for lab, p in ident])
    family("dynamo_launch_process_last_exit_code", "gauge", "Exit code of the last exit (absent: none, or a signal).",
           [(lab, p["last_exit"]["code"]) for lab, p in ident if p["last_exit"] and p["last_exit"]["code"] is not None])
    family("dynamo_launch_process_last_exit_signal", "gauge", "Signal that ended the last copy (absent: none).",
           [(lab, p["last_exit"]["signal"]) for lab, p in ident
            if p["last_exit"] and p["last_exit"]["signal"] is not None])
    family("dynamo_launch_probe_seconds", "gauge", "Duration of the last health probe.",
           [(lab, p["probe_seconds"]) for lab, p in ident if p.get("probe_seconds") is not None])
    family("dynamo_launch_process_uptime_seconds", "gauge", "Seconds since the current copy started.",
           [(lab, p["uptime"]) for lab, p in ident if p["uptime"] is not None])
    family("dynamo_launch_process_tree_processes", "gauge", "Processes in the copy's whole tree (its node's count).",
           [(lab, p["tree_procs"]) for lab, p in ident if p.get("tree_procs") is not None])
    family("dynamo_launch_process_memory_bytes", "gauge",
           "Memory of the copy's whole tree (cgroup memory.current, else summed RSS).",
           [(lab, p["memory_bytes"]) for lab, p in ident if p.get("memory_bytes") is not None])
    family("dynamo_launch_gang_state", "gauge", "1 for the state the gang is in.",
           [({"cluster": cluster, "gang": g["name"], "state": s}, float(g["state"] == s))
            for g in snap["gangs"] for s in GANG_STATES])
    family("dynamo_launch_gang_restarts_total", "counter", "Gang restarts decided by the restart policy.",
           [({"cluster": cluster, "gang": g["name"]}, g["restarts"]) for g in snap["gangs"]])
    family("dynamo_launch_host_up", "gauge", "1 while the host's agent answers over its connection.",
           [({"cluster": cluster, "host": h["name"]}, float(h["up"])) for h in snap["hosts"]])
    timings = snap.get("timings", {})
    family("dynamo_launch_up_seconds", "gauge", "Seconds from daemon start until every process was first ready.",
           [({"cluster": cluster}, timings["up_seconds"])] if timings.get("up_seconds") is not None else [])
    family("dynamo_launch_reload_seconds", "gauge", "Duration of the last reload.",
           [({"cluster": cluster}, timings["reload_seconds"])] if timings.get("reload_seconds") is not None else [])
    family("dynamo_launch_reloads_total", "counter", "Reloads applied.",
           [({"cluster": cluster}, timings.get("reloads", 0))])
    return "\n".join(out) + "\n"


MAX_LINE = 8 * 1024
"""Bytes in the request line or in one header line (414 / 431 beyond)."""
MAX_HEADERS = 32 * 1024
"""Bytes of all header lines together (431 beyond)."""
HEADER_TIMEOUT = 10.0
"""Seconds for the whole request head, however slowly it trickles in (408 after)."""
MAX_CONNECTIONS = 32
"""Connections served at once (503 beyond)."""


class _Refuse(Exception):
    """End the exchange with this status line."""


class MetricsServer:
    """Serves ``GET /metrics`` (plain HTTP/1.1, one response per connection).

    Whoever can reach the address may connect, so a request head is bounded: its line and each
    header to :data:`MAX_LINE` bytes (414, 431), all headers to :data:`MAX_HEADERS` (431), the
    whole head to :data:`HEADER_TIMEOUT` seconds however slowly it comes (408: no slowloris),
    and :data:`MAX_CONNECTIONS` are served at once (503 beyond). A request line that is not
    ``METHOD TARGET HTTP/x`` is 400, another method than GET/HEAD 405.
    """

    def __init__(self, host: str, port: int, body: Callable[[], str], *, header_timeout: float = HEADER_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS):
        self.host, self.port, self._body = host, port, body
        self._server: asyncio.base_events.Server | None = None
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.connections = 0

    async def start(self) -> None:
        """Bind and serve; the port is taken now (an error here stops `up` before it starts)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_LINE)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.connections > self.max_connections:
                raise _Refuse("503 Service Unavailable")
            try:
                method, target = await asyncio.wait_for(self._head(reader), self.header_timeout)
            except asyncio.TimeoutError:
                raise _Refuse("408 Request Timeout") from None
            head = method == "HEAD"
            if method not in ("GET", "HEAD"):
                raise _Refuse("405 Method Not Allowed")
            if target.split("?")[0] == "/metrics":
                status, ctype, body = "200 OK", "text/plain; version=0.0.4; charset=utf-8", self._body().encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain; charset=utf-8", b"only /metrics here\n"
            await self._reply(writer, status, ctype, b"" if head else body, len(body))
        except _Refuse as e:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                body = f"{e}\n".encode()
                await self._reply(writer, str(e), "text/plain; charset=utf-8", body, len(body))
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            self.connections -= 1
            writer.close()

    async def _head(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        """Method and target of the request; its headers are read (bounded) and dropped."""
        line = await self._line(reader, "414 URI Too Long")
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[0].isalpha():
            raise _Refuse("400 Bad Request")
        total = 0
        while True:
            header = await self._line(reader, "431 Request Header Fields Too Large")
            if header in (b"\r\n", b"\n", b""):
                return parts[0], parts[1]
            total += len(header)
            if total > MAX_HEADERS:
                raise _Refuse("431 Request Header Fields Too Large")

    @staticmethod
    async def _line(reader: asyncio.StreamReader, too_long: str) -> bytes:
        try:
            return await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):  # longer than the reader's limit
            raise _Refuse(too_long) from None

    async def _reply(self, writer: asyncio.StreamWriter, status: str, ctype: str, body: bytes, length: int) -> None:
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)
        await asyncio.wait_for(writer.drain(), self.header_timeout)  # a client that never reads is dropped
