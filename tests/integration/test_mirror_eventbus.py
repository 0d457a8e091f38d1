"""The etcd mirror and the NATS event bus against real servers (tests/infra.py).

Every test runs its coroutine under a deadline; every wait in it is bounded.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import time
from typing import TYPE_CHECKING

import pytest

from dynamo_launch.errors import EventBusError, LeaderHeld, MirrorError, NotPublished
from dynamo_launch.eventbus import EventBus, subject_for, subscribe
from dynamo_launch.mirror import EtcdClient, Mirror, read_status

if TYPE_CHECKING:
    from tests.infra import EtcdServer, NatsServer


CLUSTER = "demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def arun(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def make_snapshot(n: int = 3, *, state: str = "READY", now: float | None = None, uptime: float = 5.0) -> dict:
    """The shape of dynamo_launch.daemon.snapshot.snapshot()."""
    now = time.time() if now is None else now
    return {
        "cluster": CLUSTER, "launch_id": "abc123def456", "daemon_pid": 4242, "inventory": "/etc/dl/inventory.toml",
        "started": now - 100, "now": now,
        "hosts": [{"name": "head", "address": "127.0.0.1", "up": True, "error": ""},
                  {"name": "node2", "address": "10.0.0.2", "up": True, "error": ""}],
        "processes": [{"host": "head" if i == 0 else "node2", "name": f"proc-{i}", "role": "generic", "group": None,
                       "state": state, "reason": "", "pid": 1000 + i, "uptime": uptime, "restarts": 0,
                       "generation": 1, "last_exit": None, "health": ""} for i in range(n)],
        "gangs": [],
    }


async def until(predicate, timeout: float, interval: float = 0.05) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(interval)
    return False


def strip_volatile(snap: dict) -> dict:
    snap = copy.deepcopy(snap)
    snap.pop("now", None)
    snap.pop("mirror", None)
    for p in snap["processes"]:
        p.pop("uptime", None)
    return snap


# --- leadership ------------------------------------------------------------------------------------------


def test_leadership_acquired_refused_with_holder_and_taken_over_after_close(etcd_endpoint):
    async def main():
        first = Mirror(CLUSTER, etcd_endpoint, "pid 123 on head1", ttl=5)
        second = Mirror(CLUSTER, etcd_endpoint, "pid 456 on head2", ttl=5)
        client = EtcdClient(etcd_endpoint)
        try:
            await first.acquire_leadership(5)
            assert first.is_leader
            leader = await client.get(f"/dynamo-launch/{CLUSTER}/leader")
            assert leader is not None and leader.value.decode().startswith("pid 123 on head1 since ")
            assert leader.lease != 0
            assert await until(lambda: client.get(f"/dynamo-launch/{CLUSTER}/heartbeat"), 5)
            beat = json.loads((await client.get(f"/dynamo-launch/{CLUSTER}/heartbeat")).value)
            assert beat["holder"].startswith("pid 123 on head1") and abs(beat["time"] - time.time()) < 5

            with pytest.raises(LeaderHeld) as refused:
                await second.acquire_leadership(5)
            e = refused.value
            assert e.holder.startswith("pid 123 on head1 since ")
            assert f"cluster {CLUSTER} is already supervised by pid 123 on head1 since" in str(e)
            assert etcd_endpoint in str(e)
            assert not second.is_leader
            # A refused attempt leaves no lease behind holding anything.
            assert (await client.get(f"/dynamo-launch/{CLUSTER}/leader")).value == leader.value

            await first.close()  # revokes the lease: leader and heartbeat keys go at once
            assert await client.get(f"/dynamo-launch/{CLUSTER}/leader") is None
            assert await client.get(f"/dynamo-launch/{CLUSTER}/heartbeat") is None
            await second.acquire_leadership(5)
            assert second.is_leader
            assert (await client.get(f"/dynamo-launch/{CLUSTER}/leader")).value.decode().startswith("pid 456 on head2")
        finally:
            await first.close()
            await second.close()
            await client.close()

    arun(main())


def test_lease_kept_alive_then_taken_over_after_crash(etcd_endpoint):
    """A crashed daemon (keepalive stopped, lease not revoked) is replaced once its lease runs out."""

    async def main():
        first = Mirror(CLUSTER, etcd_endpoint, "pid 1 on crashy", ttl=2)
        second = Mirror(CLUSTER, etcd_endpoint, "pid 2 on standby", ttl=2)
        try:
            await first.acquire_leadership(2)
            await asyncio.sleep(3.5)  # > TTL: only the background keepalive keeps the key
            with pytest.raises(LeaderHeld):
                await second.acquire_leadership(2)
            assert first.is_leader

            await first.close(release=False)  # "crash": no more keepalives, lease left to expire
            with pytest.raises(LeaderHeld) as still:
                await second.acquire_leadership(2)  # not yet: the lease is still running
            assert "pid 1 on crashy" in str(still.value)
            t0 = time.monotonic()
            await second.acquire_leadership(2, wait=15)
            waited = time.monotonic() - t0
            assert second.is_leader
            assert waited < 6, f"takeover took {waited:.1f}s for a 2s lease"
        finally:
            await first.close()
            await second.close()

    arun(main())


def test_background_acquisition_reports_conflict(etcd_endpoint):
    async def main():
        conflicts: list[LeaderHeld] = []
        first = Mirror(CLUSTER, etcd_endpoint, "pid 1 on a", ttl=4)
        second = Mirror(CLUSTER, etcd_endpoint, "pid 2 on b", ttl=4, on_conflict=conflicts.append)
        try:
            await first.acquire_leadership()
            second.start()
            second.publish(make_snapshot())
            assert await until(lambda: bool(conflicts), 10)
            assert "pid 1 on a" in str(conflicts[0])
            assert not second.is_leader
            # The refused mirror wrote nothing.
            with pytest.raises(NotPublished):
                await read_status(etcd_endpoint, CLUSTER)
            # Once the first is gone, the second takes over by itself and writes its snapshot.
            await first.close()
            assert await second.wait_synced(15)
            assert second.is_leader
            assert (await read_status(etcd_endpoint, CLUSTER))["mirror"]["leader"].startswith("pid 2 on b")
            assert len(conflicts) == 1  # reported once, not on every retry
        finally:
            await first.close()
            await second.close()

    arun(main())


def test_lost_lease_is_noticed_and_writes_are_fenced(etcd_endpoint):
    """A daemon whose lease ran out (a partition longer than the TTL; here: revoked under it) and
    whose place was taken never overwrites the new leader's status; if nobody took it, it re-acquires."""

    async def main():
        conflicts: list[LeaderHeld] = []
        old = Mirror(CLUSTER, etcd_endpoint, "pid 1 on old", ttl=3, on_conflict=conflicts.append)
        new = Mirror(CLUSTER, etcd_endpoint, "pid 2 on new", ttl=3)
        admin = EtcdClient(etcd_endpoint)
        try:
            await old.acquire_leadership()
            a = make_snapshot(1)
            a["launch_id"] = "A"
            old.publish(a)
            assert await old.wait_synced(10)

            # Lease gone, nobody else wants it: the mirror notices at its next keepalive and re-acquires.
            first_lease = old._lease
            await admin.revoke_lease(first_lease)
            assert await until(lambda: old.is_leader and old._lease not in (None, first_lease), 10)
            assert (await admin.get(f"/dynamo-launch/{CLUSTER}/leader")).value.decode().startswith("pid 1 on old")
            assert await until(lambda: admin.get(f"/dynamo-launch/{CLUSTER}/heartbeat"), 15)  # on the new lease

            # Lease gone and another daemon took over before the old one noticed.
            await admin.revoke_lease(old._lease)
            await new.acquire_leadership()
            b = make_snapshot(2)
            b["launch_id"] = "B"
            new.publish(b)
            assert await new.wait_synced(10)
            c = make_snapshot(3)
            c["launch_id"] = "C"
            old.publish(c)
            assert await until(lambda: bool(conflicts), 10)
            assert "pid 2 on new" in str(conflicts[0])
            assert not old.is_leader and not old.synced
            await asyncio.sleep(1.0)
            got = await read_status(etcd_endpoint, CLUSTER)
            assert got["launch_id"] == "B" and got["mirror"]["leader"].startswith("pid 2 on new")
            assert len(got["processes"]) == 2
        finally:
            await old.close()
            await new.close()
            await admin.close()

    arun(main())


