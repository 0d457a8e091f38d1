"""The one adapter over the etcd client library (``aetcd``: asyncio, modern protobuf).

Only this module touches ``aetcd``/gRPC; their errors become :class:`MirrorError` (one line,
naming the endpoints). ``aetcd`` is imported lazily, so importing this module is cheap. The
``etcd3`` package is not used: it fails to import with protobuf ≥ 4, which Ray pulls in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import MirrorError
from .health import closed_port

__all__ = ["KV", "TLS", "EtcdClient", "endpoints_tls", "parse_endpoints"]

MAX_TXN_OPS = 100  # etcd's default --max-txn-ops is 128


@dataclass(frozen=True)
class KV:
    """One key as read from etcd (key and value decoded/raw as given)."""

    key: str
    value: bytes
    lease: int = 0
    create_revision: int = 0
    mod_revision: int = 0


def parse_endpoints(endpoints: str | Sequence[str]) -> list[tuple[str, int]]:
    """``"http://a:2379,b:2379"`` or a list of such → ``[("a", 2379), ("b", 2379)]``.

    ``http`` or ``https`` (all alike: :func:`endpoints_tls` tells which); a missing port is 2379.
    ValueError when malformed.
    """
    items = [e.strip() for e in (endpoints.split(",") if isinstance(endpoints, str) else endpoints)]
    out = []
    for item in filter(None, items):
        url = urlsplit(item if "://" in item else f"http://{item}")
        if url.scheme not in ("http", "https"):
            raise ValueError(f"etcd endpoint {item!r}: only http:// and https:// endpoints are supported")
        try:
            port = url.port or 2379
        except ValueError:
            raise ValueError(f"etcd endpoint {item!r}: bad port") from None
        if not url.hostname:
            raise ValueError(f"etcd endpoint {item!r}: no host")
        out.append((url.hostname, port))
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


def endpoints_tls(endpoints: str | Sequence[str]) -> bool:
    """True when the endpoints are ``https://`` (all must be the same; ValueError when mixed)."""
    items = [e.strip() for e in (endpoints.split(",") if isinstance(endpoints, str) else endpoints)]
    schemes = {urlsplit(e).scheme if "://" in e else "http" for e in items if e}
    if len(schemes) > 1:
        raise ValueError("etcd endpoints mix http:// and https://")
    return schemes == {"https"}


@dataclass(frozen=True)
class TLS:
    """What an ``https://`` etcd client trusts and shows: the CA (PEM; None: the system's CAs) and
    an optional client certificate and key (PEM). Never logged."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    def __repr__(self) -> str:
        return "TLS(...)"


def _aetcd() -> Any:
    """``aetcd``, imported on first use: grpc is heavy, and `status` without --etcd must not pay for it."""
    # gRPC's C core logs a failed TLS handshake to stderr itself (read when grpc loads); the
    # MirrorError says it in one line
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import aetcd

    return aetcd


async def _aetcd_off_loop() -> Any:
    """``aetcd`` for a coroutine: its first import (gRPC, ~30 ms of CPU) runs in a thread, so the
    event loop keeps serving everything else meanwhile (at ``up``: every host's SSH handshake)."""
    if "aetcd" not in sys.modules:
        await asyncio.to_thread(_aetcd)
    return _aetcd()


def _tls_client_class() -> Any:
    """``aetcd.Client`` over a TLS channel: aetcd itself opens only ``grpc.aio.insecure_channel``
    (aetcd 1.0 has no TLS option), so this subclass opens a ``secure_channel`` instead; the rest
    of its ``connect`` (authenticate, stubs, watcher) is aetcd's, unchanged."""
    aetcd = _aetcd()
    import grpc
    from aetcd import rpc, watcher

    class TlsClient(aetcd.Client):  # type: ignore[misc]
        def __init__(self, *args: Any, tls: TLS, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)

        @aetcd.client._handle_errors  # gRPC errors become aetcd's, as in aetcd.Client.connect
        async def connect(self) -> None:
            if self._connected.is_set():
                return
            if self._is_connecting:
                await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
                return
            try:
                self._is_connecting = True
                target = f"{self._host}:{self._port}"
                self.channel = rpc.secure_channel(target, self._credentials, options=self._options.items())
                if self._username is not None and self._password is not None:
                    self.auth_stub = rpc.AuthStub(self.channel)
                    request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                    resp = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                    self.metadata = (("token", resp.token),)
                self.kvstub = rpc.KVStub(self.channel)
                self.clusterstub = rpc.ClusterStub(self.channel)
                self.leasestub = rpc.LeaseStub(self.channel)
                self.maintenancestub = rpc.MaintenanceStub(self.channel)
                self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)
                self._connected.set()
            finally:
                self._is_connecting = False

    return TlsClient


