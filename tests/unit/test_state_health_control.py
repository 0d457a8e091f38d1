"""State file durability, head-side probes and the control socket, against real files and sockets."""

from __future__ import annotations

import asyncio
import http.server
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dynamo_launch import control
from dynamo_launch.health import http_get, judge_ray_nodes, tcp_connect
from dynamo_launch.state import StateFile


def test_state_file_round_trip_owner_only(tmp_path: Path) -> None:
    sf = StateFile(str(tmp_path / "state"))
    assert sf.load() is None
    sf.save({"cluster": "c", "processes": {"a": {"pid": 1}}})
    assert sf.load() == {"cluster": "c", "processes": {"a": {"pid": 1}}}
    assert stat.S_IMODE(os.stat(sf.path).st_mode) == 0o600
    assert not [p for p in os.listdir(tmp_path / "state") if p.startswith(".tmp-")]


def test_state_file_survives_kill_9_mid_write(tmp_path: Path) -> None:
    """A writer killed at random points leaves either the old or a new state, never a torn file."""
    state_dir = tmp_path / "s"
    sf = StateFile(str(state_dir))
    sf.save({"n": -1, "pad": ""})
    writer = (
        "import sys; sys.path.insert(0, %r)\n"
        "from dynamo_launch.state import StateFile\n"
        "sf = StateFile(%r)\n"
        "i = 0\n"
        "while True:\n"
        "    sf.save({'n': i, 'pad': 'x' * 200000}); i += 1\n"
    ) % (str(Path(__file__).resolve().parents[2]), str(state_dir))
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", writer])
        try:
            threading.Event().wait(0.3)
        finally:
            proc.kill()
            proc.wait()
        data = sf.load()
        assert data is not None and isinstance(data["n"], int)


def test_corrupt_state_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        StateFile(str(tmp_path)).load()


class _Health(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        code = 200 if self.path.startswith("/ok") else 503
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_probe_2xx_and_non_2xx(http_server: int) -> None:
    ok = asyncio.run(http_get(f"http://127.0.0.1:{http_server}/ok?x=1", 2))
    bad = asyncio.run(http_get(f"http://127.0.0.1:{http_server}/health", 2))
    refused = asyncio.run(http_get(f"http://127.0.0.1:{_free_port()}/", 2))
    assert ok.ok and ": 200" in ok.detail
    assert not bad.ok and ": 503" in bad.detail
    assert not refused.ok and "refused" in refused.detail


def test_tcp_probe(http_server: int) -> None:
    assert asyncio.run(tcp_connect("127.0.0.1", http_server, 2)).ok
    assert not asyncio.run(tcp_connect("127.0.0.1", _free_port(), 2)).ok


def test_judge_ray_nodes() -> None:
    out = 'noise\n[["10.0.0.1", 100.0], ["10.0.0.2", 101.5]]\n'
    assert judge_ray_nodes(out, expect=2)[0]
    assert not judge_ray_nodes(out, expect=3)[0]
    assert judge_ray_nodes(out, member="10.0.0.2")[0]
    assert not judge_ray_nodes(out, member="10.0.0.3")[0]
    assert not judge_ray_nodes("", expect=1)[0]
    assert judge_ray_nodes("not json", expect=1) == (False, "ray: no node list")
    assert not judge_ray_nodes('[["10.0.0.1"]]', expect=1)[0]  # malformed entries are no list either


def test_judge_ray_nodes_ignores_a_dead_predecessor_still_listed_alive() -> None:
    # h2's old node (started at 50) is still "alive" in Ray after its process was restarted at 200
    before_rejoin = '[["10.0.0.1", 10.0], ["10.0.0.2", 50.0]]'
    since = {"10.0.0.2": 200.0}
    assert judge_ray_nodes(before_rejoin, member="10.0.0.2")[0]  # by address alone: the old bug
    ok, detail = judge_ray_nodes(before_rejoin, member="10.0.0.2", since=since)
    assert (ok, detail) == (False, "ray: 10.0.0.2 not joined (1 alive, 1 left from before a restart)")
    assert not judge_ray_nodes(before_rejoin, expect=2, since=since)[0]
    rejoined = '[["10.0.0.1", 10.0], ["10.0.0.2", 50.0], ["10.0.0.2", 201.25]]'
    assert judge_ray_nodes(rejoined, member="10.0.0.2", since=since) == (True, "ray: 10.0.0.2 joined (2 alive)")
    # a host counts once, however many nodes Ray still lists for it
    assert not judge_ray_nodes(rejoined, expect=3)[0]
    assert judge_ray_nodes(rejoined, expect=2, since=since)[0]
    # start times from a Ray without them (null) are taken as they are
    assert judge_ray_nodes('[["10.0.0.2", null]]', member="10.0.0.2", since=since)[0]


def test_control_socket_owner_only_request_reply_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNAMO_LAUNCH_RUNTIME_DIR", str(tmp_path / "run"))
    with pytest.raises(control.NoDaemon, match="no dynamo-launch daemon is running"):
        control.find_socket()
    path = control.socket_path("c1")

    async def handler(req: dict) -> dict:
        if req["op"] == "boom":
            raise control.ControlError("it broke")
        return {"echo": req}

    async def main() -> None:
        server = control.ControlServer(path, handler)
        await server.start()
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
            assert control.find_socket() == path
            reply = await asyncio.to_thread(control.request, path, "status", verbose=True)
            assert reply == {"echo": {"op": "status", "verbose": True}}
            with pytest.raises(control.ControlError, match="it broke"):
                await asyncio.to_thread(control.request, path, "boom")
        finally:
            await server.close()
        assert not os.path.exists(path)

    asyncio.run(main())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).touch()  # a stale socket file left by a crashed daemon
    with pytest.raises(control.NoDaemon, match="stale"):
        control.request(path, "status")


def test_a_stale_control_socket_is_removed_only_when_nobody_listens(tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "c.sock")
    assert control.remove_stale(path) is False  # nothing there
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen()
    try:
        assert control.remove_stale(path) is False and os.path.exists(path)  # a daemon answers
    finally:
        live.close()  # as a crashed daemon leaves it: the file stays, nobody listens
    assert os.path.exists(path) and control.remove_stale(path) is True and not os.path.exists(path)
    plain = tmp_path / "not-a-socket.sock"
    plain.write_text("")
    assert control.remove_stale(str(plain)) is False and plain.exists()  # not a socket: not ours to judge



def test_status_finds_the_one_live_cluster_among_dead_daemons_sockets(tmp_path: Path, monkeypatch) -> None:
    import socket

    monkeypatch.setenv("DYNAMO_LAUNCH_RUNTIME_DIR", str(tmp_path))
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(control.socket_path("crashed"))
    dead.close()  # a daemon killed with -9 leaves its socket file
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(control.socket_path("demo"))
    live.listen()
    try:
        assert control.find_socket() == control.socket_path("demo")  # the dead one is not counted...
        assert not os.path.exists(control.socket_path("crashed"))  # ...and is removed
        with pytest.raises(control.NoDaemon):
            control.find_socket("crashed")
    finally:
        live.close()
    with pytest.raises(control.NoDaemon, match="removed the stale socket"):
        control.find_socket("demo")
