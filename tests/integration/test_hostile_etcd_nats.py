"""Issue 14, item 2: what the daemon reads back from etcd and NATS is not trusted (real etcd and
nats-server on loopback; see tests/integration/test_infra_testbed.py for the launcher's own,
secured NATS and etcd on the test bed)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from dynamo_launch.errors import LeaderHeld, MirrorError
from dynamo_launch.eventbus import subject_for, subscribe
from dynamo_launch.mirror import EtcdClient, Mirror, read_status
from tests.daemon_harness import PY
from tests.infra import etcd_binary, free_port
from tests.secured import b64, etcd_call, etcd_token

CLUSTER = "hostile"


def arun(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_a_forged_leader_key_without_a_lease_does_not_block_a_daemon(etcd_endpoint):
    """An attacker wrote ``leader`` by hand (no lease): the daemon takes over; a live lease still blocks."""
    async def main():
        attacker = EtcdClient(etcd_endpoint)
        first = Mirror(CLUSTER, etcd_endpoint, "pid 123 on head1", ttl=5)
        second = Mirror(CLUSTER, etcd_endpoint, "pid 456 on head2", ttl=5)
        try:
            await attacker.put(f"/dynamo-launch/{CLUSTER}/leader", "pid 1 on attacker-host\x1b[2J")
            await first.acquire_leadership(5)
            assert first.is_leader
            leader = await attacker.get(f"/dynamo-launch/{CLUSTER}/leader")
            assert leader.value.decode().startswith("pid 123 on head1") and leader.lease != 0
            with pytest.raises(LeaderHeld, match="pid 123 on head1"):  # a live daemon's lease still holds
                await second.acquire_leadership(0)
        finally:
            await first.close()
            await second.close()
            await attacker.close()

    arun(main())


@pytest.mark.parametrize("forged", ["{}", "[]", "null", '{"cluster": "c", "processes": "x"}',
                                    '{"cluster": "c", "launch_id": "l", "daemon_pid": 1, "started": 0, "now": 1, '
                                    '"hosts": [], "gangs": [], "processes": [{"name": 1}]}'])
def test_a_malformed_mirrored_status_is_a_one_line_error_not_a_traceback(etcd_endpoint, forged):
    async def plant():
        c = EtcdClient(etcd_endpoint)
        try:
            await c.put(f"/dynamo-launch/{CLUSTER}/status", forged)
        finally:
            await c.close()

    arun(plant())
    with pytest.raises(MirrorError, match="does not hold a dynamo-launch status"):
        arun(read_status(etcd_endpoint, CLUSTER))
    r = subprocess.run([PY, "-m", "dynamo_launch.cli", "status", "--etcd", etcd_endpoint, "--cluster", CLUSTER],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: etcd key /dynamo-launch/hostile/status") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_forged_messages_on_the_events_subject_are_skipped(nats_url):
    """Someone who may publish there sends garbage and half-events; a reader sees only real ones."""
    async def main():
        import nats

        pub = await nats.connect(nats_url)
        try:
            async with subscribe(nats_url, CLUSTER) as stream:
                subject = subject_for(CLUSTER)
                for forged in (b"{}", b"[]", b"not json", b'{"seq": 1, "time": 1}',
                               b'{"seq": "1", "time": 1, "kind": "exited", "message": "m"}',
                               b'{"seq": 2, "time": 2, "kind": "exited", "message": "m", "process": 7}'):
                    await pub.publish(subject, forged)
                real = {"seq": 3, "time": 3.0, "kind": "ready", "process": "web", "message": "ready"}
                await pub.publish(subject, json.dumps(real).encode())
                await pub.flush()
                got = await asyncio.wait_for(stream.__anext__(), 10)
                assert got == real
                assert stream.malformed == 6
        finally:
            await pub.close()

    arun(main())


def test_the_launchers_etcd_refuses_clients_without_its_credentials_and_survives_a_restart(tmp_path):
    """The real etcd under ETCD_AUTH_BOOT (as the plan runs it): auth on before it listens; the
    daemon's own client (root) and Dynamo's user work, also after a restart; nobody else does."""
    from dynamo_launch.plan.infra import ETCD_AUTH_BOOT, ETCD_DYNAMO_ROLE

    binary = etcd_binary()
    if binary is None:
        pytest.skip("no etcd binary")
    port, peer = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{port}"
    data = str(tmp_path / "etcd")
    argv = [sys.executable, "-c", ETCD_AUTH_BOOT, json.dumps(ETCD_DYNAMO_ROLE), binary, "--name", "t",
            "--data-dir", data, "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}", "--initial-cluster", f"t=http://127.0.0.1:{peer}"]
    env = {**os.environ, "DL_ETCD_ROOT_PASSWORD": "r00t-pw", "DL_ETCD_USER": "dynamo", "DL_ETCD_USER_PASSWORD": "dyn-pw"}
    procs: list[subprocess.Popen] = []

    def start() -> None:
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    async def attempts() -> dict:
        out = {}
        for who, auth in (("nobody", None), ("dynamo", ("dynamo", "dyn-pw")), ("root", ("root", "r00t-pw"))):
            c = EtcdClient(endpoint, auth=auth, timeout=3)
            try:
                await c.put(f"/dynamo-launch/{CLUSTER}/leader", b"x")
                out[who] = "ok"
            except MirrorError as e:
                out[who] = str(e)
            finally:
                await c.close()
        return out

    async def wait_up() -> None:
        c = EtcdClient(endpoint, auth=("root", "r00t-pw"), timeout=2)
        try:
            for _ in range(150):
                try:
                    await c.get("/k")
                    return
                except MirrorError:
                    await asyncio.sleep(0.2)
            raise AssertionError("etcd never answered")
        finally:
            await c.close()

    try:
        start()
        arun(wait_up())
        got = arun(attempts())
        assert "user name is empty" in got["nobody"] and "permission denied" in got["dynamo"] and got["root"] == "ok"
        assert etcd_call(endpoint, "kv/put", {"key": b64("v1/x"), "value": b64("1")}, etcd_token(endpoint, "dynamo", "dyn-pw")) \
            .get("header")  # Dynamo's own keys: read-write
        assert not os.path.exists(os.path.join(data, "dl-boot:1"))  # the setup socket is gone
        assert oct(os.stat(os.path.join(data, "dl-auth")).st_mode & 0o777) == "0o600"
        procs[-1].kill()
        procs[-1].wait(10)
        start()  # a restart: auth is already on (the marker), straight to etcd
        arun(wait_up())
        assert "user name is empty" in arun(attempts())["nobody"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
