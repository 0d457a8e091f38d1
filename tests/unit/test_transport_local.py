"""LocalTransport and AgentClient over local subprocesses (no mocks: real processes)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from dynamo_launch.errors import AgentError, ChannelClosed, CommandTimeout
from dynamo_launch.model import SshSettings
from dynamo_launch.plan.spec import PlanHost
from dynamo_launch.transport import (
    AgentClient,
    LocalTransport,
    SshTransport,
    make_transport,
    remote_command,
)
from tests.transport_cases import ECHO_ARGV, FAKE_AGENT, arun, hostile, local_host

PY = sys.executable
AGENT = Path(__file__).resolve().parents[2] / "dynamo_launch" / "agent.py"

# Each hostile string must reach argv unchanged and nothing in it may ever be evaluated.


# ---- run ---------------------------------------------------------------------------------------
def test_run_exit_code_stdout_stderr():
    async def go():
        t = LocalTransport()
        r = await t.run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
        assert (r.code, r.stdout, r.stderr, r.ok) == (3, b"out\n", b"err\n", False)
        assert (await t.run(["true"])).ok

    arun(go())


def test_run_feeds_input_and_env():
    async def go():
        t = LocalTransport()
        r = await t.run([PY, "-c", "import os, sys; sys.stdout.write(os.environ['X_Y'] + sys.stdin.read())"],
                        input=b"data\x00\xff" * 50_000, env={"X_Y": "v;$(x)"})
        assert r.code == 0 and r.stdout == b"v;$(x)" + b"data\x00\xff" * 50_000
        r = await t.run(["cat"])  # no input: stdin is empty, not inherited
        assert r == type(r)(0, b"", b"")

    arun(go())


def test_run_missing_program_is_127_like_a_shell():
    r = arun(LocalTransport().run(["/nonexistent/prog", "x"]))
    assert r.code == 127 and b"/nonexistent/prog" in r.stderr


def test_run_killed_by_signal_is_negative():
    r = arun(LocalTransport().run(["sh", "-c", "kill -KILL $$"]))
    assert r.code == -9


def test_run_timeout_kills_the_process_group(tmp_path):
    pidfile = tmp_path / "pid"
    script = (f"import os, subprocess, time; p = subprocess.Popen(['sleep', '60']); "
              f"open({str(pidfile)!r}, 'w').write(str(p.pid)); print('partial', flush=True); time.sleep(60)")

    async def go():
        t0 = time.monotonic()
        with pytest.raises(CommandTimeout) as ei:
            await LocalTransport(name="n1").run([PY, "-c", script], timeout=1.0)
        assert time.monotonic() - t0 < 3
        return ei.value

    e = arun(go())
    assert "n1 (local)" in str(e) and "timed out after 1s" in str(e) and "\n" not in str(e)
    assert e.stdout == b"partial\n" and e.timeout == 1.0
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and _alive(grandchild):
        time.sleep(0.02)
    assert not _alive(grandchild), "the timed-out command's children must be killed too"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_hostile_argv_arrives_unchanged(tmp_path):
    args = hostile(tmp_path)
    r = arun(LocalTransport().run([PY, "-c", ECHO_ARGV, *args]))
    assert json.loads(r.stdout) == args
    assert not (tmp_path / "pwned").exists()


def test_remote_command_is_split_back_by_a_posix_shell(tmp_path):
    """What SSH does with argv (``$SHELL -c <string>``), checked with local shells."""
    args = hostile(tmp_path)

    async def go():
        t = LocalTransport()
        for shell in ("sh", "bash"):
            cmd = remote_command([PY, "-c", ECHO_ARGV, *args], env={"A_B": "it's $(x)"})
            r = await t.run([shell, "-c", cmd + ' && printf "%s" "$A_B"'.replace("$A_B", "${A_B-unset}")])
            out = r.stdout.decode().splitlines()
            assert json.loads(out[0]) == args and out[1] == "unset"  # env applies to argv only
            r = await t.run([shell, "-c", remote_command(["sh", "-c", 'printf "%s" "$A_B"'], env={"A_B": "it's $(x)"})])
            assert r.stdout == b"it's $(x)"

    arun(go())
    assert not (tmp_path / "pwned").exists()


def test_remote_command_rejects_bad_argv_and_env():
    for bad in ([], "ls -l", [b"ls"], ["a\0b"]):
        with pytest.raises(ValueError):
            remote_command(bad)
    for env in ({"A-B": "x"}, {"1A": "x"}, {"A": 1}, {"": "x"}):
        with pytest.raises(ValueError):
            remote_command(["true"], env)


# ---- channels ----------------------------------------------------------------------------------
LINE_ECHO = ("import sys\nprint('starting', file=sys.stderr, flush=True)\n"
             "for line in sys.stdin:\n    print('got:' + line.rstrip('\\n'), flush=True)\n"
             "print('bye', file=sys.stderr, flush=True)\nsys.exit(5)")


def test_channel_line_io_and_eof():
    async def go():
        t = LocalTransport()
        ch = await t.start([PY, "-c", LINE_ECHO])
        assert ch.returncode is None
        for text in ("hello", "", "é ☃ $(x) 'q'", "x" * 200_000):
            await ch.write_line(text)
            assert await ch.read_line() == "got:" + text
        with pytest.raises(ValueError):
            await ch.write_line("two\nlines")
        await ch.close()
        assert ch.returncode == 5
        assert await ch.read_line() is None
        assert "starting" in ch.stderr_tail() and "bye" in ch.stderr_tail()
        with pytest.raises(ChannelClosed):
            await ch.write_line("late")
        await ch.close()  # idempotent

    arun(go())


def test_channel_close_kills_a_process_that_ignores_eof():
    async def go():
        t = LocalTransport()
        ch = await t.start([PY, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        t0 = time.monotonic()
        await ch.close(grace=0.2)
        assert time.monotonic() - t0 < 3
        assert ch.returncode == -9

    arun(go())


def test_channel_write_to_dead_process_raises_channel_closed():
    async def go():
        ch = await LocalTransport().start([PY, "-c", "import sys; print('oops', file=sys.stderr)"])
        while await ch.read_line() is not None:
            pass
        await asyncio.sleep(0.1)
        with pytest.raises(ChannelClosed, match="oops"):
            for _ in range(100):  # the first write may still land in the pipe buffer
                await ch.write_line("x" * 4096)
        await ch.close()

    arun(go())


def test_transport_close_closes_channels():
    async def go():
        t = LocalTransport()
        ch = await t.start(["cat"])
        await t.close()
        assert ch.returncode is not None and not t.connected

    arun(go())


def test_make_transport_picks_by_host():
    assert isinstance(make_transport(local_host()), LocalTransport)
    remote = PlanHost(name="n2", address="10.0.0.2", local=False, ssh=SshSettings(port=2222, user="u"), python="python3")
    t = make_transport(remote, max_channels=4)
    assert isinstance(t, SshTransport) and t.describe() == "n2 (u@10.0.0.2:2222)" and not t.connected


# ---- agent client ------------------------------------------------------------------------------
def test_agent_client_with_a_protocol_stand_in(tmp_path):
    state = tmp_path / "state dir"

    async def go():
        t = LocalTransport(local_host())
        agent = AgentClient(t, str(state), PY, source=FAKE_AGENT.encode())
        hello = await agent.start()
        assert hello["argv"] == ["serve", "--state-dir", str(state)]
        assert agent.path and Path(agent.path).parent == state and Path(agent.path).name.startswith("agent-")
        assert "time" in await agent.call("ping")
        # many calls in flight at once are matched by id
        results = await asyncio.gather(*(agent.call("echo", n=i) for i in range(50)))
        assert [r["n"] for r in results] == list(range(50))
        assert await agent.call("echo", args={"timeout": 5}, timeout=5) == {"timeout": 5}
        with pytest.raises(ValueError):
            await agent.call("echo", args={"op": "x"})
        with pytest.raises(AgentError) as ei:
            await agent.call("nope")
        assert ei.value.kind == "bad-request" and "unknown op nope" in str(ei.value)
        with pytest.raises(CommandTimeout):
            await agent.call("slow", timeout=0.2)
        await agent.call("spawn", name="w", argv=[PY, "-c", "raise SystemExit(7)"])
        events = agent.events()
        ev = await asyncio.wait_for(events.__anext__(), 5)
        assert ev["event"] == "exit" and ev["name"] == "w" and ev["code"] == 7
        # the agent dies: pending and later calls fail, the event stream ends with the reason
        pending = asyncio.ensure_future(agent.call("slow", timeout=10))
        await asyncio.sleep(0.05)
        with pytest.raises(ChannelClosed):
            await agent.call("die")
        with pytest.raises(ChannelClosed, match="dying on request"):
            await pending
        with pytest.raises(ChannelClosed):
            await agent.call("ping")
        with pytest.raises(ChannelClosed):
            await asyncio.wait_for(events.__anext__(), 5)
        assert not agent.running
        await agent.close()

    arun(go())


def test_agent_client_uploads_only_when_missing_or_different(tmp_path):
    async def start_once(source: bytes) -> str:
        agent = AgentClient(LocalTransport(local_host()), str(tmp_path), PY, source=source)
        await agent.start()
        await agent.close()
        assert agent.path is not None
        return agent.path

    path = Path(arun(start_once(FAKE_AGENT.encode())))
    os.utime(path, (1, 1))
    assert arun(start_once(FAKE_AGENT.encode())) == str(path) and path.stat().st_mtime == 1  # not re-uploaded
    path.write_bytes(b"corrupt")
    os.utime(path, (1, 1))
    assert arun(start_once(FAKE_AGENT.encode())) == str(path) and path.read_bytes() == FAKE_AGENT.encode()
    other = Path(arun(start_once(FAKE_AGENT.encode() + b"\n# v2\n")))
    assert other != path and other.parent == tmp_path


def test_a_fresh_node_gets_the_agents_bytecode_and_checks_it(tmp_path, monkeypatch):
    import importlib.util
    import py_compile
    import shutil

    from dynamo_launch.transport import agent_client

    # the package as installed: its agent with an up-to-date bytecode cache next to it
    (tmp_path / "pkg").mkdir()
    packaged = Path(shutil.copy(AGENT, tmp_path / "pkg" / "agent.py"))
    py_compile.compile(str(packaged), doraise=True)
    monkeypatch.setattr(agent_client, "_AGENT", packaged)
    agent_client.agent_bytecode.cache_clear()

    def start(state: Path, source: bytes | None = None) -> bytes:
        async def go():
            agent = AgentClient(LocalTransport(local_host()), str(state), PY, source=source)
            assert (await agent.start())["pid"] > 0
            await agent.close()
            return Path(importlib.util.cache_from_source(agent.path)).read_bytes()

        return arun(go())

    shipped = agent_client.agent_bytecode(agent_client.agent_source())
    assert shipped[4:8] == b"\3\0\0\0" and shipped[8:16] == importlib.util.source_hash(AGENT.read_bytes())
    assert start(tmp_path / "fresh") == shipped  # cached as sent: the node compiled nothing
    # bytecode that is not the source's is never cached: the node's own loader compiles (a timestamp .pyc)
    monkeypatch.setattr(agent_client, "agent_bytecode", lambda source: shipped[:8] + b"\0" * 8 + shipped[16:])
    assert start(tmp_path / "forged")[4:8] == b"\0\0\0\0"
    # a stand-in's source is sent without bytecode
    monkeypatch.setattr(agent_client, "agent_bytecode", lambda source: pytest.fail("asked for bytecode"))
    assert start(tmp_path / "stand-in", FAKE_AGENT.encode())[4:8] == b"\0\0\0\0"
    monkeypatch.undo()
    agent_client.agent_bytecode.cache_clear()  # nothing of the copy stays for later tests


def test_agent_close_ends_events_quietly(tmp_path):
    async def go():
        agent = AgentClient(LocalTransport(), str(tmp_path), PY, source=FAKE_AGENT.encode())
        await agent.start()
        events = agent.events()
        waiter = asyncio.ensure_future(events.__anext__())
        await agent.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiter, 5)

    arun(go())


@pytest.mark.skipif(not AGENT.exists(), reason="dynamo_launch/agent.py not written yet")
def test_agent_client_with_the_real_agent(tmp_path):
    state = tmp_path / "state"

    async def go():
        agent = AgentClient(LocalTransport(local_host()), str(state), PY)
        hello = await agent.start()
        assert hello["pid"] > 0 and hello["boot_id"]
        assert "time" in await agent.call("ping")
        result = await agent.call(
            "spawn", name="short", argv=[PY, "-c", "import sys; print('hi'); sys.exit(4)"], env={}, cwd=str(tmp_path),
            log_file=str(state / "logs" / "short.log"), launch_id="L1", generation=1, log_max_bytes=1 << 20,
            log_backups=2,
        )
        assert result["pid"] > 0
        events = agent.events()
        while True:
            ev = await asyncio.wait_for(events.__anext__(), 10)
            if ev.get("event") == "exit" and ev.get("name") == "short":
                break
        assert ev["code"] == 4 and ev["pid"] == result["pid"] and ev["by_signal_from_us"] is False
        await agent.close()
        return result

    arun(go(), timeout=30)
    assert "hi" in (state / "logs" / "short.log").read_text()


def test_importing_the_ssh_transport_prints_no_dsa_deprecation_warnings():
    import subprocess

    r = subprocess.run([sys.executable, "-W", "default", "-c", "import dynamo_launch.transport.ssh"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "DSA is deprecated" not in r.stderr, r.stderr
