"""The daemon on a local host (no SSH): real agent, real stand-in processes, real signals.

Runs everywhere (no root). The same scenarios over real SSH on the test bed are in
test_daemon_testbed.py. Every test kills whatever its launch left behind, by launch id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dynamo_launch.daemon import Daemon
from dynamo_launch.daemon.snapshot import snapshot
from dynamo_launch.inventory import parse
from dynamo_launch.plan import build
from dynamo_launch.status import render
from dynamo_launch.supervisor import GangState, State
from tests.daemon_harness import PY, free_port, kill_launch, local_inventory, scan_launch, standin_process, wait_until


class Harness:
    """A daemon for one inventory, run in the test's event loop."""

    def __init__(self, tmp: Path, processes: str, name: str = "t"):
        self.tmp = tmp
        self.path = tmp / "inventory.toml"
        self.path.write_text(local_inventory(name, str(tmp / "state"), processes))
        self.inv = parse(self.path.read_text(), str(self.path))
        self.plan = build(self.inv)
        self.daemon: Daemon | None = None
        self.serving: asyncio.Task | None = None
        self.launch_ids: set[str] = set()

    async def up(self) -> Daemon:
        d = Daemon(self.plan, self.inv, str(self.path))
        await d.prepare(preflight=False)
        self.daemon, self.launch_ids = d, self.launch_ids | {d.launch_id}
        self.serving = asyncio.create_task(d.serve(control=False))
        return d

    async def until_up(self) -> Daemon:
        d = await self.up()
        await self.until(self.all_up)
        return d

    async def crash_daemon(self) -> None:
        """Drop the daemon as kill -9 would: nothing is stopped, nothing is cleaned."""
        assert self.daemon is not None and self.serving is not None
        self.serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.serving
        await self.daemon.close()
        self.daemon = None

    async def down(self):
        assert self.daemon is not None and self.serving is not None
        self.daemon.request_stop()
        return await asyncio.wait_for(self.serving, 60)

    def state(self, name: str) -> State:
        assert self.daemon is not None and self.daemon.runner is not None
        return self.daemon.runner.procs[name].machine.state

    def proc(self, name: str):
        assert self.daemon is not None and self.daemon.runner is not None
        return self.daemon.runner.procs[name]

    async def until(self, condition, timeout: float = 30.0) -> None:
        assert self.daemon is not None and self.daemon.runner is not None
        ok = await self.daemon.runner.wait_for(condition, timeout)
        assert ok, f"timed out; states: {self.states()}"

    def states(self) -> dict[str, str]:
        return {n: p.machine.state.name for n, p in self.daemon.runner.procs.items()}  # type: ignore[union-attr]

    def all_up(self) -> bool:
        return all(p.machine.state in (State.READY, State.RUNNING) for p in self.daemon.runner.procs.values())  # type: ignore[union-attr]

    def cleanup(self) -> None:
        for lid in self.launch_ids:
            kill_launch(lid)


def arun(coro, timeout: float = 90):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def harness(tmp_path):
    made: list[Harness] = []

    def make(processes: str) -> Harness:
        h = Harness(tmp_path, processes)
        made.append(h)
        return h

    yield make
    for h in made:
        h.cleanup()


def test_up_ready_then_down_leaves_nothing(harness):
    a, b = free_port(), free_port()
    h = harness(standin_process("web", a, host="local", bind="127.0.0.1")
                + standin_process("api", b, host="local", bind="127.0.0.1", depends_on=["web"]))

    async def go():
        d = await h.up()
        await h.until(h.all_up)
        assert h.proc("api").started_wall >= h.proc("web").started_wall  # api waited for web
        assert len(scan_launch(d.launch_id)) == 2
        report = await h.down()
        assert report.clean and sorted(report.stopped) == ["api", "web"]
        assert scan_launch(d.launch_id) == []
        assert not (h.tmp / "state" / "state.json").exists()

    arun(go())


