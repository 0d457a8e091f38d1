"""Health probes run from the head: TCP connect and HTTP GET (expect 2xx).

Command and Ray probes run on the probed host through its agent (``exec``);
this module builds their argv and judges their output, so every probe kind
shares one result type.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["ProbeResult", "closed_port", "http_fetch", "http_get", "tls_context", "ray_nodes_argv", "judge_ray_nodes",
           "tcp_connect"]


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one probe: ok, a short detail for status, and how long it took."""

    ok: bool
    detail: str
    seconds: float


async def tcp_connect(address: str, port: int, timeout: float) -> ProbeResult:
    """Does ``address:port`` accept a TCP connection within ``timeout``?"""
    start = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        return ProbeResult(False, f"tcp {address}:{port}: {_reason(e)}", time.monotonic() - start)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return ProbeResult(True, f"tcp {address}:{port} ok", time.monotonic() - start)


async def closed_port(address: str, port: int, timeout: float) -> OSError | None:
    """Why ``address:port`` takes no TCP connection (refused, no route…), when that is known within
    ``timeout``; None when it accepts one, or when no answer came in time (then only a real client,
    with its own timeout, can tell). Lets a client library that is costly to load (gRPC, nats-py)
    stay unloaded while its server is not up yet."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except asyncio.TimeoutError:
        return None
    except OSError as e:
        return e
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


def tls_context(ca: str, cert: str = "", key: str = "") -> ssl.SSLContext:
    """A client TLS context that trusts only the CA file ``ca`` (and presents ``cert``/``key`` when given)."""
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key or None)
    return ctx


async def http_get(url: str, timeout: float, *, ca: str = "") -> ProbeResult:
    """GET ``url`` (no redirects): ok when the status is 2xx. An ``https://`` URL's certificate
    must chain to the CA file ``ca`` (the system's CAs without one) and name the host."""
    start = time.monotonic()
    try:
        tls = (tls_context(ca) if ca else ssl.create_default_context()) if url.startswith("https:") else None
        status, _ = await asyncio.wait_for(_get(url, tls, limit=0), timeout)
    except (OSError, asyncio.TimeoutError, ValueError) as e:  # ssl.SSLError is an OSError
        return ProbeResult(False, f"GET {url}: {_reason(e)}", time.monotonic() - start)
    ok = 200 <= status < 300
    return ProbeResult(ok, f"GET {url}: {status}", time.monotonic() - start)


async def http_fetch(url: str, timeout: float, *, limit: int = 8 << 20) -> tuple[int, bytes]:
    """GET ``url``: ``(status, body)``, the body cut at ``limit`` bytes. Raises OSError,
    ValueError or asyncio.TimeoutError."""
    return await asyncio.wait_for(_get(url, None, limit=limit), timeout)


async def _get(url: str, tls: ssl.SSLContext | None, *, limit: int) -> tuple[int, bytes]:
    """One GET as HTTP/1.0 (the body, if read, ends with the connection: never chunked); with
    ``limit`` 0 only the status line is read."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    try:
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        writer.write(f"GET {target} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: dynamo-launch\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        fields = line.decode("latin-1").split()
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise ValueError(f"not an HTTP response: {line[:40]!r}")
        if not limit:
            return int(fields[1]), b""
        while (await reader.readline()).strip():  # the headers
            pass
        return int(fields[1]), await reader.read(limit)
    finally:
        writer.close()


# Counting alive nodes needs Ray's own client; run with the node's python so the versions match
# the cluster. The GCS client alone answers in ~0.6 s where ray.init() costs 1.5 s and more (it
# starts a driver). Prints one JSON line: [address, start time (s, that node's clock) or null] of
# each alive node. A node that died stays "alive" for a while (~13 s here), so the judge needs
# the start times to tell a rejoined node from its dead predecessor at the same address.
_RAY_SNIPPET = """
import json, sys
try:
    from ray._raylet import GcsClient
    nodes = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=float(sys.argv[2])).values()
    alive = [[n.node_manager_address, n.start_time_ms / 1000.0] for n in nodes if n.state == 0]  # 0: ALIVE
except (ImportError, AttributeError, TypeError):  # another Ray: its public API, without start times
    import ray
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    alive = [[n["NodeManagerAddress"], None] for n in ray.nodes() if n.get("Alive")]
print(json.dumps(sorted(alive, key=lambda n: (n[0], n[1] or 0))))
"""


def ray_nodes_argv(python: str, address: str, port: int, timeout: float = 3.0) -> list[str]:
    """argv that prints the alive nodes (address, start time) of the Ray cluster at address:port."""
    return [python, "-c", _RAY_SNIPPET, f"{address}:{port}", str(timeout)]


def judge_ray_nodes(stdout: str, *, expect: int = 0, member: str = "",
                    since: Mapping[str, float] | None = None) -> tuple[bool, str]:
    """Judge :func:`ray_nodes_argv` output: ≥ ``expect`` hosts alive, or ``member`` among them.

    ``since`` maps an address to the start (on that host's clock) of the process that runs its
    Ray node now: an alive node there that started before it is a dead predecessor Ray has not
    noticed yet, and does not count. Hosts are counted once, however many nodes they show.
    """
    import json

    try:
        nodes = json.loads(stdout.strip().splitlines()[-1])
        entries = [(str(n[0]), None if n[1] is None else float(n[1])) for n in nodes]
    except (IndexError, ValueError, TypeError, KeyError):
        return False, "ray: no node list"
    since = since or {}
    alive = {a for a, start in entries if start is None or a not in since or start >= since[a] - _CLOCK_SLACK}
    stale = len({a for a, _ in entries} - alive)
    note = f", {stale} left from before a restart" if stale else ""
    if member:
        joined = member in alive
        return joined, f"ray: {member} {'joined' if joined else 'not joined'} ({len(alive)} alive{note})"
    return len(alive) >= expect, f"ray: {len(alive)}/{expect} nodes alive{note}"


# A node registers after the process that starts it: its start time can only be earlier than the
# process's recorded start by rounding (ms) on the same clock.
_CLOCK_SLACK = 0.01


def _reason(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    return str(e) or type(e).__name__
