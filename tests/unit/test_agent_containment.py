"""Containment by the node agent: nothing a supervised process started outlives it (issue 16).

Every test runs twice: with a cgroup v2 leaf per process (where this machine lets the agent make
one; skipped otherwise) and with the subreaper fallback (``DYNAMO_AGENT_CGROUP=none``). On the
agent before containment, each of them fails: the helpers of a killed process were left running,
re-parented to init.

Real agent, shims and processes, as in test_agent.py; the ``launch_id`` fixture SIGKILLs whatever
carries the test's launch id afterwards, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agent_harness import _alive, _wait_file, _wait_gone, node, run

PY = sys.executable

# The main process forks a helper and goes on; the helper writes its pid.
FORKS_HELPER = "sleep 100001 & echo $! > {pidfile}; exec {py} -c 'import time; time.sleep(60)'"
# A daemon the classic way: fork, setsid, fork again, the middle one exits (the grandchild is in
# no process group nor session of the main process and its parent is gone).
DOUBLE_FORK = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(sys.argv[1] + ".tmp", "w").write("%d\\n" % os.getpid())
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(100002)
    os._exit(0)
time.sleep(60)
"""
# The server the main shell starts holds the port (`sh -c 'server & wait'`).
SERVER = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("bound", flush=True)
open(sys.argv[2] + ".tmp", "w").write("%d\\n" % __import__("os").getpid())
__import__("os").rename(sys.argv[2] + ".tmp", sys.argv[2])
time.sleep(100003)
"""
# A helper that ignores SIGTERM: only a KILL ends it.
STUBBORN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1] + ".tmp", "w").write("%d\\n" % os.getpid())
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(100004)
"""


@pytest.fixture(params=["cgroup", "subreaper"])
def mechanism(request, monkeypatch):
    """Which containment the agent uses; the cgroup case is skipped where it cannot have one."""
    if request.param == "subreaper":
        monkeypatch.setenv("DYNAMO_AGENT_CGROUP", "none")
    else:
        monkeypatch.delenv("DYNAMO_AGENT_CGROUP", raising=False)
    return request.param


def _check_mechanism(n, mechanism):
    if n.agent.info.get("containment", mechanism) != mechanism:  # (an agent before containment: no field)
        pytest.skip(f"no writable cgroup v2 hierarchy here: {n.agent.info.get('cgroup_note')}")


def _pid(path: Path) -> int:
    return int(_wait_file(path))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_helpers_of_a_killed_process_die_before_its_exit_is_reported(tmp_path, launch_id, mechanism):
    pidfile = tmp_path / "helper.pid"

    async def go():
        async with node(tmp_path, launch_id) as n:
            _check_mechanism(n, mechanism)
            r = await n.spawn("w", ["sh", "-c", FORKS_HELPER.format(pidfile=pidfile, py=PY)])
            helper = await asyncio.to_thread(_pid, pidfile)
            listed = {x["name"]: x for x in await n.call("list")}["w"]
            killed_at = time.monotonic()
            os.kill(r["pid"], signal.SIGKILL)
            ev = await n.exit_of("w")
            latency = time.monotonic() - killed_at
            helper_alive = _alive(helper)
            return r, helper, listed, ev, latency, helper_alive, n.record("w")

    r, helper, listed, ev, latency, helper_alive, rec = run(go())
    print(f"{mechanism}: kill -9 of the main pid -> exit event with the tree empty: {latency * 1000:.0f} ms")
    assert not helper_alive, "the helper outlived its process"
    assert ev["signal"] == signal.SIGKILL and ev["by_signal_from_us"] is False
    assert ev["killed"] == [helper] and ev["killed_count"] == 1 and ev["left"] == []
    assert rec["exit"]["killed"] == [helper] and rec["containment"] == mechanism
    assert r["containment"] == mechanism
    # list: the tree of a live process, main + helper, with their memory
    assert listed["alive"] and listed["tree"]["procs"] == 2 and listed["tree"]["rss_bytes"] > 0
    if mechanism == "cgroup":
        assert r["cgroup"] and not os.path.exists(r["cgroup"]), "the empty cgroup is removed"
    assert latency < 5