def test_kill_9_restarts_per_policy_and_never_duplicates(harness):
    port = free_port()
    h = harness(standin_process("web", port, host="local", bind="127.0.0.1", max_restarts=50))

    async def go():
        d = await h.up()
        await h.until(h.all_up)
        for i in range(5):
            pid = h.proc("web").machine.pid
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            await h.until(lambda: h.proc("web").machine.pid not in (None, pid) and h.all_up())
            assert len(scan_launch(d.launch_id)) == 1
            assert h.proc("web").exit_latency is not None and h.proc("web").exit_latency < 0.5
        assert h.proc("web").machine.restarts == 5
        assert time.monotonic() - t0 < 30
        await h.down()

    arun(go())


def test_gang_member_death_restarts_every_member_with_a_new_generation(harness):
    a, b = free_port(), free_port()
    h = harness(standin_process("lead", a, host="local", bind="127.0.0.1", gang="pair")
                + standin_process("follow", b, host="local", bind="127.0.0.1", gang="pair", depends_on=["lead"]))

    async def go():
        d = await h.up()
        await h.until(h.all_up)
        gang = d.runner.gangs["pair"]
        await h.until(lambda: gang.state is GangState.RUNNING)
        old = {n: h.proc(n).machine.pid for n in ("lead", "follow")}
        os.kill(old["follow"], signal.SIGKILL)
        await h.until(lambda: gang.generation == 2 and gang.state is GangState.RUNNING and h.all_up())
        assert all(h.proc(n).machine.pid != old[n] for n in old)
        gens = {p["generation"] for p in scan_launch(d.launch_id)}
        assert gens == {"2"}, gens  # nothing of generation 1 survives
        await h.down()

    arun(go())


def test_crash_loop_backs_off_to_failed_and_restart_recovers(harness, tmp_path):
    port = free_port()
    crash = ["--crash-after", "0.2", "--exit-code", "3"]
    h = harness(standin_process("loop", port, host="local", bind="127.0.0.1", max_restarts=3, extra=crash,
                                health=False))

    async def go():
        d = await h.up()
        await h.until(lambda: h.state("loop") is State.FAILED, 60)
        delays = [e["delay"] for e in d.events if e["kind"] == "restarting"]
        assert delays == [0.0, 0.5, 1.0]  # immediate, then doubling (budget 3)
        assert h.proc("loop").machine.last_exit.code == 3
        d.runner.restart("loop")
        await h.until(lambda: h.state("loop") not in (State.FAILED,), 10)
        await h.down()

    arun(go())


def test_alive_but_unhealthy_is_killed_and_restarted(harness):
    import urllib.request

    port = free_port()
    h = harness(standin_process("sick", port, host="local", bind="127.0.0.1"))

    async def go():
        await h.up()
        await h.until(h.all_up)
        pid = h.proc("sick").machine.pid
        await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/unhealthy", timeout=5)
        await h.until(lambda: h.proc("sick").machine.pid not in (None, pid) and h.all_up(), 30)
        assert h.proc("sick").machine.last_exit.signal in (signal.SIGTERM, signal.SIGKILL)
        await h.down()

    arun(go())


def test_daemon_crash_and_restart_adopts_without_restarting(harness):
    a, b = free_port(), free_port()
    h = harness(standin_process("lead", a, host="local", bind="127.0.0.1", gang="pair")
                + standin_process("follow", b, host="local", bind="127.0.0.1", gang="pair", depends_on=["lead"])
                + standin_process("solo", free_port(), host="local", bind="127.0.0.1"))

    async def go():
        d = await h.up()
        await h.until(h.all_up)
        pids = {n: p.machine.pid for n, p in d.runner.procs.items()}
        launch = d.launch_id
        for _ in range(3):
            await h.crash_daemon()
            d = await h.up()
            assert d.launch_id == launch
            await h.until(h.all_up)
            assert {n: p.machine.pid for n, p in d.runner.procs.items()} == pids
            assert all(p.machine.restarts == 0 for p in d.runner.procs.values())
            assert d.runner.gangs["pair"].generation == 1
            assert len(scan_launch(launch)) == 3
        await h.down()

    arun(go())


