"""`dynamo-launch up` under a systemd-like manager: the notify protocol on a real datagram socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from tests.daemon_harness import ROOT, free_port, local_inventory, scan_launch, standin_process


def test_up_sends_ready_status_watchdog_and_stopping_in_order(tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(sock_path)
    manager.settimeout(30)
    inv = tmp_path / "inv.toml"
    inv.write_text(local_inventory("notify", str(tmp_path / "state"),
                                   standin_process("web", free_port(), host="local", bind="127.0.0.1")))
    env = {**os.environ, "NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000000",
           "DYNAMO_LAUNCH_RUNTIME_DIR": str(tmp_path / "run"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "dynamo_launch.cli", "up", str(inv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    got: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (any("READY=1" in m for m in got)
                                                   and any("WATCHDOG=1" in m for m in got)):
            got.append(manager.recv(4096).decode())
        first_ready = next(i for i, m in enumerate(got) if "READY=1" in m)
        assert any(m.startswith("STATUS=preflight") for m in got[:first_ready])
        assert "STATUS=1/1 ready, 0 failed" in got[first_ready]  # READY once the cluster is up
        assert any("WATCHDOG=1" in m for m in got)  # from the supervision loop, which turns
        # the workers must not inherit systemd's variables
        pids = [p["pid"] for p in scan_launch_by_state(tmp_path)]
        assert pids
        for pid in pids:
            with open(f"/proc/{pid}/environ", "rb") as f:
                assert b"NOTIFY_SOCKET=" not in f.read()
        proc.send_signal(signal.SIGTERM)
        while True:
            m = manager.recv(4096).decode()
            if "STOPPING=1" in m:
                break
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        manager.close()
        for lid in launch_ids(tmp_path):
            for p in scan_launch(lid):
                os.kill(p["pid"], signal.SIGKILL)


def launch_ids(tmp_path) -> set[str]:
    import json

    try:
        return {json.loads((tmp_path / "state" / "state.json").read_text())["launch_id"]}
    except (OSError, ValueError, KeyError):
        return set()


def scan_launch_by_state(tmp_path) -> list[dict]:
    return [p for lid in launch_ids(tmp_path) for p in scan_launch(lid)]