# --- status ----------------------------------------------------------------------------------------------


def test_publish_read_status_round_trip_and_only_changes_written(etcd_endpoint):
    async def main():
        mirror = Mirror(CLUSTER, etcd_endpoint, "pid 9 on head", ttl=5)
        client = EtcdClient(etcd_endpoint)
        prefix = f"/dynamo-launch/{CLUSTER}"
        try:
            with pytest.raises(NotPublished, match=f"no daemon has published cluster {CLUSTER} in etcd at "
                                                   f"{etcd_endpoint}"):
                await read_status(etcd_endpoint, CLUSTER)
            await mirror.acquire_leadership()
            snap = make_snapshot(3)
            mirror.publish(snap)
            assert await mirror.wait_synced(10)

            got = await read_status(etcd_endpoint, CLUSTER)
            assert strip_volatile(got) == strip_volatile(snap)
            assert got["mirror"]["daemon_alive"] is True
            assert got["mirror"]["leader"].startswith("pid 9 on head since ")
            assert got["mirror"]["published"] == snap["now"]
            assert got["now"] >= snap["now"] and got["processes"][0]["uptime"] >= 5.0

            keys = {kv.key: kv for kv in await client.get_prefix(prefix + "/")}
            for i in range(3):
                assert json.loads(keys[f"{prefix}/processes/proc-{i}"].value)["pid"] == 1000 + i
            assert json.loads(keys[f"{prefix}/hosts/node2"].value)["address"] == "10.0.0.2"

            # Only now/uptime changed: nothing is rewritten.
            later = copy.deepcopy(snap)
            later["now"] += 30
            for p in later["processes"]:
                p["uptime"] = 35.0
            mirror.publish(later)
            assert await mirror.wait_synced(10)
            again = {kv.key: kv for kv in await client.get_prefix(prefix + "/")}
            for k in (f"{prefix}/status", f"{prefix}/processes/proc-0", f"{prefix}/processes/proc-2"):
                assert again[k].mod_revision == keys[k].mod_revision, k

            # One process changed, one went away: exactly those keys move.
            changed = copy.deepcopy(snap)
            changed["now"] += 60
            del changed["processes"][2]
            changed["processes"][1]["state"] = "BACKOFF"
            mirror.publish(changed)
            assert await mirror.wait_synced(10)
            final = {kv.key: kv for kv in await client.get_prefix(prefix + "/")}
            assert f"{prefix}/processes/proc-2" not in final
            assert final[f"{prefix}/processes/proc-0"].mod_revision == keys[f"{prefix}/processes/proc-0"].mod_revision
            assert json.loads(final[f"{prefix}/processes/proc-1"].value)["state"] == "BACKOFF"
            assert strip_volatile(await read_status(etcd_endpoint, CLUSTER)) == strip_volatile(changed)

            # After close: the status stays readable, marked as no longer alive.
            await mirror.close()
            gone = await read_status(etcd_endpoint, CLUSTER)
            assert gone["mirror"]["daemon_alive"] is False and gone["mirror"]["leader"] is None
            assert gone["now"] == changed["now"]
        finally:
            await mirror.close()
            await client.close()

    arun(main())