def test_down_without_a_daemon_stops_in_reverse_order_with_each_stage_s_grace(harness, tmp_path):
    """After a daemon crash, `down` (no daemon) TERMs the dependent first, waits for it to exit, then
    what it depended on; nothing is KILLed while it shuts down within its stop_timeout."""
    log = tmp_path / "term.log"
    a, b = free_port(), free_port()
    drain = ["--term-log", str(log), "--term-delay", "0.5"]
    h = harness(standin_process("base", a, host="local", bind="127.0.0.1", extra=drain)
                + standin_process("top", b, host="local", bind="127.0.0.1", depends_on=["base"], extra=drain))

    async def go():
        await h.until_up()
        await h.crash_daemon()
        d = Daemon(h.plan, h.inv, str(h.path))
        report = await d.down()
        assert report.clean and sorted(report.stopped) == ["base", "top"]

    arun(go())
    events = [line.split() for line in log.read_text().splitlines()]
    assert [(int(port), what) for port, what, _ in events] == [(b, "TERM"), (b, "EXIT"), (a, "TERM"), (a, "EXIT")]
    times = [float(t) for _, _, t in events]
    assert times[2] >= times[1], "base was asked to stop before top had exited"
    assert times[1] - times[0] >= 0.5 and times[3] - times[2] >= 0.5, "a stage was cut short"


def test_failed_and_backoff_survive_a_daemon_restart(harness):
    """FAILED stays FAILED, and a backoff is waited out, across a daemon crash: the new daemon
    neither runs a failed process again with a fresh budget nor starts a backing-off one at once."""
    doomed = standin_process("doomed", free_port(), host="local", bind="127.0.0.1", max_restarts=1,
                             extra=["--crash-after", "0.3"])
    slow = standin_process("slow", free_port(), host="local", bind="127.0.0.1", extra=["--crash-after", "0.3"])
    slow = slow.replace("backoff_initial = 0.5", "backoff_initial = 30.0").replace("backoff_max = 2.0",
                                                                                    "backoff_max = 30.0")
    h = harness(doomed + slow)

    async def go():
        d = await h.up()
        await h.until(lambda: h.state("doomed") is State.FAILED and h.state("slow") is State.BACKOFF)
        before = {n: p.machine.restarts for n, p in d.runner.procs.items()}
        launch = d.launch_id
        await h.crash_daemon()
        d = await h.up()
        await d.runner.settle()
        await asyncio.sleep(1.0)  # time enough to (wrongly) start either one again
        assert h.state("doomed") is State.FAILED and h.state("slow") is State.BACKOFF, h.states()
        # Nothing was spawned again (this daemon holds no record of a copy), and nothing runs.
        assert {n: p.machine.restarts for n, p in d.runner.procs.items()} == before
        assert [n for n, p in d.runner.procs.items() if p.record is not None] == []
        assert scan_launch(launch) == []
        assert 20.0 < h.proc("slow").machine.timers["backoff"] - d.runner.now() <= 30.0
        generation = h.proc("doomed").machine.generation
        d.runner.restart("doomed")  # the operator clears FAILED: it runs again
        await h.until(lambda: h.proc("doomed").machine.generation > generation)
        await h.down()

    arun(go())


def test_status_shows_each_process_tree_and_its_memory(harness, monkeypatch):
    from dynamo_launch.daemon import runner as runner_module
    from dynamo_launch.daemon.snapshot import snapshot
    from dynamo_launch.status import render

    monkeypatch.setattr(runner_module, "TREE_INTERVAL", 0.2)
    port = free_port()
    h = harness(standin_process("web", port, host="local", bind="127.0.0.1")
                .replace(f'command = ["{PY}"', f'command = ["sh", "-c", "sleep 1001 & exec \\"$0\\" \\"$@\\"", "{PY}"'))

    async def go():
        d = await h.until_up()
        await h.until(lambda: (h.proc("web").tree or {}).get("procs", 0) >= 2)
        web = next(p for p in snapshot(d)["processes"] if p["name"] == "web")
        assert web["tree_procs"] >= 2 and web["memory_bytes"] > 1 << 20  # the stand-in's python alone
        header, row = render(snapshot(d)).splitlines()[-2:]
        assert header.split()[6:8] == ["PROCS", "MEM"] and row.split()[6] == str(web["tree_procs"])
        await h.down()

    arun(go())


