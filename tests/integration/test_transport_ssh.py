"""SshTransport and AgentClient against real SSH servers — never a mock of asyncssh.

Two servers, same tests (the ``endpoint`` fixture):

* ``openssh``: a host of the project's test bed (dltestbed/): OpenSSH sshd in its own
  network/PID/mount namespaces. Needs root; skipped with the reason otherwise, failed under CI=true.
* ``asyncssh``: an in-process asyncssh server on 127.0.0.1, port 0, generated keys, whose sessions
  run real ``/bin/sh -c`` subprocesses (as sshd does). Needs nothing: runs everywhere.

Faults only OpenSSH can show (keepalive loss by SIGSTOP of the session process, a network
partition) use the test bed alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import asyncssh
import pytest

from dynamo_launch.errors import (
    AuthenticationFailed,
    ChannelClosed,
    CommandTimeout,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
)
from dynamo_launch.model import SshSettings
from dynamo_launch.plan.spec import PlanHost
from dynamo_launch.transport import AgentClient, SshTransport
from dynamo_launch.transport.acks import AckingConnector
from tests.transport_cases import ECHO_ARGV, FAKE_AGENT, HOSTILE

PY = sys.executable  # test bed hosts share this machine's filesystem
AGENT = Path(__file__).resolve().parents[2] / "dynamo_launch" / "agent.py"
SHARED_TMP = "/var/tmp"  # test bed hosts have a private /tmp but share /var/tmp


def arun(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@dataclass
class Endpoint:
    """An SSH server the tests can reach, and a way to look at its host from outside."""

    kind: str
    address: str
    port: int
    key_file: str
    known_hosts: str  # holds the right key for address:port
    host_key: str  # "ssh-ed25519 AAAA…" (public)
    exec: Callable[..., subprocess.CompletedProcess]  # argv run on the server's host

    def plan_host(self, **ssh) -> PlanHost:
        settings = SshSettings(user="root", port=self.port, key_file=self.key_file, known_hosts=self.known_hosts,
                               connect_timeout=5.0, keepalive_interval=5.0, keepalive_count_max=3)
        return PlanHost(name=f"{self.kind}-h1", address=self.address, local=False,
                        ssh=replace(settings, **ssh), python=PY)

    def fingerprint(self) -> str:
        return asyncssh.import_public_key(self.host_key).get_fingerprint("sha256")

    def entry(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


# ---- the in-process asyncssh server ------------------------------------------------------------
class InProcessSshd:
    """asyncssh server on its own loop/thread; each session runs ``/bin/sh -c <command>``."""

    def __init__(self, workdir: Path):
        self.connections = 0
        self.sessions = 0  # open right now
        self.max_sessions = 0
        self.procs: set[asyncio.subprocess.Process] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="inproc-sshd", daemon=True)
        self.thread.start()
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.key_file = str(workdir / "id_ed25519")
        client_key.write_private_key(self.key_file)
        self.host_key = host_key.export_public_key().decode().split()[0:2]
        outer = self

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn):
                outer.connections += 1

        self.server = self._call(asyncssh.listen(
            "127.0.0.1", 0, server_factory=Server, server_host_keys=[host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(client_key.export_public_key().decode()),
            process_factory=self._session, encoding=None,
        ))
        self.port = self.server.sockets[0].getsockname()[1]

    def _call(self, awaitable, timeout: float = 10):
        async def wrap():
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout)

    async def _session(self, process: asyncssh.SSHServerProcess) -> None:
        peer, local = process.get_extra_info("peername"), process.get_extra_info("sockname")
        env = {**os.environ, "SSH_CONNECTION": f"{peer[0]} {peer[1]} {local[0]} {local[1]}"}
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", process.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)  # like sshd: setsid
        self.procs.add(proc)
        self.sessions += 1
        self.max_sessions = max(self.max_sessions, self.sessions)

        async def pump_out(src: asyncio.StreamReader, dst) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

        async def pump_in() -> None:
            try:
                while data := await process.stdin.read(65536):
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError, asyncssh.Error):
                pass
            finally:
                proc.stdin.close()

        feeder = asyncio.ensure_future(pump_in())
        try:
            await asyncio.gather(pump_out(proc.stdout, process.stdout), pump_out(proc.stderr, process.stderr))
            code = await proc.wait()
            if code >= 0:
                process.exit(code)
            else:  # as sshd does: report the signal, not a status
                process.exit_with_signal(signal.Signals(-code).name[3:])
        except (asyncssh.Error, OSError):
            pass  # the client went away
        finally:
            feeder.cancel()
            self.procs.discard(proc)
            self.sessions -= 1

    def stop(self) -> None:
        async def shutdown():
            for p in list(self.procs):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            self.server.close()
            await self.server.wait_closed()

        with contextlib.suppress(Exception):
            self._call(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def inproc_sshd(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("inproc-sshd")
    server = InProcessSshd(workdir)
    known = workdir / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {' '.join(server.host_key)}\n")
    endpoint = Endpoint("asyncssh", "127.0.0.1", server.port, server.key_file, str(known), " ".join(server.host_key),
                        lambda argv, **kw: subprocess.run(argv, **kw))
    endpoint.server = server  # type: ignore[attr-defined]
    yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def bed(testbed):
    return testbed(1)


@pytest.fixture(scope="module")
def openssh(bed):
    h = bed.hosts[0]
    with open(os.path.join(h.dir, "ssh_host_ed25519_key.pub")) as f:
        host_key = " ".join(f.read().split()[:2])
    return Endpoint("openssh", h.address, 22, bed.key_file, bed.known_hosts, host_key,
                    lambda argv, **kw: bed.exec(h, argv, **kw))


@pytest.fixture(params=["asyncssh", pytest.param("openssh", marks=pytest.mark.testbed)])
def endpoint(request) -> Endpoint:
    return request.getfixturevalue("openssh" if request.param == "openssh" else "inproc_sshd")


@pytest.fixture
def shared_tmp():
    """A directory both this test and the server's host see (the bed's /tmp is private)."""
    path = Path(SHARED_TMP) / f"dl-transport-test-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def client_sockets(port: int) -> int | None:
    """Established TCP connections of this process to remote port ``port`` (None: no ``ss``)."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(["ss", "-tnpH", "state", "established", "dport", f"= :{port}"],
                         capture_output=True, text=True, check=True).stdout
    return sum(f"pid={os.getpid()}," in line for line in out.splitlines())