def test_unreachable_etcd_is_a_clear_error_quickly():
    async def main():
        port = free_port()
        t0 = time.monotonic()
        with pytest.raises(MirrorError, match=f"etcd unreachable at http://127.0.0.1:{port}"):
            await read_status(f"http://127.0.0.1:{port}", CLUSTER, timeout=2)
        with pytest.raises(MirrorError):
            await Mirror(CLUSTER, f"127.0.0.1:{port}", "me").acquire_leadership(2)
        assert time.monotonic() - t0 < 8
        with pytest.raises(MirrorError, match="only http:// and https://"):
            EtcdClient("unix://127.0.0.1:2379")
        with pytest.raises(MirrorError, match="mix http:// and https://"):
            EtcdClient("http://127.0.0.1:2379,https://127.0.0.1:2380")

    arun(main(), 30)


def test_etcd_outage_publish_never_blocks_and_mirror_catches_up(etcd_server: EtcdServer):
    async def main():
        mirror = Mirror(CLUSTER, etcd_server.endpoint, "pid 7 on head", ttl=10)
        try:
            await mirror.acquire_leadership()
            first = make_snapshot(2)
            mirror.publish(first)
            assert await mirror.wait_synced(10)

            etcd_server.kill()
            slowest = 0.0
            latest = first
            for i in range(20):
                latest = make_snapshot(2 + i % 3, state="STARTING" if i % 2 else "READY")
                latest["launch_id"] = f"launch-{i}"
                t0 = time.perf_counter()
                mirror.publish(latest)
                slowest = max(slowest, time.perf_counter() - t0)
                await asyncio.sleep(0.1)
            assert slowest < 0.01, f"publish took {slowest * 1000:.1f} ms while etcd was down"
            assert await until(lambda: not mirror.connected, 10), "the mirror never noticed etcd was gone"
            assert mirror.last_error and not mirror.synced
            assert not await mirror.wait_synced(0.5)

            etcd_server.start()  # same data dir, same port
            assert await mirror.wait_synced(30), f"no catch-up: {mirror.state()}"
            got = await read_status(etcd_server.endpoint, CLUSTER)
            assert got["launch_id"] == "launch-19"
            assert strip_volatile(got) == strip_volatile(latest)
            assert mirror.is_leader and mirror.connected
            client = EtcdClient(etcd_server.endpoint)
            try:
                names = sorted(kv.key.rsplit("/", 1)[1] for kv in
                               await client.get_prefix(f"/dynamo-launch/{CLUSTER}/processes/"))
                assert names == sorted(p["name"] for p in latest["processes"])
                with pytest.raises(LeaderHeld):  # still ours after the restart
                    await Mirror(CLUSTER, etcd_server.endpoint, "intruder").acquire_leadership(5)
            finally:
                await client.close()
        finally:
            await mirror.close()

    arun(main(), 90)


