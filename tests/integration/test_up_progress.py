"""`up` shows the processes that are not ready yet (issue 13, item 5): on a terminal a block
redrawn below the log, gone once they are ready; elsewhere a `not ready yet` event now and then.

Real `dynamo-launch up` (a local host: real agent, real process), its stderr a pseudo-terminal
or a file. The process loads for a few seconds, printing a line (with its secret) every 0.3 s.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

from dynamo_launch import control
from dynamo_launch.daemon import Daemon
from dynamo_launch.daemon.progress import Progress
from dynamo_launch.inventory import parse
from dynamo_launch.plan import build
from tests.daemon_harness import PY, free_port, kill_launch, local_inventory, reaped
from tests.terminal import Screen

SECRET = "s3cr3t-token-value"

LOADING = """
import http.server, os, sys, threading, time
port, ready_after = int(sys.argv[1]), float(sys.argv[2])
started = time.monotonic()

class Health(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        ready = time.monotonic() - started >= ready_after
        self.send_response(200 if ready else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)
threading.Thread(target=server.serve_forever, daemon=True).start()
step = 0
while True:
    step += 1
    print(f"loading step {step} token={os.environ['TOKEN']}", flush=True)
    time.sleep(0.3)
"""


PROCESS = """
[[processes]]
name = "{name}"
host = "local"
command = {command}
env = {{ TOKEN = "${{DL_PROGRESS_TOKEN}}" }}
depends_on = {depends_on}

[processes.health]
check = "http"
port = {port}
path = "/health"
interval = 0.3
startup_timeout = 60.0
"""


def _inventory(tmp: Path, ready_after: float) -> Path:
    """``slow``, ready ``ready_after`` seconds after its start, and ``after``, which waits for it."""
    script = tmp / "loading.py"
    script.write_text(LOADING)
    tables = ""
    for name, ready, deps in (("slow", ready_after, []), ("after", 0.0, ["slow"])):
        port = free_port()
        tables += PROCESS.format(name=name, command=json.dumps([PY, str(script), str(port), str(ready)]),
                                 depends_on=json.dumps(deps), port=port)
    path = tmp / "inventory.toml"
    path.write_text(local_inventory("progress", str(tmp / "state"), tables))
    return path


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "DYNAMO_LAUNCH_RUNTIME_DIR": str(tmp / "run"), "DL_PROGRESS_TOKEN": SECRET,
            "TERM": "xterm"}


def _launch_id(tmp: Path) -> str | None:
    try:
        return control.request(str(tmp / "run" / "progress.sock"), "status", timeout=2)["launch_id"]
    except control.ControlError:
        return None


def test_on_a_terminal_a_block_shows_the_starting_process_and_its_last_line_then_goes(tmp_path):
    path = _inventory(tmp_path, ready_after=3.0)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    up = subprocess.Popen([PY, "-m", "dynamo_launch.cli", "up", str(path)], stdin=slave, stdout=slave, stderr=slave,
                          env=_env(tmp_path), start_new_session=True)
    os.close(slave)
    out = bytearray()
    launch_id = None

    def read_until(condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer is gone
                    return condition()
                if not data:
                    return condition()
                out.extend(data)
            if condition():
                return True
        return condition()

    try:
        with reaped(up):
            assert read_until(lambda: b"bring-up done" in out, 60), out.decode(errors="replace")
            launch_id = _launch_id(tmp_path)
            time.sleep(1.0)  # the block's last redraw (at most 0.5 s after the ready)
            up.send_signal(signal.SIGINT)
            read_until(lambda: up.poll() is not None, 30)
            assert up.wait(30) == 0
    finally:
        os.close(master)
        if launch_id:
            kill_launch(launch_id)
    text = out.decode()
    assert SECRET not in text
    # While it loaded: the block, redrawn in place, with the state, the time against the
    # deadline and its log's last line (secret redacted).
    assert "0 of 2 processes ready; waiting for 2:" in text
    rows = re.findall(r"  slow   local  STARTING  (\d+)s / 1m  loading step (\d+) token=\*\*\*\r?\n", text)
    assert len(rows) >= 3, text
    assert int(rows[-1][1]) > int(rows[0][1])  # the line moved on as the process logged
    assert re.search(r"  after  local  WAITING   \d+s +waiting: slow starting\r?\n", text), text
    assert "\x1b[J" in text
    # What stays on the screen: the log, each line once, and no trace of the block.
    screen = Screen()
    screen.feed(text)
    shown = screen.text
    assert "waiting for" not in shown and "STARTING" not in shown, shown
    for line in ("slow started, pid", "slow ready", "after ready", "bring-up done", "stopped 2 processes"):
        assert shown.count(line) == 1, (line, shown)
    assert shown.index("slow started") < shown.index("slow ready") < shown.index("bring-up done")


def test_without_a_terminal_each_starting_process_is_a_plain_event(tmp_path):
    path = _inventory(tmp_path, ready_after=12.0)  # the first event comes after 10 s
    log = tmp_path / "up.log"
    launch_id = None
    try:
        with log.open("wb") as err, reaped(subprocess.Popen(
                [PY, "-m", "dynamo_launch.cli", "up", "--log-format", "json", str(path)], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err, env=_env(tmp_path))) as up:
            deadline = time.monotonic() + 60
            while b"bring-up done" not in log.read_bytes() and time.monotonic() < deadline and up.poll() is None:
                time.sleep(0.2)
            launch_id = _launch_id(tmp_path)
            up.send_signal(signal.SIGTERM)
            assert up.wait(30) == 0
    finally:
        if launch_id:
            kill_launch(launch_id)
    text = log.read_text()
    assert SECRET not in text and "\x1b" not in text
    events = [json.loads(line) for line in text.splitlines()]  # JSON mode stays pure JSON
    progress = {e["process"]: e for e in events if e["event"] == "not ready yet"}
    assert len(progress) == 2, progress  # one each, at 10 s; ready at 12 s, before the next one (40 s)
    p = progress["slow"]
    assert (p["host"], p["state"], p["deadline_s"], p["level"]) == ("local", "STARTING", 60, "info")
    assert 10 <= p["elapsed_s"] <= 13
    assert re.fullmatch(r"loading step \d+ token=\*\*\*", p["last_line"]), p
    w = progress["after"]
    assert (w["state"], w["detail"]) == ("WAITING", "waiting: slow starting") and "deadline_s" not in w, w
    names = [e["event"] for e in events]
    assert names.index("not ready yet") < names.index("slow ready") < names.index("bring-up done")


def test_the_daemon_s_rows_one_tails_request_per_host_and_what_a_restarting_process_shows(tmp_path, monkeypatch):
    path = _inventory(tmp_path, ready_after=60.0)
    crash = [PY, "-c", "import sys; print('boom', flush=True); sys.exit(3)"]
    slow2 = PROCESS.format(name="slow2", command=json.dumps([PY, str(tmp_path / "loading.py"), str(free_port()), "60"]),
                           depends_on="[]", port=free_port())
    path.write_text(path.read_text() + slow2 + f"""
[[processes]]
name = "crasher"
host = "local"
command = {json.dumps(crash)}
[processes.restart]
backoff_initial = 30.0
""")
    monkeypatch.setenv("DL_PROGRESS_TOKEN", SECRET)
    inv = parse(path.read_text(), str(path))
    daemon = Daemon(build(inv), inv, str(path))

    async def go():
        await daemon.prepare(preflight=False)
        serving = asyncio.create_task(daemon.serve(control=False))  # plain: it reads nothing before 10 s
        try:
            runner = daemon.runner
            assert await runner.wait_for(lambda: {n: p.machine.state.name for n, p in runner.procs.items()}
                                         == {"slow": "STARTING", "after": "WAITING", "slow2": "STARTING",
                                             "crasher": "BACKOFF"}, 30)
            progress = Progress(runner)
            link = runner.links["local"]
            calls, call = [], link.call

            async def counted(op, /, **kw):
                calls.append((op, kw.get("paths")))
                return await call(op, **kw)

            link.call = counted
            await asyncio.sleep(1.0)  # a line or two in slow's log
            await progress.read_lines(["slow", "after", "slow2", "crasher"])
            # one request for the host, for the logs of its STARTING processes only
            logs = sorted(runner.procs[n].spec.log_file for n in ("slow", "slow2"))
            assert [c for c in calls if c[0] == "tails"] == [("tails", logs)]
            rows = {r.name: r for r in progress.rows()}
            for name in ("slow", "slow2"):
                assert re.fullmatch(r"loading step \d+ token=\*\*\*", rows[name].detail), rows
            assert (rows["slow"].state, rows["slow"].deadline) == ("STARTING", 60.0)
            assert (rows["after"].state, rows["after"].detail) == ("WAITING", "waiting: slow starting")
            assert rows["crasher"].state == "BACKOFF" and rows["crasher"].deadline is None
            assert rows["crasher"].detail == "exited (code 3)"  # why it is down, not its old log
            assert [r.name for r in progress.rows()] == ["slow", "after", "slow2", "crasher"]  # the plan's order
        finally:
            daemon.request_stop()
            report = await asyncio.wait_for(serving, 60)
        assert report.clean

    try:
        asyncio.run(asyncio.wait_for(go(), 90))
    finally:
        if daemon.launch_id:
            kill_launch(daemon.launch_id)