def test_a_double_forked_setsid_daemon_dies_with_its_process(tmp_path, launch_id, mechanism):
    pidfile = tmp_path / "daemon.pid"

    async def go():
        async with node(tmp_path, launch_id) as n:
            _check_mechanism(n, mechanism)
            r = await n.spawn("d", [PY, "-c", DOUBLE_FORK, str(pidfile)])
            daemon = await asyncio.to_thread(_pid, pidfile)
            assert os.getsid(daemon) != r["pid"] and os.getpgid(daemon) != r["pid"]
            os.kill(r["pid"], signal.SIGKILL)
            ev = await n.exit_of("d")
            return daemon, ev, _alive(daemon)

    daemon, ev, alive = run(go())
    assert not alive and ev["killed"] == [daemon]


def test_a_child_holding_the_port_is_gone_before_the_restart(tmp_path, launch_id, mechanism):
    port, pidfile = _free_port(), tmp_path / "server.pid"
    argv = ["sh", "-c", f"{PY} -c '{SERVER}' {port} {pidfile} & wait"]

    async def go():
        async with node(tmp_path, launch_id) as n:
            _check_mechanism(n, mechanism)
            first = await n.spawn("srv", argv)
            server = await asyncio.to_thread(_pid, pidfile)
            pidfile.unlink()
            os.kill(first["pid"], signal.SIGKILL)  # the shell, not the server
            await n.exit_of("srv")
            second = await n.spawn("srv", argv)  # a restart: same name, same port
            new_server = await asyncio.to_thread(_pid, pidfile)
            await asyncio.sleep(0.3)
            alive = _alive(second["pid"]) and _alive(new_server)
            log = n.log("srv")
            sent = await n.call("signal", name="srv", pid=second["pid"], start_time=second["start_time"],
                                signal="TERM")  # stop: the whole tree
            ev = await n.exit_of("srv")
            return server, new_server, alive, log, sent, ev

    server, new_server, alive, log, sent, ev = run(go())
    assert not _alive(server) and "Address already in use" not in log, log
    assert alive and log.count("bound") == 2, log
    assert sent["sent"] and new_server in sent["pids"], sent
    assert ev["signal"] == signal.SIGTERM and _wait_gone(new_server, 2)


def test_signal_reaches_the_tree_after_the_main_process_is_gone(tmp_path, launch_id, mechanism):
    """A long grace keeps a TERM-ignoring helper after its main process died: a KILL from the daemon
    (its stop timeout) must still reach it, although the main pid is gone."""
    pidfile = tmp_path / "stubborn.pid"
    argv = ["sh", "-c", f"{PY} -c '{STUBBORN}' {pidfile} & exec sleep 60"]

    async def go():
        async with node(tmp_path, launch_id) as n:
            _check_mechanism(n, mechanism)
            r = await n.spawn("s", argv, leftover_grace=60)
            helper = await asyncio.to_thread(_pid, pidfile)
            os.kill(r["pid"], signal.SIGKILL)
            assert await asyncio.to_thread(_wait_gone, r["pid"])
            await asyncio.sleep(0.3)
            assert _alive(helper), "TERM-ignoring, within its grace"
            listed = {x["name"]: x for x in await n.call("list")}["s"]
            exit_event = asyncio.ensure_future(n.exit_of("s"))
            done, _ = await asyncio.wait([exit_event], timeout=0.3)
            assert not done, "no exit event while the tree lives"
            sent = await n.call("signal", name="s", pid=r["pid"], start_time=r["start_time"], signal="KILL")
            ev = await exit_event
            return helper, listed, sent, ev

    helper, listed, sent, ev = run(go())
    assert listed["alive"] is False and listed["tree"]["procs"] == 1
    assert sent == {"sent": True, "pids": [helper], "count": 1}
    assert not _alive(helper) and ev["killed"] == [helper] and ev["signal"] == signal.SIGKILL