def test_mirror_started_before_etcd_acquires_and_writes_when_it_comes_up(etcd_server: EtcdServer):
    """The embedded case: the daemon starts etcd itself, so the mirror starts before etcd answers."""

    async def main():
        etcd_server.kill()
        mirror = Mirror(CLUSTER, etcd_server.endpoint, "pid 3 on head", ttl=5)
        try:
            mirror.start()
            snap = make_snapshot(1)
            mirror.publish(snap)
            await asyncio.sleep(1.0)
            assert not mirror.is_leader and not mirror.connected
            etcd_server.start()
            assert await mirror.wait_synced(30), f"never caught up: {mirror.state()}"
            assert mirror.is_leader
            assert strip_volatile(await read_status(etcd_server.endpoint, CLUSTER)) == strip_volatile(snap)
        finally:
            await mirror.close()

    arun(main(), 60)


# --- events ----------------------------------------------------------------------------------------------


def make_event(seq: int, kind: str = "started") -> dict:
    return {"seq": seq, "time": 1700000000.0 + seq, "kind": kind, "process": f"proc-{seq % 3}", "host": "head",
            "message": f"event {seq}", "code": None}


def test_fifty_events_arrive_in_order(nats_url):
    async def main():
        bus = EventBus(CLUSTER, nats_url)
        try:
            async with subscribe(nats_url, CLUSTER) as events:
                bus.start()
                sent = [make_event(i, kind=("started", "ready", "exited")[i % 3]) for i in range(1, 51)]
                for e in sent:
                    bus.publish(e)
                got = []
                async with asyncio.timeout(15):
                    async for e in events:
                        got.append(e)
                        if len(got) == 50:
                            break
                assert got == sent
                assert await bus.wait_flushed(5)
                assert bus.delivered == 50 and bus.dropped == 0 and bus.pending == 0 and bus.connected
        finally:
            await bus.close()

    arun(main(), 45)


async def _jetstream_capture(url: str, subject: str, name: str = "CAPTURE"):
    """A file-backed JetStream stream recording ``subject``: it survives a server restart, so what the
    bus sends after NATS comes back is recorded whatever the timing of a plain subscriber."""
    import nats
    from nats.js.api import StorageType

    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[subject], storage=StorageType.FILE)
    return nc


async def _jetstream_read(url: str, name: str = "CAPTURE") -> list[dict]:
    import nats

    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
    try:
        js = nc.jetstream()
        info = await js.stream_info(name)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(name, seq)
            out.append(json.loads(msg.data))
        return out
    finally:
        await nc.close()