# ---- commands ----------------------------------------------------------------------------------
def test_run_hostile_argv_unchanged(endpoint, shared_tmp):
    args = [s.format(pwned=shared_tmp / "pwned") for s in HOSTILE]

    async def go():
        async with SshTransport(endpoint.plan_host()) as t:
            r = await t.run([PY, "-c", ECHO_ARGV, *args])
            assert r.code == 0, r.stderr
            assert json.loads(r.stdout) == args and r.stderr == b""
            r = await t.run([PY, "-c", "import os, sys; sys.stdout.write(os.environ['K'] + sys.stdin.read());"
                             "print('e', file=sys.stderr); sys.exit(4)"], input=b"in\x00put" * 40_000,
                            env={"K": "$(touch " + str(shared_tmp / "pwned") + ") '"})
            assert r.code == 4 and r.stderr == b"e\n"
            assert r.stdout == b"$(touch " + str(shared_tmp / "pwned").encode() + b") '" + b"in\x00put" * 40_000
            assert (await t.run(["/nonexistent/program"])).code == 127
            assert (await t.run(["sh", "-c", "kill -KILL $$"])).code == -9

    arun(go())
    assert not (shared_tmp / "pwned").exists()


def test_many_concurrent_channels_share_one_connection(endpoint):
    async def go():
        async with SshTransport(endpoint.plan_host(), max_channels=8) as t:
            t0 = time.monotonic()
            results = await asyncio.gather(
                *(t.run(["sh", "-c", 'sleep 0.2; echo "$SSH_CONNECTION $1"', "sh", str(i)]) for i in range(40)))
            elapsed = time.monotonic() - t0
            assert [r.code for r in results] == [0] * 40
            lines = [r.stdout.decode().split() for r in results]
            assert [int(x[-1]) for x in lines] == list(range(40))
            assert len({tuple(x[:4]) for x in lines}) == 1, "every channel must ride the same TCP connection"
            assert client_sockets(endpoint.port) in (1, None)
            return elapsed

    server = getattr(endpoint, "server", None)
    if server is not None:
        before, server.max_sessions = server.connections, 0
    elapsed = arun(go())
    assert 1.0 <= elapsed < 15  # 40 × 0.2 s through 8 channels: at least 5 rounds
    if server is not None:
        assert server.connections == before + 1 and server.max_sessions == 8


def test_channels_closed_by_the_server_free_their_slot(endpoint):
    async def go():
        async with SshTransport(endpoint.plan_host(), max_channels=2) as t:
            channels = [await t.start(["true"]) for _ in range(2)]  # exit at once; never close()d
            for ch in channels:
                assert await asyncio.wait_for(ch.read_line(), 5) is None
            assert (await asyncio.wait_for(t.run(["echo", "ok"]), 5)).stdout == b"ok\n"

    arun(go())


