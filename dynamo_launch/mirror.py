"""The etcd mirror: leadership for one cluster, and its status for viewers on other nodes.

Everything lives under ``/dynamo-launch/<cluster>/``::

    leader              "pid 123 on head1 since 2025-01-02 03:04:05 UTC" — attached to the daemon's
                        lease: it disappears when the daemon stops (close) or dies (lease expiry)
    heartbeat           {"holder", "time", "ttl"} — same lease, rewritten every ``heartbeat_interval``
    status              the whole ``daemon.snapshot.snapshot()`` as JSON: what ``status --etcd`` shows
    processes/<name>    one process of that snapshot (JSON)
    hosts/<name>        one host of that snapshot (JSON)

Only the daemon that holds the ``leader`` key writes: every write is a transaction fenced on
the leader key's create revision, so a daemon that lost its lease (a partition longer than the
TTL) and was replaced can never overwrite its successor's status.

Supervision never waits for etcd: :meth:`Mirror.publish` only stores the latest snapshot and
wakes the background task, which writes what changed (ignoring ``now`` and ``uptime``, which
change on every snapshot) and, while etcd is unreachable, retries with backoff (0.2 s doubling to
5 s) and writes the latest snapshot when it is back.

Usage (the daemon)::

    from dynamo_launch.errors import LeaderHeld, MirrorError
    from dynamo_launch.mirror import Mirror

    mirror = Mirror("prod", "http://10.0.0.1:2379", holder=f"pid {os.getpid()} on {socket.gethostname()}")
    try:
        await mirror.acquire_leadership(ttl=10)   # LeaderHeld: another daemon supervises "prod"
    except LeaderHeld as e:
        raise SystemExit(str(e))                  # "cluster prod is already supervised by pid 77 on head1 since …"
    except MirrorError:
        mirror.start()                            # etcd not up yet (we start it ourselves): acquire when it is
    ...
    mirror.publish(snapshot(daemon))              # after every change; never blocks
    ...
    await mirror.close()                          # last write (briefly), revoke the lease: leadership released

and a viewer on any node (``status --etcd``)::

    from dynamo_launch.mirror import read_status
    snap = await read_status("http://10.0.0.1:2379", "prod")   # MirrorError if unreachable / never published
    print(render(snap))

The small :class:`EtcdClient` adapter (:mod:`dynamo_launch.etcd`) is the only code that touches ``aetcd``/gRPC; it turns
their errors into :class:`MirrorError` (one line, naming the endpoints). ``aetcd`` is imported
lazily, so importing this module is cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from .errors import LeaderHeld, MirrorError, NotPublished
from .etcd import KV, MAX_TXN_OPS, TLS, EtcdClient, parse_endpoints
from .retry import RetryDelay

__all__ = [
    "KV",
    "EtcdClient",
    "Mirror",
    "parse_endpoints",
    "read_status",
]

log = structlog.get_logger("dynamo_launch.mirror")

ROOT = "/dynamo-launch"


# --- the mirror -------------------------------------------------------------------------------------------


def _printable(text: str, limit: int = 200) -> str:
    """``text`` from etcd with control characters replaced (it ends up in messages and logs)."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def _stable(key: str, value: Any) -> Any:
    """``value`` without the fields that change on every snapshot (compared to skip no-op writes)."""
    if isinstance(value, dict):
        if key.endswith("/status"):
            value = {k: v for k, v in value.items() if k != "now"}
            value["processes"] = [_stable("/processes/", p) for p in value.get("processes") or []]
        elif "/processes/" in key:
            value = {k: v for k, v in value.items() if k != "uptime"}
    return value


def _fingerprint(key: str, raw: bytes) -> bytes:
    try:
        return _canonical(_stable(key, json.loads(raw)))
    except ValueError:
        return raw