def test_hostile_strings_reach_argv_unchanged(harness, tmp_path):
    port = free_port()
    out = tmp_path / "argv.json"
    hostile = ["; touch /tmp/pwned-dl", "$(id)", "`id`", "it's", 'say "hi"', "a b  c", "$HOME", "*"]
    h = harness(standin_process("odd", port, host="local", bind="127.0.0.1",
                                extra=["--argv-file", str(out), "--", *hostile]))

    async def go():
        await h.up()
        await h.until(h.all_up)
        await h.down()

    arun(go())
    import json

    argv = json.loads(out.read_text())
    assert argv[-len(hostile):] == hostile
    assert not Path("/tmp/pwned-dl").exists()


def test_secrets_reach_the_process_but_never_state_events_or_records(harness, tmp_path, monkeypatch, capsys):
    secret = "s3cr3t-" + os.urandom(6).hex()
    monkeypatch.setenv("DL_TEST_TOKEN", secret)
    port = free_port()
    h = harness(standin_process("tok", port, host="local", bind="127.0.0.1")
                .replace('[processes.restart]', 'env = { API_TOKEN = "${DL_TEST_TOKEN}" }\n[processes.restart]', 1))

    async def go():
        d = await h.up()
        await h.until(h.all_up)
        pid = h.proc("tok").machine.pid
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert f"API_TOKEN={secret}".encode() in f.read().split(b"\0")
        from dynamo_launch.daemon.snapshot import snapshot

        seen = [json.dumps(snapshot(d)), json.dumps(list(d.events)), (h.tmp / "state" / "state.json").read_text()]
        seen += [p.read_text() for p in (h.tmp / "state" / "run").glob("*.json")]
        await h.down()
        return seen

    for text in arun(go()):
        assert secret not in text
    out = capsys.readouterr()
    assert secret not in out.out and secret not in out.err


def test_a_second_daemon_for_the_same_cluster_is_refused(harness):
    from dynamo_launch.errors import AlreadyRunning

    h = harness(standin_process("web", free_port(), host="local", bind="127.0.0.1"))

    async def go():
        await h.up()
        second = Daemon(h.plan, h.inv, str(h.path))
        with pytest.raises(AlreadyRunning, match="already supervises cluster 't'"):
            await second.prepare(preflight=False)
        await second.close()
        await h.down()

    arun(go())


def test_reload_restarts_only_what_changed_and_a_bad_file_changes_nothing(harness):
    from dynamo_launch.errors import DynamoLaunchError

    web, api, a, b, side = (free_port() for _ in range(5))
    base = (standin_process("web", web, host="local", bind="127.0.0.1")
            + standin_process("api", api, host="local", bind="127.0.0.1", depends_on=["web"])
            + standin_process("lead", a, host="local", bind="127.0.0.1", gang="pair")
            + standin_process("follow", b, host="local", bind="127.0.0.1", gang="pair"))
    h = harness(base)

    async def go():
        d = await h.up()
        await h.until(h.all_up)
        pids = {n: p.machine.pid for n, p in d.runner.procs.items()}
        changed = base.replace(f'"--port", "{api}"', f'"--port", "{api}", "--ready-after", "0.1"')
        changed += standin_process("side", side, host="local", bind="127.0.0.1")
        changed = changed.replace(standin_process("follow", b, host="local", bind="127.0.0.1", gang="pair"), "")
        h.path.write_text(local_inventory("t", str(h.tmp / "state"), changed))
        diff = (await d.reload()).diff
        assert diff is not None
        assert diff.changed == ("api", "lead") and diff.added == ("side",) and diff.removed == ("follow",)
        await h.until(h.all_up)
        now = {n: p.machine.pid for n, p in d.runner.procs.items()}
        assert now["web"] == pids["web"]  # unchanged: untouched
        assert now["api"] != pids["api"] and now["lead"] != pids["lead"]
        assert d.runner.procs["api"].machine.generation == 2 and d.runner.gangs["pair"].generation == 2
        assert "follow" not in now and "side" in now
        assert sorted(p["name"] for p in scan_launch(d.launch_id)) == ["api", "lead", "side", "web"]
        h.path.write_text("[cluster]\nname = 't'\nbogus = 1\n")
        with pytest.raises(DynamoLaunchError, match="not reloaded, nothing changed"):
            await d.reload()
        assert {n: p.machine.pid for n, p in d.runner.procs.items()} == now
        await h.down()

    arun(go())


