"""The control socket and the metrics endpoint against hostile clients, over real sockets (issue 14, item 7).

Every malformed control request gets one error line and the server carries on; a client that
sends nothing is disconnected and connections beyond the cap are refused at once, so idle
clients cannot pile up the daemon's file descriptors; the metrics server bounds the request
head in size and in time (400/405/408/414/431/503). What it serves is tests/unit/test_metrics.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from dynamo_launch import control
from dynamo_launch.metrics import MAX_HEADERS, MAX_LINE, MetricsServer

ROOT = Path(__file__).resolve().parents[2]


def _exchange(path: str, data: bytes, *, timeout: float = 10.0) -> dict:
    """Send raw bytes, half-close, and read the one reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        line = s.makefile("rb").readline()
    return json.loads(line)


MALFORMED = {
    "a bare string": b'"status"\n',
    "an array": b"[]\n",
    "null": b"null\n",
    "a huge number": b"1e999\n",
    "NaN inside": b'{"op": "status", "x": NaN}\n',
    "deep nesting": b"[" * 50_000 + b"\n",
    "deep nesting in an object": b'{"op": "status", "x": ' + b"[" * 5_000 + b"]" * 5_000 + b"}\n",
    "not UTF-8": b'{"op": "st\xff\xfeatus"}\n',
    "over 64 KiB": b'{"op": "status", "pad": "' + b"x" * (70 * 1024) + b'"}\n',
    "op not a string": b'{"op": 1}\n',
    "no op": b'{"since": 1}\n',
    "not JSON": b"status please\n",
    "empty line": b"\n",
    "nothing at all": b"",
    "truncated": b'{"op": "sta',
}


async def _serving(path: str, **kw):
    async def handler(req: dict) -> dict:
        return {"op": req["op"]}

    server = control.ControlServer(path, handler, **kw)
    await server.start()
    return server


@pytest.mark.parametrize("name", list(MALFORMED))
def test_every_malformed_control_request_gets_an_error_reply(tmp_path: Path, name: str) -> None:
    path = str(tmp_path / "c.sock")

    async def main() -> tuple[dict, dict]:
        server = await _serving(path)
        try:
            bad = await asyncio.to_thread(_exchange, path, MALFORMED[name])
            good = await asyncio.to_thread(_exchange, path, b'{"op": "status"}\n')  # the server carries on
            return bad, good
        finally:
            await server.close()

    bad, good = asyncio.run(main())
    assert bad["ok"] is False and bad["error"].startswith("bad request: "), bad
    assert good == {"ok": True, "result": {"op": "status"}}


