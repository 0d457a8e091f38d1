"""Lifecycle events on NATS: subject ``dynamo_launch.<cluster>.events``, one JSON object per message.

The daemon publishes every event it records in its local ring (``Daemon._notify``): started,
ready, exited (code/signal), restarting in N s, gang restart, failed, host unreachable/back,
reload … as the dict it already builds, e.g. ``{"seq": 12, "time": 1700000000.5, "kind":
"exited", "process": "decode-0", "host": "node2", "message": "exited with code 1", "code": 1}``.
Nothing is added here (and env values never are in an event).

Supervision never waits for NATS: :meth:`EventBus.publish` appends to a bounded queue (10 000 by
default; when full the oldest event is dropped and counted in ``dropped``) and a background task
sends the queue **in order** whenever it is connected. An event leaves the queue only once the
server has confirmed it (a PING/PONG after the batch), so while NATS is down — or when it dies
mid-batch — nothing is lost but the overflow: the task reconnects with backoff (0.2 s doubling to
5 s) and sends the rest. A batch resent after a failed confirmation may reach subscribers twice;
:func:`subscribe` drops such repeats (same ``seq`` and ``time``).

Usage (the daemon)::

    from dynamo_launch.eventbus import EventBus

    bus = EventBus("prod", "nats://10.0.0.1:4222")
    bus.start()                      # in the running event loop
    bus.publish(event)               # never blocks, never raises for NATS trouble
    ...
    await bus.close(timeout=2)       # sends what it can within 2 s; bus.pending is what was left

and a viewer on any node (``events -f``)::

    from dynamo_launch.eventbus import subscribe

    async with subscribe("nats://10.0.0.1:4222", "prod") as events:   # EventBusError if unreachable
        async for event in events:                                      # follows across NATS restarts
            print(event["kind"], event.get("process"), event["message"])

Core NATS keeps no history: a subscriber sees what is published while it is connected.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import itertools
import json
import sys
from collections.abc import Mapping
from typing import Any, Self
from urllib.parse import urlsplit

import structlog

from .errors import EventBusError
from .health import closed_port, tls_context
from .retry import RetryDelay

__all__ = ["EventBus", "EventSubscription", "subject_for", "subscribe"]

log = structlog.get_logger("dynamo_launch.eventbus")

MAX_EVENT_BYTES = 512 * 1024  # nats-server's default max_payload is 1 MiB


def subject_for(cluster: str) -> str:
    """The NATS subject a cluster's events are published on."""
    if not cluster or any(c in cluster for c in " .*>\t\r\n"):
        raise ValueError(f"cluster name {cluster!r} cannot be part of a NATS subject")
    return f"dynamo_launch.{cluster}.events"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(e: BaseException) -> str:
    text = str(e)
    return _one_line(f"{type(e).__name__}: {text}" if text else type(e).__name__)


async def _quiet(*_: Any) -> None:
    """nats-py callback that does nothing (we log state changes ourselves, once)."""


_AUTH_OPTIONS = {"NATS_AUTH_TOKEN": "token", "NATS_AUTH_USERNAME": "user", "NATS_AUTH_PASSWORD": "password"}


def auth_options(auth: Mapping[str, str] | None) -> dict[str, Any]:
    """nats-py connect options from the variables Dynamo reads (``NATS_AUTH_TOKEN``, …, and
    ``NATS_TLS_CA_CERT_PATH``/``_CLIENT_CERT_PATH``/``_CLIENT_KEY_PATH``: a TLS context that trusts
    that CA only). OSError when a TLS file cannot be read."""
    auth = auth or {}
    out: dict[str, Any] = {_AUTH_OPTIONS[k]: v for k, v in auth.items() if k in _AUTH_OPTIONS}
    if auth.get("NATS_TLS_CA_CERT_PATH"):
        out["tls"] = tls_context(auth["NATS_TLS_CA_CERT_PATH"], auth.get("NATS_TLS_CLIENT_CERT_PATH", ""),
                                 auth.get("NATS_TLS_CLIENT_KEY_PATH", ""))
    return out