def test_metrics_endpoint_serves_the_truth(harness, monkeypatch, tmp_path):
    import urllib.request

    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    monkeypatch.setenv("DYNAMO_LAUNCH_RUNTIME_DIR", str(tmp_path / "run"))
    mport = free_port()
    h = harness(standin_process("web", free_port(), host="local", bind="127.0.0.1"))
    h.path.write_text(h.path.read_text().replace('metrics = ""', f'metrics = "127.0.0.1:{mport}"'))
    h.inv = parse(h.path.read_text(), str(h.path))
    h.plan = build(h.inv)
    url = f"http://127.0.0.1:{mport}/metrics"

    def scrape(**headers: str) -> bytes:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5).read()

    async def go():
        d = Daemon(h.plan, h.inv, str(h.path))
        await d.prepare(preflight=False)
        h.daemon, h.launch_ids = d, {d.launch_id}
        h.serving = asyncio.create_task(d.serve(control=True))
        await h.until(h.all_up)
        await h.until(lambda: "up_seconds" in d.timings)
        body = await asyncio.to_thread(scrape)
        om = await asyncio.to_thread(scrape, Accept="application/openmetrics-text; version=1.0.0")
        await h.down()
        return body.decode(), om.decode()

    text, om = arun(go())
    assert 'dynamo_launch_process_state{cluster="t",host="local",process="web",state="READY"} 1.0' in text
    assert 'dynamo_launch_process_restarts_total{cluster="t",host="local",process="web"} 0.0' in text
    assert 'dynamo_launch_host_up{cluster="t",host="local"} 1.0' in text
    assert "dynamo_launch_up_seconds{" in text and "dynamo_launch_probe_seconds{" in text
    assert f'dynamo_version="{h.inv.cluster.dynamo_version}"' in text  # dynamo_launch_build_info
    assert "\nprocess_resident_memory_bytes " in text  # the daemon's own process
    families = {f.name for f in text_string_to_metric_families(om)}  # valid OpenMetrics, # EOF included
    assert {"dynamo_launch_process_state", "dynamo_launch_process_restarts", "dynamo_launch_build"} <= families


