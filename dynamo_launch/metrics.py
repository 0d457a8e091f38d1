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

__all__ = ["MetricsServer", "render"]

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


class MetricsServer:
    """Serves ``GET /metrics`` (plain HTTP/1.1, one response per connection)."""

    def __init__(self, host: str, port: int, body: Callable[[], str]):
        self.host, self.port, self._body = host, port, body
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        """Bind and serve; the port is taken now (an error here stops `up` before it starts)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass  # headers: not needed
            parts = request.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
                status, ctype, body = "200 OK", "text/plain; version=0.0.4; charset=utf-8", self._body().encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain; charset=utf-8", b"only /metrics here\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (OSError, asyncio.TimeoutError, UnicodeError):
            pass
        finally:
            writer.close()
