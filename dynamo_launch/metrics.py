"""Prometheus metrics of the daemon: a prometheus-client collector over the status snapshot, and a
small hardened server for it.

::

    reg = registry(lambda: snapshot(daemon), dynamo_version="1.6.1")
    server = MetricsServer("127.0.0.1", 9400, reg)
    await server.start()        # GET/HEAD /metrics → text 0.0.4, or OpenMetrics when asked; gzip when asked

:class:`SnapshotCollector` keeps no state: every scrape takes a fresh snapshot and builds the
families from it. States are one-hot gauges (one series per state, 1 for the current one), the
usual way to expose an enum to Prometheus. Only the daemon imports this module (prometheus-client
costs the CLI's other commands nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import platform
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted

from . import __version__
from .supervisor.gang import GangState
from .supervisor.process import State

__all__ = ["HEADER_TIMEOUT", "MAX_CONNECTIONS", "MAX_HEADERS", "MAX_LINE", "MetricsServer", "SnapshotCollector",
           "exposition", "registry"]

STATES = tuple(s.name for s in State)
GANG_STATES = tuple(s.name for s in GangState)
PROCESS = ("cluster", "host", "process")


class SnapshotCollector:
    """The daemon's families, built at scrape time from ``snapshot()`` (the status snapshot).

    Counters are named with ``_total`` (the sample name in either format); OpenMetrics names the
    family without it (``# TYPE dynamo_launch_reloads counter``), the 0.0.4 text with it.
    """

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]], *, dynamo_version: str = ""):
        self._snapshot = snapshot
        self._build = {"version": __version__, "python_version": platform.python_version(),
                       "dynamo_version": dynamo_version}

    def describe(self) -> Iterator[Metric]:
        """The families of an empty snapshot: their names let ``?name[]=`` pick them (no snapshot taken)."""
        return self._families(_EMPTY)

    def collect(self) -> Iterator[Metric]:
        """Every family with its samples, from a snapshot taken now."""
        return self._families(self._snapshot())

    def _families(self, snap: Mapping[str, Any]) -> Iterator[Metric]:
        cluster = snap["cluster"]
        procs = [([cluster, p["host"], p["name"]], p) for p in snap["processes"]]
        timings = snap.get("timings", {})

        build = InfoMetricFamily("dynamo_launch_build", "The daemon's version, its Python's, and the Dynamo release "
                                 "its plan is rendered for.", labels=["cluster"])
        build.add_metric([cluster], self._build)
        yield build
        state = GaugeMetricFamily("dynamo_launch_process_state", "1 for the state the process is in.",
                                  labels=[*PROCESS, "state"])
        for lab, p in procs:
            for s in STATES:
                state.add_metric([*lab, s], float(p["state"] == s))
        yield state
        yield _family(CounterMetricFamily, "dynamo_launch_process_restarts_total",
                      "Restarts decided by the restart policy.", PROCESS,
                      [(lab, p["restarts"]) for lab, p in procs])
        yield _family(GaugeMetricFamily, "dynamo_launch_process_generation",
                      "Generation of the current (or last) copy.", PROCESS,
                      [(lab, p["generation"]) for lab, p in procs])
        exits = [(lab, p["last_exit"]) for lab, p in procs if p["last_exit"]]
        yield _family(GaugeMetricFamily, "dynamo_launch_process_last_exit_code",
                      "Exit code of the last exit (absent: none, or a signal).", PROCESS,
                      [(lab, e["code"]) for lab, e in exits if e["code"] is not None])
        yield _family(GaugeMetricFamily, "dynamo_launch_process_last_exit_signal",
                      "Signal that ended the last copy (absent: none).", PROCESS,
                      [(lab, e["signal"]) for lab, e in exits if e["signal"] is not None])
        for name, key, help_ in _PER_PROCESS:
            yield _family(GaugeMetricFamily, name, help_, PROCESS,
                          [(lab, p[key]) for lab, p in procs if p.get(key) is not None])
        gang_state = GaugeMetricFamily("dynamo_launch_gang_state", "1 for the state the gang is in.",
                                       labels=["cluster", "gang", "state"])
        for g in snap["gangs"]:
            for s in GANG_STATES:
                gang_state.add_metric([cluster, g["name"], s], float(g["state"] == s))
        yield gang_state
        yield _family(CounterMetricFamily, "dynamo_launch_gang_restarts_total",
                      "Gang restarts decided by the restart policy.", ("cluster", "gang"),
                      [([cluster, g["name"]], g["restarts"]) for g in snap["gangs"]])
        yield _family(GaugeMetricFamily, "dynamo_launch_host_up",
                      "1 while the host's agent answers over its connection.", ("cluster", "host"),
                      [([cluster, h["name"]], float(h["up"])) for h in snap["hosts"]])
        for name, key, help_ in _TIMINGS:
            yield _family(GaugeMetricFamily, name, help_, ("cluster",),
                          [([cluster], timings[key])] if timings.get(key) is not None else [])
        yield _family(CounterMetricFamily, "dynamo_launch_reloads_total", "Reloads applied.", ("cluster",),
                      [([cluster], timings.get("reloads", 0))])


_EMPTY: Mapping[str, Any] = {"cluster": "", "processes": [], "gangs": [], "hosts": [], "timings": {}}
_PER_PROCESS = (  # (family, snapshot key, help): gauges present only while the snapshot has a value
    ("dynamo_launch_probe_seconds", "probe_seconds", "Duration of the last health probe."),
    ("dynamo_launch_process_uptime_seconds", "uptime", "Seconds since the current copy started."),
    ("dynamo_launch_process_tree_processes", "tree_procs", "Processes in the copy's whole tree (its node's count)."),
    ("dynamo_launch_process_memory_bytes", "memory_bytes",
     "Memory of the copy's whole tree (cgroup memory.current, else summed RSS)."),
)
_TIMINGS = (
    ("dynamo_launch_up_seconds", "up_seconds", "Seconds from daemon start until every process was first ready."),
    ("dynamo_launch_reload_seconds", "reload_seconds", "Duration of the last reload."),
)


def _family(kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, help_: str, labels: tuple[str, ...],
            samples: list[tuple[list[str], float]]) -> Metric:
    family = kind(name, help_, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def registry(snapshot: Callable[[], Mapping[str, Any]], *, dynamo_version: str = "",
             loop: asyncio.AbstractEventLoop | None = None) -> CollectorRegistry:
    """A registry of our own (not prometheus-client's global one): the snapshot's families, the
    build info, and the daemon process's ``process_*``, ``python_info`` and ``python_gc_*``.

    With ``loop``, ``snapshot`` runs on that loop whichever thread scrapes (:class:`MetricsServer`
    encodes in a worker thread): the state it reads is only ever changed there.
    """
    reg = CollectorRegistry()
    reg.register(SnapshotCollector(snapshot if loop is None else _on_loop(snapshot, loop),
                                   dynamo_version=dynamo_version))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return reg


def _on_loop(fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> Callable[[], Any]:
    async def call() -> Any:
        return fn()

    def run() -> Any:
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: a scraping thread, the usual case
            here = None
        if here is loop:
            return fn()  # waiting for the loop on the loop would never end
        future = asyncio.run_coroutine_threadsafe(call(), loop)
        try:
            return future.result(SNAPSHOT_TIMEOUT)
        finally:
            future.cancel()  # no-op once done; after a timeout, the loop need not take it any more

    return run


def exposition(reg: CollectorRegistry, accept: str = "", accept_encoding: str = "",
               query: str = "") -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of one scrape, negotiated as prometheus-client's own server does:
    OpenMetrics when ``accept`` asks for ``application/openmetrics-text`` (else text 0.0.4), gzip
    when ``accept_encoding`` allows it, only the families named by ``name[]`` in ``query``."""
    encoder, content_type = choose_encoder(accept)
    names = parse_qs(query).get("name[]")
    body = encoder(reg.restricted_registry(names) if names else reg)
    headers = [("Content-Type", content_type), ("Vary", "Accept, Accept-Encoding")]
    if gzip_accepted(accept_encoding):
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    return headers, body


MAX_LINE = 8 * 1024
"""Bytes in the request line or in one header line (414 / 431 beyond)."""
MAX_HEADERS = 32 * 1024
"""Bytes of all header lines together (431 beyond)."""
HEADER_TIMEOUT = 10.0
"""Seconds for the whole request head, however slowly it trickles in (408 after)."""
MAX_CONNECTIONS = 32
"""Connections served at once (503 beyond)."""
SNAPSHOT_TIMEOUT = 10.0
"""Seconds a scraping thread waits for the loop to take the snapshot (500 after)."""
_KEPT_HEADERS = ("accept", "accept-encoding")  # all the exposition needs; the rest is read and dropped


class _Refuse(Exception):
    """End the exchange with this status line (and these extra headers)."""

    def __init__(self, status: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(status)
        self.headers = list(headers)


class MetricsServer:
    """Serves ``GET``/``HEAD /metrics`` from ``reg`` (plain HTTP/1.1, one response per connection).

    Whoever can reach the address may connect, so a request head is bounded: its line and each
    header to :data:`MAX_LINE` bytes (414, 431), all headers to :data:`MAX_HEADERS` (431), the
    whole head to :data:`HEADER_TIMEOUT` seconds however slowly it comes (408: no slowloris),
    and :data:`MAX_CONNECTIONS` are served at once (503 beyond). A request line that is not
    ``METHOD TARGET HTTP/x``, or a header line without a colon, is 400; another method than
    GET/HEAD 405. A collector that raises is 500 (and ``on_error`` hears why); the server carries on.

    Scrapes are encoded in a worker thread, one at a time: prometheus-client's encoder takes tens
    of milliseconds for hundreds of processes, which would otherwise stall the loop that
    supervises them (and clients scraping at once would stall it that many times over).
    """

    def __init__(self, host: str, port: int, reg: CollectorRegistry, *, header_timeout: float = HEADER_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, on_error: Callable[[str], None] | None = None):
        self.host, self.port, self._registry = host, port, reg
        self._server: asyncio.base_events.Server | None = None
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.connections = 0
        self._on_error = on_error
        self._scraping = asyncio.Lock()

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
                method, target, fields = await asyncio.wait_for(self._head(reader), self.header_timeout)
            except asyncio.TimeoutError:
                raise _Refuse("408 Request Timeout") from None
            if method not in ("GET", "HEAD"):
                raise _Refuse("405 Method Not Allowed", (("Allow", "GET, HEAD"),))
            path, _, query = target.partition("?")
            if path != "/metrics":
                raise _Refuse("404 Not Found")
            headers, body = await self._scrape(fields, query)
            await self._reply(writer, "200 OK", headers, body, head=method == "HEAD")
        except _Refuse as e:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                body = b"only /metrics here\n" if str(e).startswith("404") else f"{e}\n".encode()
                await self._reply(writer, str(e), [("Content-Type", "text/plain; charset=utf-8"), *e.headers], body)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            self.connections -= 1
            writer.close()

    async def _scrape(self, fields: dict[str, str], query: str) -> tuple[list[tuple[str, str]], bytes]:
        try:
            async with self._scraping:
                return await asyncio.to_thread(exposition, self._registry, fields.get("accept", ""),
                                               fields.get("accept-encoding", ""), query)
        except Exception as e:  # a collector's bug: one 500, not a dead endpoint
            if self._on_error is not None:
                self._on_error(f"{type(e).__name__}: {e}")
            raise _Refuse("500 Internal Server Error") from None

    async def _head(self, reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
        """Method, target and the headers the exposition needs (the rest read, bounded, and dropped)."""
        line = await self._line(reader, "414 URI Too Long")
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[0].isalpha():
            raise _Refuse("400 Bad Request")
        total, fields = 0, {}
        while True:
            header = await self._line(reader, "431 Request Header Fields Too Large")
            if header in (b"\r\n", b"\n", b""):
                return parts[0], parts[1], fields
            total += len(header)
            if total > MAX_HEADERS:
                raise _Refuse("431 Request Header Fields Too Large")
            name, colon, value = header.decode("latin-1").partition(":")
            if not colon or not name or name != name.strip():
                raise _Refuse("400 Bad Request")
            name = name.lower()
            if name in _KEPT_HEADERS:  # repeated fields are one list (RFC 9110 §5.3)
                fields[name] = f"{fields[name]}, {value.strip()}" if name in fields else value.strip()

    @staticmethod
    async def _line(reader: asyncio.StreamReader, too_long: str) -> bytes:
        try:
            return await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):  # longer than the reader's limit
            raise _Refuse(too_long) from None

    async def _reply(self, writer: asyncio.StreamWriter, status: str, headers: list[tuple[str, str]], body: bytes,
                     *, head: bool = False) -> None:
        """Send the response; for HEAD, the headers GET would have (its length too) and no body."""
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
        writer.write(f"HTTP/1.1 {status}\r\n{lines}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                     + (b"" if head else body))
        await asyncio.wait_for(writer.drain(), self.header_timeout)  # a client that never reads is dropped