def test_the_connection_acknowledges_at_once_until_settled(endpoint):
    connector = AckingConnector()

    async def go():
        conn = await asyncssh.connect(endpoint.address, endpoint.port, username="root", known_hosts=endpoint.known_hosts,
                                      client_keys=[endpoint.key_file], agent_path=None, config=None, tunnel=connector)
        async with conn:
            during_handshake = connector.acks
            connector.settle()  # as SshTransport does once the first session is open
            assert (await conn.run("echo ok", check=True)).stdout == "ok\n"
            return during_handshake

    during = arun(go())
    assert during > 0 and connector.acks == during and not connector.quick


def test_the_first_channel_waits_for_no_delayed_ack(openssh):
    """sshd has Nagle's algorithm on until a session starts, and the client's kernel delays its ACK
    of what sshd sends after authentication: the first channel waited out that timer (≥ 40 ms: 45
    of its 47 ms on the bed). Acknowledged at once, it takes about as long as any later one."""

    async def once() -> float:
        async with SshTransport(openssh.plan_host()) as t:
            await t.connect()
            t0 = time.monotonic()
            await t.run(["true"])
            first = time.monotonic() - t0
            t0 = time.monotonic()
            await t.run(["true"])
            return first - (time.monotonic() - t0)

    # the best of three: a busy machine slows single tries, never all of them by the timer's 40 ms
    assert min(arun(once()) for _ in range(3)) < 0.03


def test_timeout_kills_the_remote_command(endpoint, shared_tmp):
    marker = f"dl-timeout-{secrets.token_hex(4)}"

    async def go():
        async with SshTransport(endpoint.plan_host()) as t:
            t0 = time.monotonic()
            with pytest.raises(CommandTimeout) as ei:
                await t.run([PY, "-c", "import time; print('started', flush=True); time.sleep(60)", marker],
                            timeout=1.0)
            assert time.monotonic() - t0 < 5
            assert ei.value.stdout == b"started\n" and ei.value.stderr == b""
            assert f"{endpoint.kind}-h1 ({endpoint.address}" not in str(ei.value)  # user@ is in between
            assert f"root@{endpoint.address}:{endpoint.port}" in str(ei.value)
            assert (await t.run(["true"])).ok  # the connection is still fine

    arun(go())
    r = endpoint.exec(["pgrep", "-f", marker], capture_output=True, text=True)
    assert r.stdout.strip() == "", f"timed-out command still running: {r.stdout}"


def test_channel_line_io_and_close_kills_a_lingering_process(endpoint):
    marker = f"dl-linger-{secrets.token_hex(4)}"

    async def go():
        async with SshTransport(endpoint.plan_host()) as t:
            ch = await t.start([PY, "-c", "import sys\nfor l in sys.stdin: print('got:' + l.strip(), flush=True)"])
            for text in ("one", "é ☃ $(x)", "y" * 100_000):
                await ch.write_line(text)
                assert await ch.read_line() == "got:" + text
            await ch.close()
            assert ch.returncode == 0 and await ch.read_line() is None
            # a process that ignores EOF on stdin is killed (by process group) on close
            ch = await t.start([PY, "-c", "import time; print('up', flush=True); time.sleep(60)", marker])
            assert await ch.read_line() == "up"
            t0 = time.monotonic()
            await ch.close(grace=0.3)
            assert time.monotonic() - t0 < 5
            with pytest.raises(ChannelClosed):
                await ch.write_line("late")

    arun(go())
    time.sleep(0.2)
    assert endpoint.exec(["pgrep", "-f", marker], capture_output=True, text=True).stdout.strip() == ""


# ---- host keys ---------------------------------------------------------------------------------
def test_unknown_host_key_names_fingerprint_and_runs_nothing(endpoint, shared_tmp, tmp_path):
    known = tmp_path / "known_hosts"  # missing file: no known keys
    pwned = shared_tmp / "ran"

    async def go():
        t = SshTransport(endpoint.plan_host(known_hosts=str(known)), connect_retries=3)
        t0 = time.monotonic()
        with pytest.raises(HostKeyUnknown) as ei:
            await t.run(["touch", str(pwned)])
        assert time.monotonic() - t0 < 3, "host key problems are not retried"
        assert not t.connected
        return ei.value

    e = arun(go())
    msg = str(e)
    assert "\n" not in msg and f"root@{endpoint.address}:{endpoint.port}" in msg
    assert endpoint.fingerprint() in msg and "ssh-ed25519" in msg
    assert e.fingerprint == endpoint.fingerprint() and e.key_type == "ssh-ed25519"
    assert e.command == f"ssh-keyscan -p {endpoint.port} -t ed25519 {endpoint.address} >> {known}"
    assert e.command in msg and "out of band" in msg
    assert not pwned.exists() and not known.exists()
    if endpoint.kind == "openssh" and shutil.which("ssh-keyscan"):
        # the advertised command really trusts the key
        subprocess.run(e.command, shell=True, check=True, capture_output=True, timeout=10)
        assert arun(SshTransport(endpoint.plan_host(known_hosts=str(known))).run(["true"])).ok