def test_nats_down_then_up_delivers_queued_events_in_order(nats_server: NatsServer):
    async def main():
        url = nats_server.url
        nc = await _jetstream_capture(url, subject_for(CLUSTER))
        await nc.close()
        bus = EventBus(CLUSTER, url)
        follower = subscribe(url, CLUSTER, reconnect=True)
        try:
            await follower.connect()
            bus.start()
            for i in range(1, 6):
                bus.publish(make_event(i))
            assert await bus.wait_flushed(10)

            nats_server.kill()
            slowest = 0.0
            for i in range(6, 26):
                t0 = time.perf_counter()
                bus.publish(make_event(i, kind="exited"))
                slowest = max(slowest, time.perf_counter() - t0)
            assert slowest < 0.01
            assert await until(lambda: not bus.connected, 10)
            await asyncio.sleep(1.0)  # a few failed reconnects
            assert bus.pending == 20 and bus.last_error

            nats_server.start()  # same port, same JetStream store
            assert await bus.wait_flushed(30), f"queued events not sent: {bus.state()}"
            recorded = await _jetstream_read(url)
            assert [e["seq"] for e in recorded] == list(range(1, 26))
            assert recorded[5:] == [make_event(i, kind="exited") for i in range(6, 26)]

            # `events -f` follows across the restart: once it is back, new events reach it in order.
            first_seen = None
            probe = 100
            async with asyncio.timeout(20):
                while first_seen is None:
                    bus.publish(make_event(probe, kind="probe"))
                    try:
                        async with asyncio.timeout(0.3):
                            e = await follower.__anext__()
                            while e["kind"] != "probe":  # the 5 events sent before the outage
                                e = await follower.__anext__()
                            first_seen = e
                    except TimeoutError:
                        probe += 1
            for i in range(200, 210):
                bus.publish(make_event(i, kind="ready"))
            got = []
            async with asyncio.timeout(10):
                async for e in follower:
                    if e["kind"] == "ready":
                        got.append(e["seq"])
                        if len(got) == 10:
                            break
            assert got == list(range(200, 210))
        finally:
            await follower.close()
            await bus.close()

    arun(main(), 90)


def test_queue_is_bounded_and_close_is_bounded_without_nats():
    async def main():
        url = f"nats://127.0.0.1:{free_port()}"
        bus = EventBus(CLUSTER, url, max_queue=10)
        bus.start()
        for i in range(1, 26):
            bus.publish(make_event(i))
        assert bus.pending == 10 and bus.dropped == 15 and bus.published == 25
        assert [json.loads(p)["seq"] for _, p in bus._queue] == list(range(16, 26))  # the oldest went
        bus.publish({**make_event(99), "message": "x" * (1 << 20)})  # larger than NATS accepts: dropped alone
        assert bus.pending == 10 and bus.dropped == 16
        await asyncio.sleep(0.5)
        assert not bus.connected
        t0 = time.monotonic()
        await bus.close(timeout=1)
        assert time.monotonic() - t0 < 3
        assert bus.pending == 10

        with pytest.raises(EventBusError, match=f"cannot reach NATS at {url}"):
            async with subscribe(url, CLUSTER, connect_timeout=1):
                pass

    arun(main(), 30)


def test_subject_rejects_unsafe_cluster_names():
    assert subject_for("prod-1") == "dynamo_launch.prod-1.events"
    for bad in ("a.b", "a b", "*", ">", ""):
        with pytest.raises(ValueError):
            subject_for(bad)


# --- what an attacker on the cluster network can write (issue 14, item 3) ----------------------------


def test_status_etcd_of_a_forged_status_prints_no_control_characters(etcd_endpoint):
    """Anyone who can write to etcd can forge the mirrored status: `status --etcd` shows it escaped,
    never raw (no screen clearing, no title setting, no fake extra lines)."""
    import re

    from click.testing import CliRunner

    from dynamo_launch.cli import main

    evil = "\x1b[2J\x1b]0;owned\x07\nFAKE LINE\r\x9b31m\u202e"
    snap = make_snapshot(1)
    snap["processes"][0].update(name="p" + evil, health="ok" + evil, reason=evil)
    snap["hosts"][1].update(up=False, error="gone" + evil)
    snap["launch_id"] = "l" + evil

    async def forge() -> None:
        client = EtcdClient(etcd_endpoint)
        try:
            await client.put(f"/dynamo-launch/{CLUSTER}/status", json.dumps(snap))
        finally:
            await client.close()

    arun(forge())
    result = CliRunner().invoke(main, ["status", "--etcd", etcd_endpoint, "--cluster", CLUSTER])
    assert result.exit_code == 0, result.output
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]", result.output)
    assert "\\x1b[2J" in result.output and "\\nFAKE LINE" in result.output  # shown, escaped
    assert not any(line.startswith("FAKE LINE") for line in result.output.splitlines())