def test_the_agent_ends_the_tree_when_the_shim_was_killed(tmp_path, launch_id, mechanism):
    pidfile = tmp_path / "helper.pid"

    async def go():
        async with node(tmp_path, launch_id) as n:
            _check_mechanism(n, mechanism)
            r = await n.spawn("o", ["sh", "-c", FORKS_HELPER.format(pidfile=pidfile, py=PY)])
            helper = await asyncio.to_thread(_pid, pidfile)
            shim = n.record("o")["shim_pid"]
            os.kill(shim, signal.SIGKILL)
            assert await asyncio.to_thread(_wait_gone, shim)
            os.kill(r["pid"], signal.SIGKILL)
            ev = await n.exit_of("o")
            return helper, ev

    helper, ev = run(go())
    assert (ev["code"], ev["signal"]) == (None, None)
    assert _wait_gone(helper, 2), "the helper outlived its process and its shim"
    assert ev["killed"] == [helper]


def test_what_the_agent_did_not_start_is_never_killed(tmp_path, launch_id, mechanism):
    """Same launch id, other name; and a process outside any launch: both survive a tree's end
    (a guard of the containment, not a defect of the agent before it)."""
    pidfile = tmp_path / "helper.pid"
    env = dict(os.environ, DYNAMO_LAUNCH_ID=launch_id, DYNAMO_LAUNCH_NAME="other", DYNAMO_LAUNCH_GENERATION="1")
    neighbour = subprocess.Popen(["sleep", "60"], env=env)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        async def go():
            async with node(tmp_path, launch_id) as n:
                _check_mechanism(n, mechanism)
                r = await n.spawn("x", ["sh", "-c", FORKS_HELPER.format(pidfile=pidfile, py=PY)], generation=1)
                await asyncio.to_thread(_pid, pidfile)
                os.kill(n.record("x")["shim_pid"], signal.SIGKILL)  # the env-scan path of the fallback
                await n.call("signal", name="x", pid=r["pid"], start_time=r["start_time"], signal="KILL")
                return await n.exit_of("x")

        ev = run(go())
        assert neighbour.pid not in ev["killed"] and stranger.pid not in ev["killed"]
        assert neighbour.poll() is None and stranger.poll() is None
    finally:
        for p in (neighbour, stranger):
            p.kill()
            p.wait()


def test_deleted_run_and_log_directories_are_recreated_on_spawn(tmp_path, launch_id):
    async def go():
        async with node(tmp_path, launch_id) as n:
            await n.spawn("a", ["true"])
            await n.exit_of("a")
            shutil.rmtree(tmp_path / "run")
            shutil.rmtree(tmp_path / "logs")
            assert await n.call("list") == []
            r = await n.spawn("b", [PY, "-c", "print('back')"])
            await n.exit_of("b")
            again = await n.spawn("c", ["true"])
            return r, again, n.log("b"), n.agent._channel.stderr_tail()

    r, again, log, stderr = run(go())
    assert r["created"] == [str(tmp_path / "run"), str(tmp_path / "logs")] and again["created"] == []
    assert log == "back\n" and "recreated" in stderr
    for path, mode in (("run", 0o700), ("logs", 0o750)):
        st = (tmp_path / path).stat()
        assert stat.S_IMODE(st.st_mode) == mode and st.st_uid == os.getuid()


def test_an_agent_removes_empty_cgroups_that_killed_shims_left(tmp_path, launch_id, monkeypatch):
    """Only leaves of its PID namespace whose shim is gone and that are empty (cgroups only)."""
    monkeypatch.delenv("DYNAMO_AGENT_CGROUP", raising=False)
    mechanism = "cgroup"

    async def base():
        async with node(tmp_path, launch_id) as n:
            _check_mechanism(n, mechanism)
            return n.agent.info["cgroup"]

    cgroup_base = run(base())
    dead = subprocess.Popen(["true"])
    dead.wait()
    ns = os.stat("/proc/self/ns/pid").st_ino
    stale, live = Path(cgroup_base, f"{ns}.stale.g1.{dead.pid}"), Path(cgroup_base, f"{ns}.live.g1.{os.getpid()}")
    stale.mkdir()
    live.mkdir()
    try:
        run(base())
        assert not stale.exists() and live.exists()
    finally:
        for p in (stale, live):
            if p.exists():
                p.rmdir()
