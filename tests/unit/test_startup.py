"""The fixed overhead of `up` and of the quick commands (issue 13, item 16): each command loads
only what it needs (no SSH library for a cluster on the local host alone), the NATS and etcd
clients stay unloaded while their servers turn connections away, and readiness is probed soon
after a start, then less often."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dynamo_launch.daemon.runner import readiness_delay
from dynamo_launch.health import closed_port
from dynamo_launch.plan.spec import Probe, ProbeKind

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("asyncssh", "cryptography", "aetcd", "grpc", "nats", "structlog")


def loaded_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The top-level modules a fresh interpreter holds after running ``code`` (which may exit)."""
    wrapper = ("import atexit, json, sys\n"
               "atexit.register(lambda: print(json.dumps(sorted({m.split('.')[0] for m in sys.modules}))))\n"
               + code)
    out = subprocess.run([sys.executable, "-c", wrapper], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, **(env or {})})
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there (for a moment, at least)


def test_importing_the_cli_loads_no_ssh_etcd_nats_or_logging_library() -> None:
    assert not loaded_after("import dynamo_launch.cli") & set(HEAVY)


def test_status_loads_no_ssh_etcd_or_nats_library(tmp_path) -> None:
    code = ("from dynamo_launch.cli import main\n"
            "try:\n    main(['status'])\nexcept SystemExit as e:\n    assert e.code == 3, e.code\n")
    assert not loaded_after(code, {"DYNAMO_LAUNCH_RUNTIME_DIR": str(tmp_path)}) & {"asyncssh", "aetcd", "grpc", "nats"}


def test_the_daemon_loads_ssh_etcd_and_nats_clients_only_when_it_uses_them() -> None:
    assert not loaded_after("from dynamo_launch.daemon import Daemon") & {"asyncssh", "aetcd", "grpc", "nats"}
    # an SSH host's transport brings asyncssh; a local one (the demo's head) does not
    code = ("from dynamo_launch.model import SshSettings\nfrom dynamo_launch.plan.spec import PlanHost\n"
            "from dynamo_launch.transport import make_transport\n"
            "make_transport(PlanHost(name='h', address='127.0.0.1', local={local}, ssh=SshSettings(), python='python3'))")
    assert "asyncssh" not in loaded_after(code.format(local=True))
    assert "asyncssh" in loaded_after(code.format(local=False))


def test_loading_the_ssh_transport_runs_no_compiler_and_keeps_path(tmp_path) -> None:
    """asyncssh asks ctypes for liboqs at import; ctypes would run gcc and ld for a library that
    ldconfig does not list (25–40 ms): transport/ssh.py imports it with ldconfig's cache only."""
    marker = tmp_path / "ran"
    for tool in ("gcc", "cc", "ld"):
        (tmp_path / tool).write_text(f"#!/bin/sh\necho {tool} >> {marker}\nexit 1\n")
        (tmp_path / tool).chmod(0o755)
    path = f"{tmp_path}:{os.environ.get('PATH', '')}"
    out = subprocess.run([sys.executable, "-c", "import os; import dynamo_launch.transport.ssh; print(os.environ['PATH'])"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": path})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == path and not marker.exists()


def test_an_etcd_that_refuses_is_reported_as_before_without_loading_grpc() -> None:
    port = free_port()
    code = ("import asyncio\nfrom dynamo_launch.errors import MirrorError\nfrom dynamo_launch.etcd import EtcdClient\n"
            f"c = EtcdClient('http://127.0.0.1:{port}', timeout=2.0)\n"
            "try:\n    asyncio.run(c.get('/k'))\nexcept MirrorError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code + "import sys; print('aetcd' in sys.modules)"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert out == [f"etcd unreachable at http://127.0.0.1:{port}: Connection refused", "False"]


def test_a_nats_that_refuses_is_reported_as_before_without_loading_nats_py() -> None:
    port = free_port()
    code = ("import asyncio, sys\nfrom dynamo_launch.eventbus import _connect\n"
            f"try:\n    asyncio.run(_connect('nats://127.0.0.1:{port}', 2.0))\n"
            "except ConnectionError as e:\n    print(e)\nprint('nats' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60).stdout.splitlines()
    assert out == [f"ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', {port})", "False"]


def test_closed_port_tells_refused_from_listening() -> None:
    async def go() -> tuple[OSError | None, OSError | None]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        listening = server.sockets[0].getsockname()[1]
        async with server:
            return await closed_port("127.0.0.1", listening, 2.0), await closed_port("127.0.0.1", free_port(), 2.0)

    open_one, refused = asyncio.run(go())
    assert open_one is None and isinstance(refused, ConnectionRefusedError)


@pytest.mark.parametrize("kind, first", [(ProbeKind.TCP, 0.02), (ProbeKind.HTTP, 0.02), (ProbeKind.COMMAND, 0.1),
                                         (ProbeKind.RAY_NODES, 0.1)])
def test_readiness_is_retried_soon_then_doubling_to_a_second(kind: ProbeKind, first: float) -> None:
    probe = Probe(kind, interval=5.0)
    delays = [readiness_delay(n, probe) for n in range(1, 10)]
    assert delays[0] == pytest.approx(first) and delays[1] == pytest.approx(2 * first)
    assert delays == sorted(delays) and delays[-1] == 1.0
    assert readiness_delay(100_000, probe) == 1.0  # hours of loading: no overflow, still every second
    assert readiness_delay(50, Probe(kind, interval=0.5)) == 0.5  # a shorter interval caps it