def test_changed_host_key_is_refused_even_with_accept_new(endpoint, tmp_path):
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2]
    known = tmp_path / "known_hosts"
    content = f"other.example ssh-rsa AAAAB3NzaC1yc2E=\n{endpoint.entry()} {' '.join(impostor)}\n"
    known.write_text(content)

    for accept_new in (False, True):
        t = SshTransport(endpoint.plan_host(known_hosts=str(known)), accept_new_host_keys=accept_new)
        with pytest.raises(HostKeyChanged) as ei:
            arun(t.run(["true"]))
        msg = str(ei.value)
        assert "\n" not in msg and "possible man-in-the-middle" in msg and endpoint.fingerprint() in msg
        assert asyncssh.import_public_key(" ".join(impostor)).get_fingerprint("sha256") in msg
        assert ei.value.fingerprint == endpoint.fingerprint() and "ssh-keygen -R" in msg
        assert not isinstance(ei.value, HostKeyUnknown)
    assert known.read_text() == content


def test_changed_key_of_another_type_is_still_a_changed_key(endpoint, tmp_path):
    """known_hosts lists only an ECDSA key; the server has none and shows its ed25519 key."""
    known = tmp_path / "known_hosts"
    other = asyncssh.generate_private_key("ecdsa-sha2-nistp256").export_public_key().decode().split()[:2]
    known.write_text(f"{endpoint.entry()} {' '.join(other)}\n")
    with pytest.raises(HostKeyChanged, match=re.escape(endpoint.fingerprint())):
        arun(SshTransport(endpoint.plan_host(known_hosts=str(known))).run(["true"]))


def test_accept_new_host_keys_records_the_key(endpoint, tmp_path):
    known = tmp_path / "sub" / "known_hosts"

    async def go():
        async with SshTransport(endpoint.plan_host(known_hosts=str(known)), accept_new_host_keys=True) as t:
            assert (await t.run(["true"])).ok
        # now known: a strict transport connects
        async with SshTransport(endpoint.plan_host(known_hosts=str(known))) as t:
            assert (await t.run(["true"])).ok

    arun(go())
    assert known.read_text() == f"{endpoint.entry()} {endpoint.host_key}\n"


# ---- failures to connect -----------------------------------------------------------------------
def test_wrong_client_key_is_authentication_failed(endpoint, tmp_path):
    wrong = tmp_path / "id_wrong"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(wrong))
    t = SshTransport(endpoint.plan_host(key_file=str(wrong)))
    t0 = time.monotonic()
    with pytest.raises(AuthenticationFailed) as ei:
        arun(t.run(["true"]))
    assert time.monotonic() - t0 < 3 and "\n" not in str(ei.value)
    assert f"root@{endpoint.address}:{endpoint.port}" in str(ei.value) and str(wrong) in str(ei.value)
    with pytest.raises(AuthenticationFailed, match="cannot use key_file .*missing"):
        arun(SshTransport(endpoint.plan_host(key_file=str(tmp_path / "missing"))).run(["true"]))


