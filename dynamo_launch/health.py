"""Health probes run from the head: TCP connect and HTTP GET (expect 2xx).

Command and Ray probes run on the probed host through its agent (``exec``);
this module builds their argv and judges their output, so every probe kind
shares one result type.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["ProbeResult", "http_get", "ray_nodes_argv", "judge_ray_nodes", "tcp_connect"]


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


async def http_get(url: str, timeout: float) -> ProbeResult:
    """GET ``url`` (plain HTTP/1.1, no redirects): ok when the status is 2xx."""
    start = time.monotonic()
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        status = await asyncio.wait_for(_get_status(host, port, target), timeout)
    except (OSError, asyncio.TimeoutError, ValueError) as e:
        return ProbeResult(False, f"GET {url}: {_reason(e)}", time.monotonic() - start)
    ok = 200 <= status < 300
    return ProbeResult(ok, f"GET {url}: {status}", time.monotonic() - start)


async def _get_status(host: str, port: int, target: str) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nUser-Agent: dynamo-launch\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        fields = line.decode("latin-1").split()
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise ValueError(f"not an HTTP response: {line[:40]!r}")
        return int(fields[1])
    finally:
        writer.close()


# Counting alive nodes needs Ray's own client; run with the node's python so the
# versions match the cluster. Prints one JSON line: the alive nodes' addresses.
_RAY_SNIPPET = """
import json, sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps(sorted(n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive"))))
"""


def ray_nodes_argv(python: str, address: str, port: int) -> list[str]:
    """argv that prints the addresses of the alive nodes of the Ray cluster at address:port."""
    return [python, "-c", _RAY_SNIPPET, f"{address}:{port}"]


def judge_ray_nodes(stdout: str, *, expect: int = 0, member: str = "") -> tuple[bool, str]:
    """Judge :func:`ray_nodes_argv` output: ≥ ``expect`` nodes alive, or ``member`` among them."""
    import json

    try:
        alive = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return False, "ray: no node list"
    if member:
        return member in alive, f"ray: {member} {'joined' if member in alive else 'not joined'} ({len(alive)} alive)"
    return len(alive) >= expect, f"ray: {len(alive)}/{expect} nodes alive"


def _reason(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    return str(e) or type(e).__name__
