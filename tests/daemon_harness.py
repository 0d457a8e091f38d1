"""Helpers for daemon tests: inventories of stand-in processes, free ports, process scans.

Stand-ins (tests/standin/standin.py) take the place of GPU engines: they serve ``/health``,
crash or hang on demand. Inventories here use external NATS/etcd endpoints that nothing
contacts, so only the stand-ins run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STANDIN = str(ROOT / "tests" / "standin" / "standin.py")
PY = sys.executable

FAST_RESTART = """
[{table}.restart]
policy = "{policy}"
backoff_initial = 0.5
backoff_max = 2.0
reset_after = {reset_after}
max_restarts = {max_restarts}
restart_window = 120.0
stop_timeout = 3.0
"""

HTTP_HEALTH = """
[{table}.health]
check = "http"
port = {port}
path = "/health"
interval = {interval}
timeout = 1.0
failure_threshold = {threshold}
startup_timeout = 30.0
"""


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def standin_process(name: str, port: int, *, host: str | None = None, hosts: list[str] | None = None,
                    bind: str = "0.0.0.0", policy: str = "always", max_restarts: int = 5, gang: str | None = None,
                    depends_on: list[str] | None = None, extra: list[str] | None = None,
                    health: bool = True, interval: float = 0.5, threshold: int = 2,
                    reset_after: float = 600.0) -> str:
    """A ``[[processes]]`` table running the stand-in on ``port``."""
    where = f'host = "{host}"' if host else f"hosts = {json.dumps(hosts)}"
    command = [PY, STANDIN, "--port", str(port), "--bind", bind, *(extra or [])]
    text = f'\n[[processes]]\nname = "{name}"\n{where}\ncommand = {json.dumps(command)}\n'
    if gang:
        text += f'gang = "{gang}"\n'
    if depends_on:
        text += f"depends_on = {json.dumps(depends_on)}\n"
    text += FAST_RESTART.format(table="processes", policy=policy, max_restarts=max_restarts, reset_after=reset_after)
    if health:
        text += HTTP_HEALTH.format(table="processes", port=port, interval=interval, threshold=threshold)
    return text


def local_inventory(name: str, state_dir: str, processes: str) -> str:
    """An inventory with one local host (no SSH) and the given ``[[processes]]`` tables."""
    return f"""
[cluster]
name = "{name}"
head = "local"
state_dir = "{state_dir}"
python = "{PY}"
metrics = ""

[[hosts]]
name = "local"
address = "127.0.0.1"
local = true

[nats]
external = "nats://127.0.0.1:1"

[etcd]
external = "http://127.0.0.1:1"
{processes}
"""


def scan_launch(launch_id: str, proc_root: str = "/proc") -> list[dict]:
    """Processes on this machine whose environment carries ``DYNAMO_LAUNCH_ID=launch_id``."""
    found = []
    needle = f"DYNAMO_LAUNCH_ID={launch_id}".encode()
    for entry in os.listdir(proc_root):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc_root}/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            vars_ = dict(e.split(b"=", 1) for e in env if b"=" in e)
            found.append({"pid": int(entry), "name": vars_.get(b"DYNAMO_LAUNCH_NAME", b"").decode(),
                          "generation": vars_.get(b"DYNAMO_LAUNCH_GENERATION", b"").decode()})
    return found


def kill_launch(launch_id: str) -> list[int]:
    """SIGKILL every process of ``launch_id`` on this machine (test cleanup); the pids killed."""
    pids = [p["pid"] for p in scan_launch(launch_id)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def wait_until(condition, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition()`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


@contextlib.contextmanager
def reaped(proc):
    """``proc`` (a ``subprocess.Popen``), killed and waited for if it still runs when the block ends."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
