"""TLS for the NATS and etcd `dynamo-launch up` runs on the test bed's head (``tls = true``), for
real: the real etcd and nats-server serve with a certificate of the cluster CA the daemon
generates; the daemon's probes, mirror and event publisher verify it; a Dynamo-shaped stand-in on
another host gets the CA as a private file on its node and the variables Dynamo reads; clients
without the CA, or over plain http/nats, are refused. Needs root, ``etcd`` and ``nats-server``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import urllib.error

import pytest

from tests.bed_daemon import InfraCluster, by_name, ports, run_infra
from tests.daemon_harness import PY, standin_process
from tests.infra import require_launcher_servers
from tests.secured import b64, credential, etcd_call, etcd_token, nats_hello

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module", autouse=True)
def binaries() -> None:
    require_launcher_servers()


def _tls_infra(nats_ports: tuple[int, int], etcd_ports: tuple[int, int]) -> str:
    text = run_infra(nats_ports, etcd_ports)
    return text.replace("[nats]\n", "[nats]\ntls = true\n", 1).replace("[etcd]\n", "[etcd]\ntls = true\n", 1)


def _environ(bed, host: str, pid: int) -> dict[str, str]:
    r = bed.exec(host, ["cat", f"/proc/{pid}/environ"], capture_output=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return dict(v.split("=", 1) for v in r.stdout.decode().split("\0") if "=" in v)


async def _nats_connect(url: str, token: str, tls: ssl.SSLContext | None) -> str:
    import nats

    try:
        nc = await nats.connect(url, token=token, tls=tls, allow_reconnect=False, max_reconnect_attempts=1,
                                connect_timeout=3)
    except Exception as e:  # noqa: BLE001 (any refusal is the answer)
        return f"refused: {type(e).__name__}: {e}"
    await nc.close()
    return "ok"


def test_tls_etcd_and_nats_refuse_plain_and_unverified_clients_and_workers_get_the_ca_on_their_node(bed, tmp_path):
    n_port, n_mon, e_port, e_peer, web = ports(5)
    worker = standin_process("web", web, hosts=["h2"]).replace("\ncommand = ", "\ndynamo = true\ncommand = ", 1)
    c = InfraCluster(bed, tmp_path, worker, _tls_infra((n_port, n_mon), (e_port, e_peer)))
    try:
        plan = c.cli("plan", str(c.path))
        assert plan.returncode == 0, plan.stderr
        assert "NATS_SERVER=tls://" in plan.stdout and "ETCD_ENDPOINTS=https://" in plan.stdout
        assert "BEGIN" not in plan.stdout  # certificates travel by reference only

        snap = c.up(timeout=120)
        procs = by_name(snap)
        assert all(p["state"] == "READY" for p in procs.values()), procs  # the https probe of etcd passed
        head = bed.host("h1").address
        creds = os.path.join(c.state_dir, "credentials")
        for name in ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem"):
            assert oct(os.stat(os.path.join(creds, name)).st_mode & 0o777) == "0o600", name
        ca_pem = open(os.path.join(creds, "ca.pem")).read()
        trusting = ssl.create_default_context(cafile=os.path.join(creds, "ca.pem"))
        https = f"https://{head}:{e_port}"

        # etcd: plain http and an https client without the cluster CA are refused; with it, auth as before
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            etcd_call(f"http://{head}:{e_port}", "kv/range", {"key": b64("/x")})
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            etcd_call(https, "kv/range", {"key": b64("/x")}, context=ssl.create_default_context())
        assert "error" in etcd_call(https, "kv/range", {"key": b64("/x")}, context=trusting)  # still needs a password
        dynamo = ("dynamo", credential(c.state_dir, "etcd-dynamo-password"))
        assert etcd_token(https, *dynamo, context=trusting)

        # NATS: clients must speak TLS and verify the server against the cluster CA
        token = credential(c.state_dir, "nats-token")
        with socket.create_connection((head, n_port), timeout=5) as s:
            assert b'"tls_required":true' in s.recv(4096)  # the server's INFO demands it
        assert b"PONG" not in nats_hello(head, n_port, token)  # plain text after INFO: refused
        assert asyncio.run(_nats_connect(f"tls://{head}:{n_port}", token, ssl.create_default_context())).startswith("refused")
        assert asyncio.run(_nats_connect(f"tls://{head}:{n_port}", token, trusting)) == "ok"

        # The worker on h2 gets the CA as a private file on its own node, and the variables Dynamo reads
        env = _environ(bed, "h2", procs["web"]["pid"])
        ca_on_node = f"{c.state_dir}/tls/etcd-ca.pem"
        assert (env["ETCD_ENDPOINTS"], env["NATS_SERVER"]) == (https, f"tls://{head}:{n_port}")
        assert (env["ETCD_AUTH_CA"], env["NATS_TLS_CA_CERT_PATH"]) == (ca_on_node, f"{c.state_dir}/tls/nats-ca.pem")
        listing = bed.exec("h2", [PY, "-c", "import os, sys; d = sys.argv[1]; print(oct(os.stat(d).st_mode & 0o777), "
                                  "sorted((n, oct(os.stat(os.path.join(d, n)).st_mode & 0o777)) for n in os.listdir(d)))",
                                  f"{c.state_dir}/tls"], capture_output=True, text=True, timeout=30)
        assert listing.stdout.strip() == "0o700 [('etcd-ca.pem', '0o600'), ('nats-ca.pem', '0o600')]", listing
        on_node = bed.exec("h2", ["cat", ca_on_node], capture_output=True, text=True, timeout=10).stdout
        assert on_node.strip() == ca_pem.strip()
        assert "server-key.pem" not in bed.exec("h2", ["ls", f"{c.state_dir}/tls"], capture_output=True, text=True,
                                                timeout=10).stdout  # only the head's servers get their key

        # status --etcd over https from the worker node, with the CA file there; without it: one line
        base = ["env", f"ETCD_AUTH_USERNAME={dynamo[0]}", f"ETCD_AUTH_PASSWORD={dynamo[1]}", PY, "-m",
                "dynamo_launch.cli", "status", "--json", "--etcd", https, "--cluster", c.name]
        ok = bed.exec("h2", base[:-4] + ["--etcd-ca", ca_on_node] + base[-4:], capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        assert {p["name"] for p in json.loads(ok.stdout)["processes"]} == {"nats", "etcd", "web"}  # the mirror wrote it
        bad = bed.exec("h2", base, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and bad.stderr.startswith("error: etcd ") and bad.stderr.count("\n") == 1, bad.stderr

        down = c.cli("down", str(c.path))
        assert down.returncode == 0, down.stderr
        assert c.proc.wait(30) == 0
    finally:
        c.cleanup()