class Mirror:
    """Leadership of ``cluster`` and its status mirrored to etcd (module docstring for the layout).

    ``holder`` names this daemon for the message another one gets, e.g. ``"pid 123 on head1"``
    (`` since <UTC time>`` is appended). ``on_conflict(error)`` is called (from the background
    task) when the leader key turns out to be held by someone else while this mirror wanted it:
    at a background acquisition (etcd was down when the daemon started), or after this daemon's
    lease ran out (a partition longer than the TTL) and another daemon took over. Writes stop
    until the key is free again.

    State for ``status``/logs: ``is_leader``, ``connected``, ``last_error``, ``last_write``
    (wall time), ``synced`` (the latest published snapshot is in etcd).
    """

    def __init__(self, cluster: str, endpoints: str | Sequence[str], holder: str, *, ttl: float = 10.0,
                 timeout: float = 3.0, heartbeat_interval: float = 10.0,
                 on_conflict: Callable[[LeaderHeld], None] | None = None, starting: bool = False,
                 auth: tuple[str, str] | None = None, tls: TLS | None = None):
        self.cluster = cluster
        # ``starting``: the launcher is bringing this etcd up itself, so not answering before the
        # first connection is expected (logged at info), not a problem (a warning).
        self._starting = starting
        self.prefix = f"{ROOT}/{cluster}"
        self.leader_key = f"{self.prefix}/leader"
        self.heartbeat_key = f"{self.prefix}/heartbeat"
        self.status_key = f"{self.prefix}/status"
        self.client = EtcdClient(endpoints, timeout=timeout, auth=auth, tls=tls)
        self.endpoints = self.client.endpoints
        self.holder = holder
        self.ttl = max(2, math.ceil(ttl))
        self.heartbeat_interval = heartbeat_interval
        self.on_conflict = on_conflict
        self.is_leader = False
        self.connected = False
        self.last_error = ""
        self.last_write: float | None = None
        self._lease: int | None = None
        self._leader_rev = 0
        self._leader_value = ""
        self._snapshot: dict[str, Any] | None = None
        self._version = 0            # bumped by every publish
        self._written_version = 0    # the version whose keys are all in etcd
        self._written: dict[str, bytes] | None = None  # key → fingerprint of what etcd holds (None: unknown)
        self._next_keepalive = 0.0
        self._next_heartbeat = 0.0
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._conflict_reported = ""
        self._log = log.bind(cluster=cluster, etcd=self.endpoints)

    # -- leadership ---------------------------------------------------------------------------------------

    async def acquire_leadership(self, ttl: float | None = None, *, wait: float = 0.0) -> None:
        """Become the cluster's leader or raise: :class:`LeaderHeld` (naming the holder) or :class:`MirrorError`.

        ``wait`` > 0: while the key is held, keep trying (every 0.5 s) for up to that many
        seconds — a replacement daemon waiting for a crashed one's lease to run out. On success
        the background task (lease keepalive, heartbeat, status writes) is started.
        """
        if ttl is not None:
            self.ttl = max(2, math.ceil(ttl))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait)
        while True:
            try:
                await self._acquire_once()
                break
            except LeaderHeld:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(min(0.5, max(0.05, deadline - loop.time())))
        self.start()

    async def _held(self, current: KV | None) -> LeaderHeld:
        holder = _printable(current.value.decode(errors="replace")) if current is not None else "another daemon"
        remaining = None
        if current is not None and current.lease:
            with contextlib.suppress(MirrorError):
                remaining = await self.client.lease_ttl(current.lease)
        return LeaderHeld(self.cluster, holder, key=self.leader_key, endpoints=self.endpoints, ttl=remaining)

    async def _live_holder(self, current: KV) -> bool:
        """True when ``current`` (the leader key) is held by a live lease, as every daemon's is.

        A key without a lease, or whose lease is gone, was not written by a running daemon (a
        forgery, or a leftover of a key written by hand): it blocks nobody. It is removed only if
        it is still the very key read (same create and mod revision), so a daemon that takes the
        key in between is never displaced.
        """
        ttl = 0
        if current.lease:
            try:
                ttl = await self.client.lease_ttl(current.lease)
            except MirrorError as e:
                if "not found" not in str(e):
                    raise
        if ttl > 0:
            return True
        holder = _printable(current.value.decode(errors="replace"))
        self._log.warning("the leader key is not held by a live lease (forged or stale): taking over",
                          key=self.leader_key, holder=holder, lease=f"{current.lease:x}")
        await self.client.write([(self.leader_key, None)], if_created_at=(self.leader_key, current.create_revision),
                                if_mod_revision=current.mod_revision)
        return False

    async def _acquire_once(self) -> None:
        current = await self.client.get(self.leader_key)
        if current is not None and await self._live_holder(current):  # held: say by whom, granting no lease for nothing
            raise await self._held(current)
        lease = await self.client.grant_lease(self.ttl)
        value = f"{self.holder} since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}"
        try:
            created, current = await self.client.create_if_absent(self.leader_key, value, lease=lease)
        except BaseException:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.client.revoke_lease(lease)
            raise
        if not created and (current is None or current.lease != lease):  # lost a race for it
            with contextlib.suppress(MirrorError):
                await self.client.revoke_lease(lease)
            raise await self._held(current)
        assert current is not None
        self._lease, self._leader_rev, self._leader_value = lease, current.create_revision, value
        self.is_leader, self.connected, self.last_error, self._starting = True, True, "", False
        self._conflict_reported = ""
        self._written_version = -1  # rewrite (what differs from etcd) even if nothing was published since
        now = asyncio.get_running_loop().time()
        self._next_keepalive = now + self.ttl / 3
        self._next_heartbeat = now  # at once: the heartbeat is attached to the new lease
        self._written = None  # read back at the first write: a previous daemon's keys are diffed against
        self._log.info("holding cluster leadership in etcd", key=self.leader_key, ttl=self.ttl)

    def _lost(self, why: str) -> None:
        if self.is_leader:
            self._log.warning("lost cluster leadership in etcd", reason=why)
        self.is_leader, self._lease, self._leader_rev, self._written = False, None, 0, None

    # -- publishing ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background task (idempotent); it acquires leadership itself when needed."""
        if self._task is None or self._task.done():
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"etcd-mirror-{self.cluster}")

    def publish(self, snapshot: dict[str, Any]) -> None:
        """Remember ``snapshot`` as the one to mirror; returns at once (the background task writes it)."""
        self._snapshot = snapshot
        self._version += 1
        self._synced.clear()
        self._wake.set()

    @property
    def synced(self) -> bool:
        """True when the latest published snapshot is in etcd."""
        return self._written_version == self._version and self.is_leader

    async def wait_synced(self, timeout: float) -> bool:
        """Wait until the latest published snapshot is in etcd; False after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._synced_wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _synced_wait(self) -> None:
        while not self.synced:
            self._synced.clear()
            await self._synced.wait()

    def _desired(self, snap: dict[str, Any]) -> dict[str, tuple[bytes, bytes]]:
        """key → (value, fingerprint) for the status key and the per-process / per-host keys."""
        out = {self.status_key: snap}
        for p in snap.get("processes") or []:
            out[f"{self.prefix}/processes/{p['name']}"] = p
        for h in snap.get("hosts") or []:
            out[f"{self.prefix}/hosts/{h['name']}"] = h
        return {k: (_canonical(v), _canonical(_stable(k, v))) for k, v in out.items()}

    async def _write_snapshot(self) -> None:
        version, snap = self._version, self._snapshot
        if self._written_version == version:
            return
        if snap is None:  # nothing published yet
            self._written_version = version
            self._synced.set()
            return
        desired = self._desired(snap)
        if self._written is None:  # what etcd holds (a previous daemon's keys included)
            self._written = {kv.key: _fingerprint(kv.key, kv.value) for kv in await self.client.get_prefix(self.prefix + "/")
                             if kv.key not in (self.leader_key, self.heartbeat_key)}
        written = self._written
        ops: list[tuple[str, bytes | None]] = [(k, v) for k, (v, fp) in desired.items() if written.get(k) != fp]
        managed = (f"{self.prefix}/processes/", f"{self.prefix}/hosts/", self.status_key)
        ops += [(k, None) for k in written if k not in desired and k.startswith(managed)]
        # The status key first, so `status --etcd` sees the news even if a later chunk fails.
        ops.sort(key=lambda op: op[0] != self.status_key)
        for i in range(0, len(ops), MAX_TXN_OPS):
            chunk = ops[i:i + MAX_TXN_OPS]
            ok = await self.client.write(chunk, if_created_at=(self.leader_key, self._leader_rev))
            if not ok:
                self._lost("the leader key is no longer ours")
                return
            for k, v in chunk:
                if v is None:
                    written.pop(k, None)
                else:
                    written[k] = desired[k][1]
            self._written = written
        if ops:
            self.last_write = time.time()
        self._written_version = version
        self._synced.set()

    async def _heartbeat(self) -> None:
        value = _canonical({"holder": self._leader_value, "time": time.time(), "ttl": self.ttl})
        ok = await self.client.write([(self.heartbeat_key, value)], if_created_at=(self.leader_key, self._leader_rev),
                                     lease=self._lease)
        if not ok:
            self._lost("the leader key is no longer ours")

    async def _step(self) -> None:
        loop = asyncio.get_running_loop()
        if self._lease is None:
            await self._acquire_once()
        if loop.time() >= self._next_keepalive:
            assert self._lease is not None
            if await self.client.keepalive(self._lease) <= 0:
                self._lost(f"lease {self._lease:x} expired")
                return
            self._next_keepalive = loop.time() + self.ttl / 3
        if self._lease is not None and loop.time() >= self._next_heartbeat:
            await self._heartbeat()
            self._next_heartbeat = loop.time() + self.heartbeat_interval
        if self._lease is not None:
            await self._write_snapshot()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = RetryDelay()
        while not self._closing:
            self._wake.clear()  # before the attempt: a retry_now() during it must not be lost
            try:
                await self._step()
            except LeaderHeld as e:
                self.is_leader = False
                if self._conflict_reported != e.holder:
                    self._conflict_reported = e.holder
                    self._log.error("another daemon holds this cluster's leadership in etcd", holder=e.holder)
                    if self.on_conflict is not None:
                        with contextlib.suppress(Exception):
                            self.on_conflict(e)
                await asyncio.sleep(min(self.ttl / 2, 2.0))
                continue
            except MirrorError as e:
                if not self.connected and not self.last_error and self._starting:
                    self._log.info("etcd not answering yet (the launcher starts it): the mirror begins once it does")
                elif self.connected or not self.last_error:
                    self._log.warning("etcd unreachable: supervision goes on, the mirror catches up when it is back",
                                      error=str(e))
                self.connected, self.last_error = False, str(e)
                with contextlib.suppress(TimeoutError):  # retry_now() cuts the wait short
                    await asyncio.wait_for(self._wake.wait(), backoff.next())
                continue
            except Exception as e:  # a bug must not kill the mirror silently, nor spin
                self._log.exception("etcd mirror step failed", error=str(e))
                self.last_error = f"{type(e).__name__}: {e}"
                await asyncio.sleep(backoff.next())
                continue
            if not self.connected:
                self._log.info("etcd reachable again: mirror caught up")
            self.connected, self.last_error, self._starting = True, "", False
            backoff.reset()
            if self._lease is None:
                continue  # leadership just lost: try again at once (conflicts back off above)
            due = min(self._next_keepalive, self._next_heartbeat) - loop.time()
            if self._written_version != self._version or due <= 0:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), due)

    def retry_now(self) -> None:
        """etcd should answer now (ours just became ready): try at once instead of after the backoff."""
        self._wake.set()

    def state(self) -> dict[str, Any]:
        """The mirror's health, for ``status`` and logs."""
        return {"endpoints": self.endpoints, "leader": self.is_leader, "connected": self.connected,
                "error": self.last_error, "last_write": self.last_write, "synced": self.synced}

    async def close(self, *, release: bool = True, flush_timeout: float = 2.0) -> None:
        """Stop mirroring. ``release`` (default): write the latest snapshot (for up to
        ``flush_timeout`` s), then revoke the lease — the leader and heartbeat keys vanish and
        another daemon may take over at once. ``release=False`` leaves the lease to run out, as a
        crashed daemon would (tests; or a hand-over that must keep others out for one TTL)."""
        if release and self._task is not None and not self._task.done() and self.is_leader:
            await self.wait_synced(flush_timeout)
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if release and self._lease is not None:
            try:
                await self.client.revoke_lease(self._lease)
                self._log.info("released cluster leadership in etcd")
            except MirrorError as e:
                self._log.warning("could not release leadership in etcd; it ends when the lease runs out",
                                  error=str(e), ttl=self.ttl)
        self._lease, self.is_leader = None, False
        await self.client.close()


