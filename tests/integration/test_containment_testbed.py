"""Containment on the test bed (issue 16): what a supervised process started dies with it.

Real daemon (the CLI) over real SSH to test-bed hosts, as in test_daemon_testbed.py. Each worker
starts a helper before (or instead of) exec'ing the stand-in; ``kill -9`` of the main pid on its
host must not leave the helper running: for a plain process whose child holds the port (before
containment the new copy died with "Address already in use" while the orphan answered the
probe) and for a gang member (before containment generation 1's helper survived the gang
restart). Counted on the hosts themselves (``/proc`` inside each host's namespaces). Needs root.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.bed_daemon import Cluster, by_name, ports
from tests.daemon_harness import PY, STANDIN, standin_process

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def bed(testbed):
    return testbed(2)


@pytest.fixture(params=["cgroup", "subreaper"])
def mechanism(request, bed):
    """The containment the hosts' agents find: the bed mounts cgroup v2 on /sys/fs/cgroup in each
    host (a unified node); without it (unmounted in the hosts for the test) the subreaper shim."""
    if request.param == "subreaper":
        for h in bed.hosts:
            bed.exec(h.name, ["umount", "/sys/fs/cgroup"], timeout=10)
    yield request.param
    if request.param == "subreaper":
        for h in bed.hosts:
            bed.exec(h.name, ["mount", "-t", "cgroup2", "-o", "nosuid,nodev,noexec", "cgroup2", "/sys/fs/cgroup"],
                     timeout=10)


@pytest.fixture
def cluster(cluster, mechanism):
    """The integration tests' cluster factory, once the bed's containment mechanism is chosen."""
    return cluster


def check_mechanism(c: Cluster, host: str, name: str, mechanism: str) -> dict:
    rec = record(c, host, name)
    if rec.get("containment", mechanism) != mechanism:  # (no field: an agent before containment)
        pytest.skip(f"the bed host has no writable cgroup v2 hierarchy: {rec}")
    return rec


def wrapped(name: str, port: int, shell: str, **kw) -> str:
    """A stand-in ``[[processes]]`` table whose command runs under ``sh -c shell`` ("$0" "$@" is the
    stand-in's own command line)."""
    table = standin_process(name, port, **kw)
    plain = json.dumps([PY, STANDIN, "--port", str(port), "--bind", "0.0.0.0"])
    assert plain in table
    return table.replace(plain, json.dumps(["sh", "-c", shell, PY, STANDIN, "--port", str(port),
                                            "--bind", "0.0.0.0"]))


def record(c: Cluster, host: str, name: str) -> dict:
    r = c.bed.exec(host, ["cat", f"{c.state_dir}/run/{name}.json"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_plain_process_whose_child_holds_the_port_restarts_cleanly(cluster, mechanism):
    (port,) = ports(1)
    # The shell is the main process; the stand-in, its child, holds the port and answers /health.
    c = cluster(wrapped("srv", port, '"$0" "$@" & wait', host="h2", max_restarts=10))
    before = by_name(c.up())["srv"]
    tree = sorted(p["pid"] for p in c.scan("h2"))
    assert len(tree) == 2 and before["pid"] in tree
    first = check_mechanism(c, "h2", "srv", mechanism)
    c.kill_on_host("h2", before["pid"])
    snap = c.wait(lambda s: by_name(s)["srv"]["pid"] not in (None, before["pid"])
                  and by_name(s)["srv"]["state"] == "READY", 30)
    after = by_name(snap)["srv"]
    assert after["restarts"] == 1
    now = c.scan("h2")
    assert len(now) == 2 and not set(tree) & {p["pid"] for p in now}, (tree, now)  # the old child is gone
    logs = c.cli("logs", "srv", "--cluster", c.name, "-n", "200")
    assert "Address already in use" not in logs.stdout, logs.stdout
    # What the shim recorded of the first copy: the child it had to kill, and when the tree was empty.
    exits = [e for e in c.events() if e.get("kind") == "exited" and e.get("process") == "srv"]
    assert exits and exits[0]["signal"] == 9, exits
    print(f"plain process on a bed host: containment {first.get('containment')}, cgroup {first.get('cgroup')}")


def test_gang_member_helpers_do_not_survive_the_gang_restart(cluster, mechanism):
    a, b = ports(2)
    helper = 'sleep 100001 & exec "$0" "$@"'
    c = cluster(wrapped("lead", a, helper, host="h1", gang="pair")
                + wrapped("follow", b, helper, host="h2", gang="pair", depends_on=["lead"]))
    old = {n: p["pid"] for n, p in by_name(c.up()).items()}
    check_mechanism(c, "h2", "follow", mechanism)
    on_hosts = c.scan_all()
    assert {h: len(ps) for h, ps in on_hosts.items()} == {"h1": 2, "h2": 2}  # main + helper each
    killed_at = time.monotonic()
    c.kill_on_host("h2", old["follow"])
    snap = c.wait(lambda s: s["gangs"][0]["generation"] == 2 and s["gangs"][0]["state"] == "RUNNING", 60)
    print(f"gang ({mechanism}): kill -9 of a member -> generation 2 running: {time.monotonic() - killed_at:.2f}s")
    new = by_name(snap)
    assert new["lead"]["pid"] != old["lead"] and new["follow"]["pid"] != old["follow"]
    on_hosts = c.scan_all()
    assert {p["generation"] for ps in on_hosts.values() for p in ps} == {"2"}, on_hosts  # no helper of gen 1
    assert {h: len(ps) for h, ps in on_hosts.items()} == {"h1": 2, "h2": 2}
    assert c.cli("down", str(c.path)).returncode == 0
    assert c.scan_all() == {"h1": [], "h2": []}


def test_exit_during_a_partition_is_reported_with_its_recorded_signal(cluster, bed):
    """Killed while its host was unreachable: when the host answers again, the exit its shim
    recorded (signal 9) is reported, not "unknown status"; its helper is gone too."""
    (port,) = ports(1)
    c = cluster(wrapped("web", port, 'sleep 100001 & exec "$0" "$@"', host="h2", interval=1.0, threshold=30))
    old = by_name(c.up())["web"]["pid"]
    since = c.events()[-1]["seq"]
    bed.link("h2", False)
    try:
        c.wait(lambda s: by_name(s)["web"]["state"] == "UNKNOWN", 20)
        c.kill_on_host("h2", old)  # through the host's namespaces, not the network
    finally:
        bed.link("h2", True)
    snap = c.wait(lambda s: by_name(s)["web"]["pid"] not in (None, old) and by_name(s)["web"]["state"] == "READY",
                  40)
    ev = c.wait_event(lambda e: e["kind"] == "exited" and e["process"] == "web", since, 10)
    assert (ev["code"], ev["signal"]) == (None, 9) and "signal 9" in ev["message"], ev
    assert by_name(snap)["web"]["last_exit"] == {"code": None, "signal": 9}
    assert sorted(p["generation"] for p in c.scan("h2")) == ["2", "2"]  # the new copy and its helper only
