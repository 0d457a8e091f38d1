"""A closed-loop HTTP load against a Dynamo frontend, and a watch on what the frontend routes to.

Used by ``benchmarks/serving.py``. Standard library only (asyncio streams, HTTP/1.1): the bench
must not depend on a client library's retry or pooling rules, which would hide or add failures.
Every request opens its own connection (``Connection: close``): a reused connection that the
server had closed would fail a request the server never saw, a failure no fault caused.

Only the bed's own addresses are ever contacted (the caller gives the frontend's).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field

__all__ = ["Load", "Sample", "generate_instances", "http_get", "http_json", "worker_id"]

_WORKER_ID = re.compile(r'worker_id="([0-9a-fA-F]+)"')
MAX_BODY = 4 << 20  # a /health of a big deployment is tens of kB; anything near this is not an answer


@dataclass
class Sample:
    """One request: when it was sent (monotonic seconds), how it ended and what served it."""

    sent: float
    latency: float
    status: int  # HTTP status; 0: no answer (connection refused or reset, timeout)
    error: str = ""  # why it failed, short ("timeout", "503 Service temporarily unavailable", …)
    decode: int | None = None  # the instance that served it (nvext worker_id), when it succeeded
    prefill: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


async def _request(host: str, port: int, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange on a fresh connection: (status, body)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
                "Accept: application/json\r\n")
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + (body or b""))
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("connection closed before a response")
        parts = status_line.split(b" ", 2)
        status = int(parts[1])
        headers: dict[str, str] = {}
        for _ in range(200):
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            size = int(headers["content-length"])
            if size > MAX_BODY:
                raise ValueError(f"response of {size} bytes")
            data = await reader.readexactly(size)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            for _ in range(100_000):
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    break
                parts.append(await reader.readexactly(size))
                await reader.readline()
            data = b"".join(parts)
        else:
            data = await reader.read(MAX_BODY)
        if status != 200 and not data.strip() and len(parts) > 2:  # say at least what the status means
            data = parts[2].strip()
        return status, data
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (OSError, asyncio.TimeoutError):
            pass


def _short(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    if isinstance(e, asyncio.IncompleteReadError):
        return "connection closed mid-response"
    text = str(e) or type(e).__name__
    return text[:80]


def _error_text(status: int, body: bytes, model: str) -> str:
    """``503 Service temporarily unavailable``: the status and the start of the message, with the
    model's path (random per run) replaced so that one kind of error reads the same in every run."""
    try:
        got = json.loads(body)
        message = got.get("message") or got.get("error") or ""
        if isinstance(message, dict):
            message = message.get("message", "")
        message = message or body[:200].decode(errors="replace")
    except (ValueError, AttributeError):
        message = body[:200].decode(errors="replace")
    message = str(message).replace(model, "<model>").split(". ")[0] or "(empty body)"
    return f"{status} {message[:80]}"


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A blocking GET (for set-up and checks); status 0 when nothing answered."""
    try:
        return asyncio.run(asyncio.wait_for(_request(host, port, "GET", path, None), timeout))
    except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
        return 0, _short(e).encode()


def http_json(host: str, port: int, path: str, body: dict | None = None,
              timeout: float = 10.0) -> tuple[int, dict | str]:
    """A blocking request with a JSON answer: (status, parsed body or error text)."""
    data = json.dumps(body).encode() if body is not None else None
    try:
        status, raw = asyncio.run(asyncio.wait_for(
            _request(host, port, "POST" if body is not None else "GET", path, data), timeout))
    except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
        return 0, _short(e)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw[:300].decode(errors="replace")


def worker_id(address: str, system_port: int) -> int | None:
    """The discovery instance id of the Dynamo worker whose system-status server is there: the
    ``worker_id`` label of its ``/metrics`` (hex of the id the frontend's ``/health`` lists)."""
    status, body = http_get(address, system_port, "/metrics", timeout=3.0)
    found = _WORKER_ID.search(body.decode(errors="replace")) if status == 200 else None
    return int(found.group(1), 16) if found else None


def generate_instances(health: dict) -> list[tuple[str, int]]:
    """The ``generate`` endpoints a frontend's ``/health`` lists: (component, instance_id)."""
    return sorted((i.get("component", ""), int(i["instance_id"])) for i in health.get("instances", [])
                  if i.get("endpoint") == "generate" and "instance_id" in i)


@dataclass
class Load:
    """``clients`` closed-loop clients against the frontend at ``host:port``, plus a watch of its
    ``/health`` every ``watch_every`` seconds, in a thread of their own until :meth:`stop`.

    Each client sends a chat completion (a short prompt of its own, ``max_tokens`` tokens), waits
    for the answer (at most ``timeout`` seconds), records it and sends the next. After a failure
    it waits ``error_pause`` first, so a dead frontend is not hammered thousands of times a second
    (a failure count is then at most ``clients / error_pause`` per second of outage).
    """

    host: str
    port: int
    model: str
    clients: int = 8
    max_tokens: int = 8
    timeout: float = 10.0
    error_pause: float = 0.1
    watch_every: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    routing: list[tuple[float, list[tuple[str, int]] | None]] = field(default_factory=list)
    """(monotonic time, the generate instances /health listed, or None when it did not answer)."""

    def __post_init__(self) -> None:
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self.error: BaseException | None = None

    # --- the thread ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the clients and the watcher (returns once their event loop runs)."""
        self._thread = threading.Thread(target=self._run, name="serving-load", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the load thread did not start")

    def stop(self, timeout: float | None = None) -> None:
        """Stop sending; requests in flight get at most their own timeout to finish."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.timeout + 5)
            if self._thread.is_alive():
                raise RuntimeError("the load thread did not stop")

    def latest(self) -> list[tuple[str, int]] | None:
        """What /health listed last (None: it did not answer, or nothing yet)."""
        return self.routing[-1][1] if self.routing else None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # surfaced by the caller: a broken load must not pass as "no failures"
            self.error = e
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        await asyncio.gather(self._watch(), *(self._client(i) for i in range(self.clients)))

    async def _client(self, index: int) -> None:
        for n in range(10_000_000):
            if self._stop.is_set():
                return
            body = json.dumps({
                "model": self.model, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": f"Client {index}, request {n}: say something short."}],
                "nvext": {"extra_fields": ["worker_id"]}}).encode()
            sent = time.monotonic()
            try:
                status, raw = await asyncio.wait_for(
                    _request(self.host, self.port, "POST", "/v1/chat/completions", body), self.timeout)
                sample = Sample(sent, time.monotonic() - sent, status)
                if status == 200:
                    worker = (json.loads(raw).get("nvext") or {}).get("worker_id") or {}
                    sample.decode, sample.prefill = worker.get("decode_worker_id"), worker.get("prefill_worker_id")
                else:
                    sample.error = _error_text(status, raw, self.model)
            except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                sample = Sample(sent, time.monotonic() - sent, 0, _short(e))
            self.samples.append(sample)
            if not sample.ok:
                try:
                    await asyncio.wait_for(self._stop.wait(), self.error_pause)
                except asyncio.TimeoutError:
                    pass

    async def _watch(self) -> None:
        for _ in range(10_000_000):
            if self._stop.is_set():
                return
            t = time.monotonic()
            try:
                # an unhealthy frontend answers 503 with the same body: what it lists still counts
                _, raw = await asyncio.wait_for(_request(self.host, self.port, "GET", "/health", None), 2.0)
                listed = generate_instances(json.loads(raw))
            except (OSError, ValueError, AttributeError, KeyError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                listed = None
            self.routing.append((t, listed))
            try:
                await asyncio.wait_for(self._stop.wait(), max(0.0, t + self.watch_every - time.monotonic()))
            except asyncio.TimeoutError:
                pass