_NUM, _OPT = (int, float), type(None)
_SHAPE: dict[str, Any] = {
    "cluster": str, "launch_id": str, "daemon_pid": int, "started": _NUM, "now": _NUM,
    "hosts": [{"name": str, "address": str, "up": bool, "error": (str, _OPT)}],
    "gangs": [{"name": str, "state": str, "generation": int, "restarts": int, "members": [str]}],
    "processes": [{"host": str, "name": str, "role": str, "state": str, "reason": (str, _OPT), "pid": (int, _OPT),
                   "uptime": (*_NUM, _OPT), "restarts": int, "generation": int, "health": (str, _OPT),
                   "last_exit": ({"code": (int, _OPT), "signal": (int, _OPT)}, _OPT)}],
}
"""The fields (and their types) of a status that ``status`` reads: what :func:`read_status` checks."""


def _shape_problem(value: Any, shape: Any, where: str) -> str:
    """Where ``value`` departs from ``shape`` (a type, a tuple of choices, ``[item shape]`` or a
    dict of field shapes), as ``where.field: expected …``; "" when it fits."""
    choices = shape if isinstance(shape, tuple) else (shape,)
    for choice in choices:
        if isinstance(choice, dict):
            if isinstance(value, dict):
                return next(filter(None, (_shape_problem(value.get(k), s, f"{where}.{k}".lstrip("."))
                                          for k, s in choice.items())), "")
        elif isinstance(choice, list):
            if isinstance(value, list):
                return next(filter(None, (_shape_problem(v, choice[0], f"{where}[{i}]") for i, v in enumerate(value))), "")
        elif isinstance(value, choice) and not (isinstance(value, bool) and choice is not bool):
            return ""
    names = [("object" if isinstance(c, dict) else "list" if isinstance(c, list) else
              "null" if c is _OPT else c.__name__) for c in choices]
    return f"{where or 'the value'}: expected {' or '.join(dict.fromkeys(names))}, found {type(value).__name__}"