async def _connect(url: str, timeout: float, auth: Mapping[str, str] | None = None, **callbacks: Any) -> Any:
    # Lazy (only the daemon and `events` need nats-py: ~45 ms of CPU), not loaded at all while the
    # server turns connections away (ours is not started yet, at `up`: refused is what nats-py would
    # have found too), and loaded in a thread, so the event loop keeps serving everything else.
    if "nats" not in sys.modules:
        closed = await _closed(url, timeout)
        if closed is not None:
            raise ConnectionError(_describe(closed))
        await asyncio.to_thread(importlib.import_module, "nats.errors")
    import nats
    from nats.errors import NoServersError

    nc = nats.NATS()
    last_error: list[BaseException] = []

    async def on_error(e: BaseException) -> None:
        last_error[:] = [e]

    try:
        options: dict[str, Any] = {"error_cb": on_error, "disconnected_cb": _quiet, "closed_cb": _quiet,
                                   **auth_options(auth), **callbacks}
        # nats-py retries a refused connect max_reconnect_attempts times (default 60 × 2 s) even without
        # allow_reconnect: 1 means two quick tries, then NoServersError. We do our own retrying.
        await asyncio.wait_for(nc.connect(servers=[url], allow_reconnect=False, connect_timeout=max(1, int(timeout)),
                                          max_reconnect_attempts=1, reconnect_time_wait=0.1,
                                          ping_interval=10, max_outstanding_pings=2, name="dynamo-launch",
                                          **options), timeout * 2 + 1)
    except BaseException as e:
        with contextlib.suppress(Exception):
            await nc.close()
        if isinstance(e, NoServersError) and last_error:
            raise ConnectionError(_describe(last_error[0])) from None
        raise
    return nc


async def _closed(url: str, timeout: float) -> OSError | None:
    """:func:`~dynamo_launch.health.closed_port` of a ``nats://host:port`` (or ``tls://``) URL."""
    try:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host, port = parts.hostname, parts.port or 4222
    except ValueError:
        return None
    return await closed_port(host, port, min(1.0, timeout)) if host else None


def _well_formed(event: Any) -> bool:
    """An event with the fields and types every reader of one relies on."""
    if not isinstance(event, dict):
        return False
    seq, when, process = event.get("seq"), event.get("time"), event.get("process")
    return (isinstance(seq, int) and not isinstance(seq, bool) and isinstance(when, (int, float))
            and not isinstance(when, bool) and isinstance(event.get("kind"), str)
            and isinstance(event.get("message"), str) and (process is None or isinstance(process, str)))