def test_command_probe_runs_on_the_host_through_its_agent(harness, tmp_path):
    port = free_port()
    flag = tmp_path / "ready-flag"
    text = standin_process("cmd", port, host="local", bind="127.0.0.1", health=False)
    text += f'\n[processes.health]\ncheck = "command"\ncommand = ["test", "-e", "{flag}"]\ninterval = 0.3\n'
    h = harness(text)

    async def go():
        d = await h.up()
        await asyncio.sleep(1.0)
        assert h.state("cmd") is State.STARTING  # the command fails until the flag exists
        assert "exit 1" in h.proc("cmd").health
        flag.write_text("")
        await h.until(lambda: h.state("cmd") is State.READY, 10)
        assert "exit 0" in d.runner.procs["cmd"].health
        await h.down()

    arun(go())


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m"):
    """A real tmpfs of ``size`` at ``path`` (root only; CI runs as root), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; the file to delete to free it."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            for _ in range(10_000):  # bounded: 10,000 × 64 KiB is far beyond any small_disk
                f.write(b"\0" * 65536)
                f.flush()
    return filler


def test_a_full_state_disk_is_an_event_and_a_status_line_is_retried_and_stop_still_exits_clean(harness):
    port = free_port()
    h = harness(standin_process("web", port, host="local", bind="127.0.0.1", max_restarts=50))
    with small_disk(h.tmp / "state"):
        async def go():
            d = await h.until_up()
            first = h.proc("web").machine.pid
            filler = fill(h.tmp / "state")
            os.kill(first, signal.SIGKILL)  # its exit changes the records: the save fails
            await h.until(lambda: d.save_error is not None, 10)
            assert "No space left on device" in d.save_error["error"]
            snap = snapshot(d)
            assert snap["state_unsaved"]["error"] == d.save_error["error"]
            assert "STATE NOT SAVED" in render(snap) and str(d.state.path) in render(snap)
            assert [e["kind"] for e in d.events if e["kind"].startswith("state-")] == ["state-unsaved"]
            filler.unlink()  # space again: the retry (every 5 s) writes it, and says so
            await h.until(lambda: d.save_error is None and h.all_up(), 30)
            assert [e["kind"] for e in d.events if e["kind"].startswith("state-")] == ["state-unsaved", "state-saved"]
            saved = json.loads((h.tmp / "state" / "state.json").read_text())
            assert saved["processes"]["web"]["pid"] == h.proc("web").machine.pid != first
            fill(h.tmp / "state")  # full again: stopping still works and reports clean
            report = await h.down()
            assert report.clean and report.stopped == ["web"]
            assert scan_launch(d.launch_id) == []

        arun(go())


def test_up_on_a_full_state_disk_starts_nothing_and_says_so_in_one_line(harness):
    port = free_port()
    h = harness(standin_process("web", port, host="local", bind="127.0.0.1"))
    with small_disk(h.tmp / "state"):
        fill(h.tmp / "state")
        r = subprocess.run([PY, "-m", "dynamo_launch.cli", "up", "--log-format", "console", str(h.path)], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "DYNAMO_LAUNCH_RUNTIME_DIR": str(h.tmp / "run")})
        assert r.returncode == 1, (r.returncode, r.stderr)
        lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and "cannot write the state file" in lines[0] and "No space left on device" in lines[0] \
            and "nothing was started" in lines[0], r.stderr
        assert "Traceback" not in r.stderr
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), 0.5).close()  # the stand-in never ran


def test_a_failed_process_s_status_row_tells_why_in_its_own_words_without_its_secrets(harness, monkeypatch):
    monkeypatch.setenv("DL_TEST_TOKEN", "tok-0123456789")
    script = ("import os, sys; print('loading with', os.environ['TOKEN'], flush=True); "
              "print(\"ModuleNotFoundError: No module named 'dynamo'\", file=sys.stderr); sys.exit(1)")
    h = harness(f'''
[[processes]]
name = "broken"
host = "local"
command = {json.dumps([PY, "-c", script])}
env = {{ TOKEN = "${{DL_TEST_TOKEN}}" }}
[processes.restart]
max_restarts = 1
backoff_initial = 0.2
''')

    async def go():
        d = await h.up()
        await h.until(lambda: h.state("broken") is State.FAILED, 30)
        row = next(p for p in snapshot(d)["processes"] if p["name"] == "broken")
        assert row["last_lines"].splitlines()[-2:] == ["loading with ***", "ModuleNotFoundError: No module named 'dynamo'"]
        text = render(snapshot(d))
        assert "broken (FAILED, last exit code 1): the end of" in text and "No module named 'dynamo'" in text
        assert "tok-0123456789" not in json.dumps(snapshot(d)) and "tok-0123456789" not in text
        await h.down()

    arun(go())

# --- hostile clients and environments (issue 14, items 5 and 7) -----------------------------------


def _fuzz_requests(n: int, seed: int, names: set[str]) -> list[bytes]:
    """``n`` request lines: garbage, wrong shapes, and real ops with wrong or random arguments.
    Never a request that would act (a valid ``down``, a ``restart`` of a real name, a ``reload``
    of the inventory in use)."""
    import random

    rng = random.Random(seed)
    scalars = [None, True, False, 0, -1, 1 << 70, 1e999, -1e999, 3.5, "", "status", "\x1b[2J", "a\nb", "é" * 5, []]

    def value(depth: int = 0):
        pick = rng.random()
        if depth < 4 and pick < 0.15:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        if depth < 4 and pick < 0.3:
            keys = ["op", "since", "name", "x", "target"]
            return {rng.choice(keys): value(depth + 1) for _ in range(rng.randint(0, 3))}
        if pick < 0.5:
            return "".join(chr(rng.randint(0, 0x3000)) for _ in range(rng.randint(0, 12))).replace("\ud800", "")
        return rng.choice(scalars)

    ops = ["status", "restart", "events", "logs", "diff", "reload", "down", "bogus", "", "STATUS", "status "]
    keys = ["target", "since", "name", "lines", "offset", "max_bytes", "path", "wait", "all_at_once", "junk"]
    valid = {"restart": ["target", "wait", "all_at_once"], "events": ["since"],
             "logs": ["name", "lines", "offset", "max_bytes"], "diff": ["path", "all_at_once"],
             "reload": ["path", "wait", "all_at_once"], "status": [], "down": []}
    out: list[bytes] = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.15:
            out.append(bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 40))).replace(b"\n", b"") + b"\n")
            continue
        if kind < 0.3:
            req = value()
        else:
            req = {"op": rng.choice(ops)}
            pool = valid.get(req["op"], keys) if rng.random() < 0.8 else keys
            for key in rng.sample(pool, rng.randint(0, min(3, len(pool)))):
                req[key] = value() if rng.random() < 0.7 else rng.choice([0, 5, -5, 1 << 21, "web", "t"])
            if req["op"] == "down" and len(req) == 1:
                req["junk"] = 1  # a valid `down` would stop the daemon
            if req["op"] == "restart" and isinstance(req.get("target"), str) and req["target"] in names:
                req["target"] = "not-" + req["target"]
            if req["op"] in ("reload", "diff") and not isinstance(req.get("path"), str):
                req["path"] = rng.choice([0, None, "/nonexistent/x.toml", "", "relative.toml"])
        try:
            out.append(json.dumps(req, allow_nan=True).encode() + b"\n")
        except (TypeError, ValueError):
            out.append(b"{}\n")
    return out


def _exchange(path: str, line: bytes) -> dict:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(path)
        s.sendall(line)
        reply = s.makefile("rb").readline()
    return json.loads(reply)


def test_control_socket_fuzzer_every_request_answered_and_the_daemon_unharmed(harness, monkeypatch, tmp_path,
                                                                              capsys):
    from dynamo_launch import control

    monkeypatch.setenv("DYNAMO_LAUNCH_RUNTIME_DIR", str(tmp_path / "run"))
    h = harness(standin_process("web", free_port(), host="local", bind="127.0.0.1"))
    requests = _fuzz_requests(3000, seed=14, names={"web", "t"})
    issue = [b'"status"\n', b"[]\n", b"null\n", b"1e999\n", b"[" * 40000 + b"\n", b"\xff\xfe\n",
             b'{"op": "events", "since": 1e999}\n', b'{"op": "logs", "name": ["web"]}\n',
             b'{"op": "restart", "target": null}\n', b'{"op": "down", "now": true}\n']

    async def go():
        d = await h.up()
        h.serving.cancel()  # serve again, with the control socket
        with contextlib.suppress(asyncio.CancelledError):
            await h.serving
        h.serving = asyncio.create_task(d.serve(control=True))
        await h.until(h.all_up)
        pid = h.proc("web").machine.pid
        path = control.socket_path("t")
        for _ in range(100):
            if os.path.exists(path):
                break
            await asyncio.sleep(0.05)
        replies = await asyncio.to_thread(lambda: [_exchange(path, line) for line in issue + requests])
        after = await asyncio.to_thread(control.request, path, "status")
        still = (h.state("web"), h.proc("web").machine.pid == pid)
        await h.down()
        return replies, after, still

    replies, after, still = arun(go(), timeout=240)
    assert all(isinstance(r, dict) and isinstance(r.get("ok"), bool) for r in replies)
    errors = [r["error"] for r in replies if not r["ok"]]
    assert all(isinstance(e, str) and e for e in errors)
    assert not [e for e in errors if e.startswith("internal error")], [e for e in errors if "internal" in e][:3]
    assert all(not r["ok"] and r["error"].startswith("bad request: ") for r in replies[:len(issue)]), replies[:10]
    assert any(r["ok"] for r in replies)  # real ops with acceptable arguments were served too
    assert after["processes"][0]["name"] == "web" and still == (State.READY, True)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err and "control request failed" not in out.out + out.err


def test_a_local_process_gets_the_inventory_env_and_a_minimal_base_not_the_daemons(harness, monkeypatch, tmp_path):
    other = "daemon-only-" + os.urandom(6).hex()
    monkeypatch.setenv("DL_DAEMON_ONLY_SECRET", other)  # e.g. a credential of the operator's shell
    monkeypatch.setenv("DL_NAMED_SECRET", "named-" + os.urandom(4).hex())
    monkeypatch.setenv("LC_TIME", "C")
    h = harness(standin_process("env", free_port(), host="local", bind="127.0.0.1")
                .replace("[processes.restart]", 'env = { GIVEN = "${DL_NAMED_SECRET}", PLAIN = "p" }\n'
                                                "[processes.restart]", 1))

    async def go():
        await h.up()
        await h.until(h.all_up)
        with open(f"/proc/{h.proc('env').machine.pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        await h.down()
        return {k.decode(): v.decode() for k, v in env.items()}

    env = arun(go())
    assert other not in json.dumps(env) and "DL_DAEMON_ONLY_SECRET" not in env and "DL_NAMED_SECRET" not in env
    assert env["GIVEN"] == os.environ["DL_NAMED_SECRET"] and env["PLAIN"] == "p"  # what the inventory names
    assert env["PATH"] and env["LC_TIME"] == "C" and env.get("HOME") == os.environ.get("HOME")  # the base
    from dynamo_launch.transport.local import BASE_ENV, BASE_ENV_PREFIXES

    # the launch's marks, and Ray's session directory kept in /tmp while TMPDIR is the node's own
    launcher = {"DYNAMO_LAUNCH_ID", "DYNAMO_LAUNCH_NAME", "DYNAMO_LAUNCH_GENERATION", "RAY_TMPDIR"}
    unexpected = {k for k in env if k not in BASE_ENV and not k.startswith(BASE_ENV_PREFIXES)
                  and k not in launcher and k not in ("GIVEN", "PLAIN")}
    planned = {e.name for e in h.plan.process("env").env}
    assert unexpected <= planned, unexpected - planned


def test_up_with_json_logs_writes_nothing_but_json_lines_preflight_and_stop_included(harness):
    from dynamo_launch import control

    port = free_port()
    h = harness(standin_process("web", port, host="local", bind="127.0.0.1"))
    run_dir = h.tmp / "run"
    env = {**os.environ, "DYNAMO_LAUNCH_RUNTIME_DIR": str(run_dir)}
    with open(h.tmp / "up.log", "wb") as err:
        up = subprocess.Popen([PY, "-m", "dynamo_launch.cli", "up", "--log-format", "json", str(h.path)],
                              stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        sock = str(run_dir / "t.sock")

        def ready() -> bool:
            try:
                return all(p["state"] == "READY" for p in control.request(sock, "status", timeout=2)["processes"])
            except control.ControlError:
                return False

        assert wait_until(ready, 30), (h.tmp / "up.log").read_text()
        h.launch_ids.add(control.request(sock, "status", timeout=2)["launch_id"])
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
    lines = [json.loads(x) for x in (h.tmp / "up.log").read_text().splitlines()]  # every line is JSON
    checks = {(x["host"], x["check"]): x["result"] for x in lines if x["event"] == "preflight"}
    assert checks[("local", "reach")] == "OK", checks
    assert [x for x in lines if x["event"] == "stopped" and x.get("processes") == 1]