def test_nothing_listening_is_unreachable_after_retries(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = PlanHost(name="ghost", address="127.0.0.1", local=False, python=PY,
                    ssh=SshSettings(port=port, known_hosts=str(tmp_path / "kh"), key_file=None))
    t = SshTransport(host, connect_retries=3, retry_delay=0.1)
    t0 = time.monotonic()
    with pytest.raises(HostUnreachable) as ei:
        arun(t.run(["true"]))
    elapsed = time.monotonic() - t0
    assert 0.7 <= elapsed < 3, elapsed  # waits 0.1 + 0.2 + 0.4 between the 4 attempts
    msg = str(ei.value)
    assert msg.startswith(f"ghost (root@127.0.0.1:{port}): unreachable after 4 attempts") and "refused" in msg

    async def many():  # concurrent callers share one round of attempts instead of queueing
        t0 = time.monotonic()
        results = await asyncio.gather(*(t.run(["true"]) for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, HostUnreachable) for r in results)
        assert len({str(r) for r in results}) == 1
        return time.monotonic() - t0

    assert 0.7 <= arun(many()) < 1.5


# ---- OpenSSH only: loss of an established connection -------------------------------------------
@pytest.mark.testbed
def test_keepalive_detects_a_frozen_server(openssh):
    """SIGSTOP the sshd process serving our connection: ``lost`` within ~interval × (count_max+1)."""
    frozen: list[str] = []

    async def go():
        t = SshTransport(openssh.plan_host(keepalive_interval=0.5, keepalive_count_max=2))
        r = await t.run(["sh", "-c", "echo $PPID"])  # the sshd session process of this connection
        session = r.stdout.decode().strip()
        assert session.isdigit()
        openssh.exec(["kill", "-STOP", session], check=True)
        frozen.append(session)
        t0 = time.monotonic()
        await asyncio.wait_for(t.lost.wait(), 6)
        detected = time.monotonic() - t0
        assert not t.connected
        openssh.exec(["kill", "-CONT", session], check=True)
        frozen.remove(session)
        # the next command reconnects (a new connection) and clears `lost`
        assert (await t.run(["true"])).ok and not t.lost.is_set()
        await t.close()
        assert not t.lost.is_set(), "closing on purpose is not a loss"
        return detected

    try:
        detected = arun(go())
    finally:
        for pid in frozen:
            openssh.exec(["kill", "-CONT", pid])
    print(f"keepalive loss detected after {detected:.2f}s")
    assert 1.0 <= detected <= 3.0, detected


@pytest.mark.testbed
def test_partition_sets_lost_and_fails_the_channel(openssh, bed):
    async def go():
        t = SshTransport(openssh.plan_host(keepalive_interval=0.5, keepalive_count_max=2, connect_timeout=0.5),
                         connect_retries=1, retry_delay=0.1)
        ch = await t.start(["cat"])
        await ch.write_line("x")
        assert await ch.read_line() == "x"
        bed.link("h1", False)
        try:
            t0 = time.monotonic()
            await asyncio.wait_for(t.lost.wait(), 6)
            assert time.monotonic() - t0 <= 3.0
            with pytest.raises(ChannelClosed, match="Server not responding to keepalive"):
                await ch.read_line()
            with pytest.raises(ChannelClosed):
                await ch.write_line("y")
            t0 = time.monotonic()
            with pytest.raises(HostUnreachable, match="connect_timeout 0.5s"):
                await t.run(["true"])
            assert time.monotonic() - t0 < 3
        finally:
            bed.link("h1", True)
        t.connect_retries, t.retry_delay = 5, 0.2  # the neighbour entry needs a moment to recover
        assert (await t.run(["true"])).ok
        await ch.close(grace=0.1)
        await t.close()

    arun(go())


# ---- the node agent over SSH -------------------------------------------------------------------
def test_agent_client_over_ssh_with_a_stand_in(endpoint, shared_tmp):
    async def go():
        async with SshTransport(endpoint.plan_host()) as t:
            agent = AgentClient(t, str(shared_tmp / "state"), PY, source=FAKE_AGENT.encode())
            hello = await agent.start()
            assert hello["argv"] == ["serve", "--state-dir", str(shared_tmp / "state")]
            results = await asyncio.gather(*(agent.call("echo", n=i) for i in range(20)))
            assert [r["n"] for r in results] == list(range(20))
            await agent.call("spawn", name="w", argv=[PY, "-c", "raise SystemExit(9)"])
            ev = await asyncio.wait_for(agent.events().__anext__(), 10)
            assert (ev["name"], ev["code"]) == ("w", 9)
            await agent.close()

    arun(go())


@pytest.mark.testbed
@pytest.mark.skipif(not AGENT.exists(), reason="dynamo_launch/agent.py not written yet")
def test_agent_client_over_ssh_with_the_real_agent(openssh, shared_tmp):
    state = shared_tmp / "state"

    async def go():
        async with SshTransport(openssh.plan_host()) as t:
            agent = AgentClient(t, str(state), PY)
            hello = await agent.start()
            assert hello["pid"] > 0 and hello["boot_id"]
            result = await agent.call(
                "spawn", name="short", argv=[PY, "-c", "print('over ssh'); raise SystemExit(6)"], env={},
                cwd="/", log_file=str(state / "logs" / "short.log"), launch_id="L2", generation=1,
                log_max_bytes=1 << 20, log_backups=2)
            events = agent.events()
            while True:
                ev = await asyncio.wait_for(events.__anext__(), 10)
                if ev.get("event") == "exit" and ev.get("name") == "short":
                    break
            assert ev["code"] == 6 and ev["pid"] == result["pid"]
            await agent.close()

    arun(go())
    assert "over ssh" in (state / "logs" / "short.log").read_text()