class EventBus:
    """Publishes a cluster's lifecycle events on NATS from a bounded, ordered queue.

    Counters: ``published`` (accepted by :meth:`publish`), ``delivered`` (confirmed by the
    server), ``dropped`` (oldest discarded because the queue was full), ``pending`` (queued now).
    State: ``connected``, ``last_error``.
    """

    def __init__(self, cluster: str, nats_url: str, *, max_queue: int = 10_000, batch: int = 500,
                 connect_timeout: float = 2.0, flush_timeout: float = 2.0, auth: Mapping[str, str] | None = None,
                 starting: bool = False):
        self.cluster = cluster
        # ``starting``: the launcher is bringing this NATS up itself, so not answering before the
        # first connection is expected (logged at info), not a problem (a warning).
        self._starting = starting
        self._auth = dict(auth or {})  # NATS_AUTH_* → value: never logged
        self.subject = subject_for(cluster)
        self.url = nats_url
        self.max_queue = max_queue
        self.batch = batch
        self.connect_timeout = connect_timeout
        self.flush_timeout = flush_timeout
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.connected = False
        self.last_error = ""
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._nc: Any = None
        self._closing = False
        self._log = log.bind(cluster=cluster, nats=nats_url)

    @property
    def pending(self) -> int:
        """Events queued and not yet confirmed by the server."""
        return len(self._queue)

    def start(self) -> None:
        """Start the background sender in the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"nats-events-{self.cluster}")

    def publish(self, event: dict[str, Any]) -> None:
        """Queue ``event`` (serialized now, as JSON) for sending; returns at once, never raises for NATS."""
        payload = json.dumps(event, separators=(",", ":"), default=str).encode()
        if len(payload) > MAX_EVENT_BYTES:  # would be refused by the server (and block the queue behind it)
            self.dropped += 1
            self._log.warning("event too large for NATS: dropped", bytes=len(payload), kind=event.get("kind"),
                              process=event.get("process"))
            return
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                self._log.warning("event queue full: dropping the oldest events", dropped=self.dropped,
                                  max_queue=self.max_queue)
        self._queue.append((next(self._ids), payload))
        self.published += 1
        self._wake.set()

    async def wait_flushed(self, timeout: float) -> bool:
        """Wait until every queued event is confirmed by the server; False after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._queue:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def _drop_connection(self) -> None:
        nc, self._nc = self._nc, None
        self.connected = False
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2)

    async def _send_batch(self) -> None:
        batch = list(itertools.islice(self._queue, 0, self.batch))
        for _, payload in batch:
            await self._nc.publish(self.subject, payload)
        await self._nc.flush(timeout=self.flush_timeout)
        # Confirmed. Pop by id: publish() may have dropped old entries from the head meanwhile.
        last = batch[-1][0]
        while self._queue and self._queue[0][0] <= last:
            self._queue.popleft()
            self.delivered += 1

    async def _run(self) -> None:
        backoff = RetryDelay()
        while True:
            try:
                if self._nc is None or not self._nc.is_connected:
                    await self._drop_connection()
                    self._nc = await _connect(self.url, self.connect_timeout, self._auth)
                    if self.last_error:
                        self._log.info("NATS reachable again: sending queued events", pending=self.pending)
                    self.connected, self.last_error, self._starting = True, "", False
                    backoff.reset()
                if self._queue:
                    await self._send_batch()
                    continue
                if self._closing:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    # Wake up now and then to notice a dead connection even when nothing is sent.
                    await asyncio.wait_for(self._wake.wait(), 5)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not self.last_error and self._starting:
                    self._log.info("NATS not answering yet (the launcher starts it): events are queued until it does",
                                   pending=self.pending)
                elif not self.last_error:
                    self._log.warning("NATS unreachable: events are queued and sent when it is back",
                                      error=_describe(e), pending=self.pending)
                self.last_error = f"NATS at {self.url}: {_describe(e)}"
                await self._drop_connection()
                if self._closing:
                    return
                await asyncio.sleep(backoff.next())

    def state(self) -> dict[str, Any]:
        """The bus's health and counters, for ``status`` and logs."""
        return {"url": self.url, "subject": self.subject, "connected": self.connected, "error": self.last_error,
                "published": self.published, "delivered": self.delivered, "dropped": self.dropped,
                "pending": self.pending}

    async def close(self, timeout: float = 2.0) -> None:
        """Send what is queued for up to ``timeout`` seconds, then disconnect (``pending`` = unsent)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(Exception):  # TimeoutError included: then it is cancelled below
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._drop_connection()
        if self._queue:
            self._log.warning("events not sent to NATS before closing", pending=self.pending)


_CLOSED = object()


class EventSubscription:
    """Follows ``dynamo_launch.<cluster>.events``: an async iterator of event dicts.

    Use as ``async with subscribe(url, cluster) as events: async for e in events: ...`` (the
    ``async with`` connects — :class:`EventBusError` when NATS cannot be reached — and always
    closes). ``reconnect`` (default True): when the connection is lost, reconnect with backoff and
    carry on (events published meanwhile are missed: core NATS has no history); False: the
    iteration simply ends. Messages that are not events as the daemon publishes them (not JSON, or
    without an int ``seq``, a numeric ``time``, string ``kind`` and ``message``, a string or null
    ``process``) are skipped and counted in ``malformed``; so are repeats of the last 1000 events
    (same ``seq`` and ``time``).
    """

    def __init__(self, nats_url: str, cluster: str, *, connect_timeout: float = 5.0, reconnect: bool = True,
                 auth: Mapping[str, str] | None = None,
                 max_queue: int = 10_000):
        self.url = nats_url
        self.subject = subject_for(cluster)
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect
        self._auth = dict(auth or {})
        self.dropped = 0
        self.malformed = 0  # messages on the subject that are not events as the daemon sends them: skipped
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)
        self._nc: Any = None
        self._closed = False
        self._ever_connected = False
        self._seen: collections.OrderedDict[tuple[Any, Any], None] = collections.OrderedDict()

    def _put(self, item: Any) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            if item is _CLOSED:  # make room: the connection state matters more than one event
                self._queue.get_nowait()
                self.dropped += 1
                self._queue.put_nowait(item)
            else:
                self.dropped += 1

    async def _open(self) -> None:
        mine: dict[str, Any] = {}

        async def on_msg(msg: Any) -> None:
            self._put(msg.data)

        async def on_closed() -> None:
            # Only the live connection's end matters (not a failed attempt's, nor one we closed).
            if self._nc is not None and self._nc is mine.get("nc"):
                self._put(_CLOSED)

        nc = await _connect(self.url, self.connect_timeout, self._auth, closed_cb=on_closed)
        try:
            await nc.subscribe(self.subject, cb=on_msg)
            await nc.flush(timeout=max(1, int(self.connect_timeout)))  # the subscription is in place on return
        except BaseException:
            with contextlib.suppress(Exception):
                await nc.close()
            raise
        self._nc = mine["nc"] = nc
        self._ever_connected = True

    async def connect(self) -> None:
        """Connect and subscribe; :class:`EventBusError` when NATS cannot be reached."""
        try:
            await self._open()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise EventBusError(f"cannot reach NATS at {self.url}: {_describe(e)}") from None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            if self._closed and self._queue.empty():
                raise StopAsyncIteration
            if self._nc is None and not self._closed:
                if not self._ever_connected:
                    await self.connect()  # the first time: fail fast with EventBusError
                elif self.reconnect:
                    await self._reconnect()
                else:
                    self._closed = True
                    continue
            item = await self._queue.get()
            if item is _CLOSED:
                if self._closed or not self.reconnect:
                    self._closed = True
                    raise StopAsyncIteration
                await self._drop()  # reconnect at the top of the loop
                continue
            try:
                event = json.loads(item)
            except ValueError:
                event = None
            if not _well_formed(event):  # anyone who may publish on the subject can send anything
                self.malformed += 1
                continue
            key = (event.get("seq"), event.get("time"))
            if key != (None, None):
                if key in self._seen:
                    continue
                self._seen[key] = None
                if len(self._seen) > 1000:
                    self._seen.popitem(last=False)
            return event

    async def _drop(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2)

    async def _reconnect(self) -> None:
        await self._drop()
        backoff = RetryDelay(0.2, 5.0)
        while not self._closed:
            try:
                await self._open()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(backoff.next())

    async def close(self) -> None:
        self._closed = True
        await self._drop()
        self._put(_CLOSED)  # wakes an iteration waiting for the next event


def subscribe(nats_url: str, cluster: str, *, connect_timeout: float = 5.0, reconnect: bool = True,
              auth: Mapping[str, str] | None = None) -> EventSubscription:
    """Follow a cluster's events: ``async with subscribe(url, cluster) as events: async for e in events``."""
    return EventSubscription(nats_url, cluster, connect_timeout=connect_timeout, reconnect=reconnect, auth=auth)