_AUTH_ERRORS = re.compile(r"auth|token|permission denied|user name|password", re.IGNORECASE)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unavailable_reason(details: str) -> str:
    """gRPC's UNAVAILABLE details, shortened: "…: Failed to connect to remote host: Connection refused" → the end."""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return "TLS: its certificate is not signed by the CA given (ETCD_AUTH_CA, --etcd-ca, etcd.ca)"
    if "Tls handshake failed" in details or "WRONG_VERSION_NUMBER" in details:
        return "TLS handshake failed (http:// for an https:// etcd, or the reverse?)"
    marker = "Failed to connect to remote host: "
    if marker in details:
        return _one_line(details.rsplit(marker, 1)[1])
    return _one_line(details or "unavailable")


def _refusal(e: OSError) -> str:
    """Why a TCP connection was turned away, as gRPC words it ("Connection refused")."""
    return os.strerror(e.errno) if e.errno else _one_line(str(e))


class EtcdClient:
    """A small asyncio etcd v3 client over ``aetcd``: str keys, bytes values, :class:`MirrorError`.

    ``endpoints``: comma-separated ``http://host:port`` or ``https://…`` (or a list); ``tls``: the
    CA (and client certificate) of an ``https`` etcd (:class:`TLS`; without one, the system's CAs); ``auth``: ``(user, password)``
    when etcd has auth on (a rejected or expired token re-authenticates at the next call). Calls go to one endpoint at a
    time; when it cannot be reached the next one is tried (once per call, for requests that never
    left); every call has ``timeout`` seconds. Not thread-safe; one event loop.

    ::

        c = EtcdClient("http://127.0.0.1:2379")
        lease = await c.grant_lease(10)
        created, current = await c.create_if_absent("/k", b"v", lease=lease)
        await c.keepalive(lease)            # remaining TTL; 0 when the lease is gone
        await c.put("/a/b", b"x"); [kv.key for kv in await c.get_prefix("/a/")]
        await c.close()
    """

    def __init__(self, endpoints: str | Sequence[str], *, timeout: float = 5.0, auth: tuple[str, str] | None = None,
                 tls: TLS | None = None):
        self._auth = auth  # (user, password) for an etcd with auth on: never logged
        try:
            self._targets = parse_endpoints(endpoints)
            https = endpoints_tls(endpoints)
        except ValueError as e:
            raise MirrorError(str(e)) from None
        self._tls = (tls or TLS()) if https else None
        self._scheme = "https" if https else "http"
        self.endpoints = ",".join(f"{self._scheme}://{h}:{p}" for h, p in self._targets)
        self.timeout = timeout
        self._index = 0
        self._client: Any = None

    # -- plumbing -----------------------------------------------------------------------------------------

    def _new_client(self) -> Any:
        aetcd = _aetcd()

        host, port = self._targets[self._index]
        # Reconnect quickly once etcd is back (gRPC's default backoff grows to 2 minutes).
        options = {"grpc.initial_reconnect_backoff_ms": 100, "grpc.min_reconnect_backoff_ms": 100,
                   "grpc.max_reconnect_backoff_ms": 1000, "grpc.enable_retries": 0}
        user, password = self._auth or (None, None)
        if self._tls is not None:
            return _tls_client_class()(host=host, port=port, username=user, password=password, timeout=self.timeout,
                                       options=options, connect_wait_timeout=max(1, int(self.timeout)), tls=self._tls)
        return aetcd.Client(host=host, port=port, username=user, password=password, timeout=self.timeout, options=options,
                            connect_wait_timeout=max(1, int(self.timeout)))

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2)

    async def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(client)`` (a coroutine); translate every aetcd/gRPC error into MirrorError."""
        if "aetcd" not in sys.modules:
            await self._unless_all_closed()
        aetcd = await _aetcd_off_loop()

        reasons: list[tuple[str, str]] = []
        for _ in range(len(self._targets)):
            if self._client is None:
                self._client = self._new_client()
            host, port = self._targets[self._index]
            where = f"{self._scheme}://{host}:{port}"
            try:
                return await asyncio.wait_for(fn(self._client), self.timeout + 1)
            except asyncio.CancelledError:
                raise
            except aetcd.ConnectionFailedError as e:  # UNAVAILABLE: nothing was applied; try the next endpoint
                reasons.append((where, _unavailable_reason(str(e))))
                await self._drop_client()
                self._index = (self._index + 1) % len(self._targets)
                continue
            except (aetcd.ConnectionTimeoutError, TimeoutError):
                await self._drop_client()
                self._index = (self._index + 1) % len(self._targets)
                raise MirrorError(f"etcd {what} timed out after {self.timeout:g}s at {where}") from None
            except aetcd.ClientError as e:
                if _AUTH_ERRORS.search(str(e)):  # e.g. etcd restarted: its tokens are gone; a new client authenticates
                    await self._drop_client()
                raise MirrorError(f"etcd {what} failed at {where}: {_one_line(str(e) or type(e).__name__)}") from None
            except Exception as e:  # grpc internals (channel closed under us, usage errors): same contract
                await self._drop_client()
                raise MirrorError(f"etcd {what} failed at {where}: {_one_line(f'{type(e).__name__}: {e}')}") from None
        raise self._unreachable(reasons)

    def _unreachable(self, reasons: list[tuple[str, str]]) -> MirrorError:
        """The error of a call that no endpoint took: ``(endpoint, why)`` for each."""
        if len(reasons) == 1:
            return MirrorError(f"etcd unreachable at {reasons[0][0]}: {reasons[0][1]}")
        return MirrorError(f"etcd unreachable at {self.endpoints} ({'; '.join(f'{w}: {r}' for w, r in reasons)})")

    async def _unless_all_closed(self) -> None:
        """Before gRPC is loaded (~30 ms of CPU): when every endpoint turns a TCP connection away
        at once (refused, no route), raise what a call would have found, without loading it.
        Whatever else (one accepts, one is slow to answer) is left to the real call."""
        closed = await asyncio.gather(*(closed_port(h, p, min(1.0, self.timeout)) for h, p in self._targets))
        if all(closed):
            raise self._unreachable([(f"{self._scheme}://{h}:{p}", _refusal(e))
                                     for (h, p), e in zip(self._targets, closed) if e is not None])

    @staticmethod
    def _kv(raw: Any, key: str | None = None) -> KV:
        k = raw.key.decode(errors="replace") if key is None else key
        return KV(k, bytes(raw.value), int(raw.lease), int(raw.create_revision), int(raw.mod_revision))

    # -- operations ---------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Check that etcd answers (a read of one key); MirrorError when it does not."""
        await self.get("/dynamo-launch/")  # any key will do: this one is ours

    async def get(self, key: str) -> KV | None:
        r = await self._call("get", lambda c: c.get(key.encode()))
        return None if r is None else self._kv(r, key)

    async def get_prefix(self, prefix: str) -> list[KV]:
        r = await self._call("get", lambda c: c.get_prefix(prefix.encode(), sort_order="ascend"))
        return [self._kv(kv) for kv in r]

    async def put(self, key: str, value: bytes | str, *, lease: int | None = None) -> None:
        data = value.encode() if isinstance(value, str) else value
        await self._call("put", lambda c: c.put(key.encode(), data, lease=lease))

    async def delete(self, key: str) -> bool:
        """True when the key existed."""
        return await self._call("delete", lambda c: c.delete(key.encode())) is not None

    async def delete_prefix(self, prefix: str) -> int:
        r = await self._call("delete", lambda c: c.delete_prefix(prefix.encode()))
        return int(r.deleted)

    async def grant_lease(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        lease = await self._call("lease grant", lambda c: c.lease(int(ttl)))
        return int(lease.id)

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease`` once; the TTL granted again (0 when the lease no longer exists)."""
        reply = await self._call("lease keepalive", lambda c: c.refresh_lease(lease))
        return 0 if reply is None else max(0, int(reply.TTL))

    async def lease_ttl(self, lease: int) -> int:
        """Seconds left on ``lease`` (-1 or 0 when it is gone)."""
        info = await self._call("lease info", lambda c: c.get_lease_info(lease, keys=False))
        return int(info.TTL)

    async def lease_keys(self, lease: int) -> list[str] | None:
        """The keys attached to ``lease``, or None when it is gone."""
        info = await self._call("lease info", lambda c: c.get_lease_info(lease, keys=True))
        if int(info.TTL) <= 0:
            return None
        return [k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k) for k in info.keys]

    async def revoke_lease(self, lease: int) -> None:
        """Revoke ``lease`` (its keys are deleted); a lease that is already gone is fine."""
        try:
            await self._call("lease revoke", lambda c: c.revoke_lease(lease))
        except MirrorError as e:
            if "not found" not in str(e):
                raise

    async def create_if_absent(self, key: str, value: bytes | str, *, lease: int | None = None) -> tuple[bool, KV | None]:
        """Atomically create ``key`` unless it exists: ``(created, the key as it now is)``."""
        data = value.encode() if isinstance(value, str) else value

        async def txn(c: Any) -> Any:
            t = c.transactions
            k = key.encode()
            return await c.transaction(compare=[t.create(k) == 0],
                                       success=[t.put(k, data, lease=lease), t.get(k)],
                                       failure=[t.get(k)])

        succeeded, responses = await self._call("transaction", txn)
        current = None
        for resp in responses:
            if isinstance(resp, list) and resp:
                current = self._kv(resp[0][1], key)
        return bool(succeeded), current

    async def write(self, ops: Iterable[tuple[str, bytes | None]], *, if_created_at: tuple[str, int] | None = None,
                    lease: int | None = None, if_mod_revision: int | None = None) -> bool:
        """Put (value bytes) or delete (value None) several keys in one transaction.

        ``if_created_at=(key, revision)``: only if ``key`` still exists with that create revision
        (the leadership fence); False when it does not (nothing written). ``if_mod_revision``: and
        only if that key was last changed at that revision. ``lease`` applies to the puts.
        """
        ops = list(ops)

        async def txn(c: Any) -> Any:
            t = c.transactions
            compare = [] if if_created_at is None else [t.create(if_created_at[0].encode()) == if_created_at[1]]
            if if_created_at is not None and if_mod_revision is not None:
                compare.append(t.mod(if_created_at[0].encode()) == if_mod_revision)
            success = [t.put(k.encode(), v, lease=lease) if v is not None else t.delete(k.encode()) for k, v in ops]
            return await c.transaction(compare=compare, success=success, failure=[])

        succeeded, _ = await self._call("transaction", txn)
        return bool(succeeded)

    async def close(self) -> None:
        await self._drop_client()