def _status_problem(snap: Any) -> str:
    """What makes ``snap`` (read back from etcd, so written by anyone with access) unusable as a
    status; "" when it has the shape the daemon writes."""
    return _shape_problem(snap, _SHAPE, "")


async def read_status(endpoints: str | Sequence[str], cluster: str, *, timeout: float = 5.0,
                      auth: tuple[str, str] | None = None, tls: TLS | None = None) -> dict[str, Any]:
    """The cluster's status as its daemon last published it (``status --etcd``), from any node.

    Returns the snapshot (same shape as the control socket's ``status``) plus ``"mirror"``:
    ``{"published" (the daemon's clock), "heartbeat" (time or None), "leader" (holder or None),
    "daemon_alive" (its lease-held heartbeat exists)}``. While the daemon is alive, ``now`` and the
    running processes' ``uptime`` are advanced to this node's clock (the daemon skips writes that
    only change those). Raises :class:`NotPublished` when no daemon published the cluster, and
    :class:`MirrorError` when etcd cannot be reached or the key does not hold a status (one
    line: what is wrong, where). ``auth``: ``(user, password)`` for an etcd with auth on; ``tls``:
    the CA (and client certificate) of an ``https://`` etcd.
    """
    client = EtcdClient(endpoints, timeout=timeout, auth=auth, tls=tls)
    prefix = f"{ROOT}/{cluster}"
    try:
        status = await client.get(f"{prefix}/status")
        if status is None:
            raise NotPublished(f"no daemon has published cluster {cluster} in etcd at {client.endpoints}")
        leader = await client.get(f"{prefix}/leader")
        heartbeat = await client.get(f"{prefix}/heartbeat")
    finally:
        await client.close()
    try:
        snap = json.loads(status.value)
    except ValueError:
        raise MirrorError(f"etcd key {prefix}/status at {client.endpoints} does not hold JSON") from None
    problem = _status_problem(snap)
    if problem:
        raise MirrorError(f"etcd key {prefix}/status at {client.endpoints} does not hold a dynamo-launch status: {problem}")
    beat: dict[str, Any] = {}
    if heartbeat is not None:
        with contextlib.suppress(ValueError):
            beat = json.loads(heartbeat.value)
    alive = heartbeat is not None
    published = snap.get("now")
    if alive and isinstance(published, (int, float)):
        delta = max(0.0, time.time() - published)
        snap["now"] = published + delta
        for p in snap.get("processes") or []:
            if isinstance(p.get("uptime"), (int, float)):
                p["uptime"] = round(p["uptime"] + delta, 1)
    snap["mirror"] = {"published": published, "heartbeat": beat.get("time") if alive else None,
                      "leader": leader.value.decode(errors="replace") if leader is not None else None,
                      "daemon_alive": alive}
    return snap