def test_a_request_just_under_the_limit_is_served(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    head = b'{"op": "status", "pad": "'
    line = head + b"x" * (control.MAX_REQUEST - len(head) - 3) + b'"}\n'
    assert len(line) == control.MAX_REQUEST

    async def main() -> dict:
        server = await _serving(path)
        try:
            return await asyncio.to_thread(_exchange, path, line)
        finally:
            await server.close()

    assert asyncio.run(main()) == {"ok": True, "result": {"op": "status"}}


def test_a_handler_bug_is_one_error_line_not_a_traceback(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    heard: list[str] = []

    async def handler(req: dict) -> dict:
        return {}["missing"]

    async def main() -> dict:
        server = control.ControlServer(path, handler, on_error=heard.append)
        await server.start()
        try:
            return await asyncio.to_thread(_exchange, path, b'{"op": "status"}\n')
        finally:
            await server.close()

    reply = asyncio.run(main())
    assert reply == {"ok": False, "error": "internal error: KeyError: 'missing'"} and heard == ["KeyError: 'missing'"]


def test_the_client_refuses_an_answer_that_is_not_a_daemons(tmp_path: Path) -> None:
    path = str(tmp_path / "fake.sock")
    for answer in (b"not json\n", b"[1]\n", b'{"ok": true, "result": 5}\n'):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)

        def serve(answer: bytes = answer) -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

        async def main() -> None:
            task = asyncio.create_task(asyncio.to_thread(serve))
            with pytest.raises(control.ControlError, match="not a daemon's"):
                await asyncio.to_thread(control.request, path, "status", timeout=5)
            await task

        try:
            asyncio.run(main())
        finally:
            listener.close()
            os.unlink(path)


# A control server in its own process, so its file descriptors can be counted from outside.
_SERVER = """
import asyncio, sys
sys.path.insert(0, {root!r})
from dynamo_launch.control import ControlServer
async def handler(req):
    return {{"op": req["op"]}}
async def main():
    server = ControlServer({path!r}, handler, idle_timeout={idle}, max_connections={cap})
    await server.start()
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_are_capped_and_closed_so_fds_do_not_grow(tmp_path: Path) -> None:
    path, cap, idle = str(tmp_path / "c.sock"), 16, 3.0
    proc = subprocess.Popen([sys.executable, "-c", _SERVER.format(root=str(ROOT), path=path, idle=idle, cap=cap)],
                            stdout=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        base = _fds(proc.pid)
        for _ in range(300):  # idle clients: connect, send nothing
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(s)
            s.connect(path)  # blocking: waits while the listen backlog is full
            s.settimeout(15)
        replies: dict[int, dict] = {}
        for i in range(cap, len(clients)):  # accepted beyond the cap: answered "busy" and closed at once
            replies[i] = json.loads(clients[i].makefile("rb").readline())
        # While the first ones still wait for their request line, the server holds only those
        # (a burst is accepted before it is answered: give the closes a moment to land).
        deadline = time.monotonic() + 2
        while _fds(proc.pid) > base + cap and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _fds(proc.pid) <= base + cap, (base, _fds(proc.pid))
        for i in range(cap):
            replies[i] = json.loads(clients[i].makefile("rb").readline())
        busy = [r for r in replies.values() if r["error"].startswith("busy")]
        idle_out = [r for r in replies.values() if "nothing received" in r["error"]]
        assert len(busy) + len(idle_out) == 300 and len(idle_out) >= cap and len(busy) >= 300 - 2 * cap
        assert all(s.recv(1) == b"" for s in clients)  # the server closed each
        deadline = time.monotonic() + 10
        while _fds(proc.pid) > base and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _fds(proc.pid) <= base
        assert _exchange(path, b'{"op": "status"}\n') == {"ok": True, "result": {"op": "status"}}
    finally:
        for s in clients:
            s.close()
        proc.kill()
        proc.wait()


# --- the metrics endpoint -------------------------------------------------------------------------


def _http(port: int, data: bytes, *, slow: float = 0.0, timeout: float = 15.0) -> str:
    """Send ``data`` (a byte at a time, ``slow`` s apart, when slow), return the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if slow:
                for b in data:
                    s.sendall(bytes([b]))
                    time.sleep(slow)
            else:
                s.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            return s.makefile("rb").readline().decode("latin-1").strip()
    return ""


@pytest.mark.parametrize("data, status", [
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "200"),
    (b"GET /other HTTP/1.1\r\n\r\n", "404"),
    (b"HEAD /metrics HTTP/1.1\r\n\r\n", "200"),
    (b"POST /metrics HTTP/1.1\r\n\r\n", "405"),
    (b"OPTIONS /metrics HTTP/1.1\r\n\r\n", "405"),
    (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", "400"),
    (b"GET /metrics HTTP/1.1\r\n folded: value\r\n\r\n", "400"),  # obs-fold / space before the name
    (b"GET /metrics HTTP/1.1\r\nAccept : x\r\n\r\n", "400"),  # space before the colon (RFC 9112 §5.1)
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "400"),  # TLS hello bytes
    (b"GET\r\n\r\n", "400"),
    (b"GET /" + b"a" * (2 * MAX_LINE) + b" HTTP/1.1\r\n\r\n", "414"),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (2 * MAX_LINE) + b"\r\n\r\n", "431"),
    (b"GET /metrics HTTP/1.1\r\n" + (b"X: " + b"a" * 45 + b"\r\n") * (MAX_HEADERS // 40) + b"\r\n", "431"),
    (b"GET /metrics HTTP/1.1\r\n" + b"a" * (1 << 20), "431"),  # a 1 MiB header line, no end
])  # fmt: skip
def test_metrics_server_bounds_the_request_head(data: bytes, status: str) -> None:
    async def main() -> tuple[str, str]:
        server = MetricsServer("127.0.0.1", 0, CollectorRegistry())
        await server.start()
        try:
            got = await asyncio.to_thread(_http, server.port, data)
            after = await asyncio.to_thread(_http, server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
            return got, after
        finally:
            await server.close()

    got, after = asyncio.run(main())
    assert got.startswith(f"HTTP/1.1 {status} "), got
    assert after.startswith("HTTP/1.1 200 ")


def test_metrics_server_drops_a_slow_header_client_and_serves_others_meanwhile() -> None:
    async def main() -> tuple[str, str]:
        server = MetricsServer("127.0.0.1", 0, CollectorRegistry(), header_timeout=1.0)
        await server.start()
        try:
            slowloris = asyncio.create_task(asyncio.to_thread(
                _http, server.port, b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100, slow=0.1))
            await asyncio.sleep(0.3)
            other = await asyncio.to_thread(_http, server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
            return await slowloris, other
        finally:
            await server.close()

    slow, other = asyncio.run(main())
    assert other.startswith("HTTP/1.1 200 ")
    assert slow.startswith("HTTP/1.1 408 ") or slow == "", slow  # answered 408, or cut while still sending


def test_metrics_server_caps_concurrent_connections() -> None:
    async def main() -> list[str]:
        server = MetricsServer("127.0.0.1", 0, CollectorRegistry(), max_connections=4, header_timeout=5.0)
        await server.start()
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(4)]
        try:
            await asyncio.sleep(0.2)  # let the server accept them
            over = await asyncio.to_thread(_http, server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
            for s in held:
                s.close()
            await asyncio.sleep(0.2)
            again = await asyncio.to_thread(_http, server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
            return [over, again]
        finally:
            for s in held:
                s.close()
            await server.close()

    over, again = asyncio.run(main())
    assert over.startswith("HTTP/1.1 503 ") and again.startswith("HTTP/1.1 200 ")
