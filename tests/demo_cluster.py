"""The embedded default deployment, for real, on this machine, for tests: `dynamo-launch up` of
inventory.example.toml with its ports and paths moved into the test's own directory (NATS, etcd,
the Dynamo frontend and two mocker workers), plus a closed-loop API client to load it with.

::

    with demo_cluster(tmp_path) as demo:           # every process READY, or the test fails
        demo.status()                               # the daemon's snapshot
        run = closed_loop(demo.base, demo.model, seconds=8, during=lambda: demo.kill("mocker-0"))
        assert run.failed == []

Needs Dynamo installed the way scripts/bootstrap does (docs/dynamo-install.md), nats-server and
etcd: skipped with the reason otherwise, failed under CI=true. Everything it started is gone when
the block ends, even when the test failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dynamo_launch import control
from tests.daemon_harness import ROOT, free_port, scan_launch, wait_until
from tests.testbed_fixture import in_ci


def require_dynamo() -> None:
    """Skip (fail under CI) unless Dynamo's frontend and mocker import in this venv."""
    probe = subprocess.run([sys.executable, "-c", "import dynamo.frontend, dynamo.mocker, tokenizers"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        reason = "Dynamo is not installed in this venv (scripts/bootstrap installs it): " + probe.stderr.strip()[-200:]
        (pytest.fail if in_ci() else pytest.skip)(reason)


@dataclass
class Demo:
    """A running embedded default: where it answers, and how to talk to its daemon."""

    tmp: Path
    inventory: Path
    model: Path
    base: str  # the frontend's http://127.0.0.1:PORT
    sock: str
    env: dict[str, str]
    proc: subprocess.Popen
    launch: str = ""

    def status(self) -> dict[str, Any] | None:
        """The daemon's snapshot, or None while it does not answer."""
        try:
            return control.request(self.sock, "status", timeout=5)
        except control.ControlError:
            return None

    def process(self, name: str) -> dict[str, Any]:
        """One process's row of the snapshot."""
        snap = self.status()
        assert snap is not None
        return next(p for p in snap["processes"] if p["name"] == name)

    def all_ready(self) -> bool:
        """Every process READY (and the daemon answering)."""
        s = self.status()
        return bool(s) and all(p["state"] == "READY" for p in s["processes"])

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``dynamo-launch ARGS`` against this cluster (its runtime directory)."""
        return subprocess.run([sys.executable, "-m", "dynamo_launch.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """The daemon's kept events after sequence number ``since``."""
        return control.request(self.sock, "events", timeout=5, since=since)["events"]

    def instances(self) -> set[int]:
        """The instance ids the frontend's /health lists (the ones it routes to)."""
        import urllib.request

        with urllib.request.urlopen(f"{self.base}/health", timeout=5) as r:
            return {int(i["instance_id"]) for i in json.loads(r.read())["instances"] if i["endpoint"] == "generate"}

    def log(self) -> str:
        """The end of `up`'s own output, for failure messages."""
        return (self.tmp / "up.log").read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def demo_cluster(tmp_path: Path, *, ready_within: float = 120) -> Iterator[Demo]:
    """`up` of the embedded default in ``tmp_path``; yields once every process is READY; stops it
    (SIGTERM, then what is left of its launch by pid) when the block ends."""
    require_dynamo()
    model = tmp_path / "model"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make-tiny-model"), str(model)], check=True,
                   capture_output=True, timeout=120)
    ports = {name: free_port() for name in ("http", "nats", "mon", "etcd", "peer")}
    system = 20000 + os.getpid() % 10000  # two consecutive ports, ≤ 32767 as Dynamo requires
    text = (ROOT / "inventory.example.toml").read_text()
    text = text.replace('state_dir = "/tmp/dynamo-launch-demo"', f'state_dir = "{tmp_path / "state"}"\n'
                        f'system_port = {system}\nmetrics = ""')
    text = text.replace("http_port = 8000", f"http_port = {ports['http']}")
    text = text.replace('model = "/tmp/dynamo-launch-demo/model"', f'model = "{model}"')
    text += (f"\n[nats]\nport = {ports['nats']}\nmonitor_port = {ports['mon']}\n"
             f"\n[etcd]\nclient_port = {ports['etcd']}\npeer_port = {ports['peer']}\n")
    inv = tmp_path / "demo.toml"
    inv.write_text(text)
    env = {**os.environ, "DYNAMO_LAUNCH_RUNTIME_DIR": str(tmp_path / "run"), "PYTHONPATH": str(ROOT)}
    err = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "dynamo_launch.cli", "up", str(inv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    demo = Demo(tmp_path, inv, model, f"http://127.0.0.1:{ports['http']}", str(tmp_path / "run" / "demo.sock"),
                env, proc)
    try:
        assert wait_until(lambda: demo.all_ready() or proc.poll() is not None, ready_within, 0.2), demo.log()
        assert proc.poll() is None, demo.log()
        snap = demo.status()
        assert snap is not None
        demo.launch = snap["launch_id"]
        yield demo
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        err.close()
        if demo.launch:
            for p in scan_launch(demo.launch):
                os.kill(p["pid"], signal.SIGKILL)
        # the frontend keeps a copy of every model's files under ~/.cache/dynamo/mdc/by-slug/
        slug = Path.home() / ".cache" / "dynamo" / "mdc" / "by-slug" / str(model).strip("/").replace("/", "_")
        shutil.rmtree(slug, ignore_errors=True)


@dataclass
class Run:
    """What a closed-loop run saw: every request as (sent at, status or 0, error text)."""

    log: list[tuple[float, int, str]] = field(default_factory=list)
    fault_at: float | None = None

    @property
    def failed(self) -> list[tuple[float, int, str]]:
        """The requests that did not get a 200."""
        return [r for r in self.log if r[1] != 200]


def closed_loop(base: str, model: Path, *, seconds: float, clients: int = 8, fault_after: float = 2.0,
                fault: Callable[[], Any] = lambda: None, timeout: float = 10.0) -> Run:
    """``clients`` clients sending chat completions back to back to ``base`` for ``seconds``
    (each request bounded by ``timeout``); ``fault()`` runs ``fault_after`` seconds in, in a
    thread, while the requests go on."""
    run = Run()
    body = json.dumps({"model": str(model), "messages": [{"role": "user", "content": "hello there"}],
                       "max_tokens": 8}).encode()
    host, port = base.split("//", 1)[1].rsplit(":", 1)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()

    async def one() -> tuple[int, str]:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
            try:
                writer.write(head + body)
                line = await asyncio.wait_for(reader.readline(), timeout)
                rest = await asyncio.wait_for(reader.read(), timeout)
            finally:
                writer.close()
            code = int(line.split()[1]) if len(line.split()) > 1 else 0
            return code, "" if code == 200 else rest.decode("utf-8", "replace")[-300:]
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            return 0, repr(e)

    async def main() -> None:
        t0 = time.monotonic()

        async def client() -> None:
            while time.monotonic() - t0 < seconds:
                sent = time.monotonic() - t0
                code, error = await one()
                run.log.append((round(sent, 3), code, error))

        async def trigger() -> None:
            await asyncio.sleep(fault_after)
            run.fault_at = time.monotonic() - t0
            thread = threading.Thread(target=fault, daemon=True)
            thread.start()
            while thread.is_alive():
                await asyncio.sleep(0.05)

        await asyncio.gather(trigger(), *(client() for _ in range(clients)))

    asyncio.run(main())
    return run
