"""The test bed itself (scripts/testbed, docs/testbed.md): isolation, faults, teardown.

Needs root, iproute2, util-linux and OpenSSH; skipped otherwise (failed under CI=true).
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import time
import tomllib

import pytest

import dltestbed.bed as testbed_lib
from tests.testbed_fixture import TestBed, in_ci, live_prefixes, require_testbed

_ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.testbed

SCRIPT = str(_ROOT / "scripts" / "testbed")


def run(argv, timeout=30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def cli(*args, timeout=60) -> subprocess.CompletedProcess:
    return run([sys.executable, SCRIPT, *args], timeout=timeout)


def ssh(bed: TestBed, host, command: str, connect_timeout: float = 3, timeout: float = 20):
    return run(bed.ssh_argv(host, command, connect_timeout=connect_timeout), timeout=timeout)


def ssh_ok(bed: TestBed, host, command: str) -> str:
    r = ssh(bed, host, command)
    assert r.returncode == 0, f"ssh {host} {command!r}: rc={r.returncode} {r.stderr}"
    return r.stdout


def host_exec(bed: TestBed, host, argv) -> subprocess.CompletedProcess:
    return bed.exec(host, argv, capture_output=True, text=True, timeout=20)


def start_detached(bed: TestBed, host, command: str) -> int:
    """Start ``command`` detached (setsid, like the launcher does) over ssh; its pid on the host."""
    out = ssh_ok(bed, host, f"setsid {command} </dev/null >/dev/null 2>&1 & echo $!")
    return int(out.strip())


def proc_state(bed: TestBed, host, pid: int) -> str | None:
    """State letter of ``pid`` in the host's own /proc (None: no such process)."""
    r = host_exec(bed, host, ["cat", f"/proc/{pid}/stat"])
    if r.returncode != 0:
        return None
    return r.stdout[r.stdout.rindex(")") + 2:].split()[0]


def leftovers(prefix: str) -> list[str]:
    out = []
    ns = [n for n in testbed_lib._netns_list() if n.startswith(prefix + "-")]
    out += [f"netns {n}" for n in ns]
    links = [link["ifname"] for link in testbed_lib._links() if link.get("ifname", "").startswith(prefix + "-")]
    out += [f"link {name}" for name in links]
    out += [f"process {pid}" for pid in testbed_lib._marked_processes(prefix)]
    return out


@pytest.fixture(scope="module")
def bed(testbed) -> TestBed:
    return testbed(3)


# ---------------------------------------------------------------------------------------------
def test_ssh_into_each_host(bed: TestBed):
    assert [h.name for h in bed.hosts] == ["h1", "h2", "h3"]
    assert len({h.address for h in bed.hosts}) == 3
    seen_netns = set()
    for h in bed.hosts:
        # real OpenSSH client, bed key, strict host key checking against the bed's known_hosts
        out = ssh_ok(bed, h.name, "hostname -I; readlink /proc/self/ns/net; tr '\\0' ' ' </proc/1/cmdline")
        addresses, netns, init_cmd = out.splitlines()[:3]
        assert addresses.split() == [h.address]
        assert netns == os.readlink(f"/proc/{h.init_pid}/ns/net")
        assert testbed_lib.INIT_MARKER in init_cmd and f"host={h.name}" in init_cmd  # PID 1 is the host's init
        seen_netns.add(netns)
    assert len(seen_netns) == 3
    assert os.readlink("/proc/self/ns/net") not in seen_netns
    # hosts reach each other over the bridge: from inside h1, ssh to h2
    r = host_exec(bed, "h1", bed.ssh_argv("h2", "hostname -I", connect_timeout=3))
    assert r.returncode == 0 and r.stdout.split() == [bed.host("h2").address], r.stderr


def test_strict_host_key_checking(bed: TestBed, tmp_path):
    # h2's key listed under h1's address: the client must refuse h1
    with open(bed.known_hosts) as f:
        keys = {line.split()[0]: line.split(None, 1)[1] for line in f}
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{bed.hosts[0].address} {keys[bed.hosts[1].address]}")
    argv = [a if not a.startswith("UserKnownHostsFile=") else f"UserKnownHostsFile={wrong}"
            for a in bed.ssh_argv("h1", "true", connect_timeout=3)]
    r = run(argv)
    assert r.returncode == 255
    assert "host key" in r.stderr.lower() or "REMOTE HOST IDENTIFICATION" in r.stderr


def test_pid_namespaces_are_separate(bed: TestBed):
    pid = start_detached(bed, "h1", "sleep 2999")
    try:
        on_h1 = ssh_ok(bed, "h1", "ps -eo pid=,args=")
        on_h2 = ssh_ok(bed, "h2", "ps -eo pid=,args=")
        assert any(line.split(None, 1) == [str(pid), "sleep 2999"] for line in on_h1.splitlines())
        assert "sleep 2999" not in on_h2
        assert proc_state(bed, "h2", pid) is None or "sleep 2999" not in host_exec(
            bed, "h2", ["cat", f"/proc/{pid}/cmdline"]).stdout.replace("\0", " ")
        # each host's process table holds its init, its sshd and little else
        assert len(on_h2.splitlines()) < 10
    finally:
        host_exec(bed, "h1", ["kill", str(pid)])


def test_tmp_and_run_are_private(bed: TestBed):
    name = f"dltb-test-{secrets.token_hex(4)}"
    ssh_ok(bed, "h1", f"echo h1 > /tmp/{name} && echo h1 > /run/{name}")
    assert ssh_ok(bed, "h1", f"cat /tmp/{name} /run/{name}") == "h1\nh1\n"
    assert ssh(bed, "h2", f"test -e /tmp/{name} || test -e /run/{name}").returncode == 1
    assert not os.path.exists(f"/tmp/{name}") and not os.path.exists(f"/run/{name}")
    # ... while the rest of the filesystem is shared (the venv is on every host)
    assert ssh_ok(bed, "h2", f"test -x {sys.executable} && echo yes") == "yes\n"


def test_orphans_are_reaped(bed: TestBed):
    # sh exits at once; its background sleep is orphaned, reparented to the host's PID 1 ...
    out = ssh_ok(bed, "h1", "sh -c 'sleep 1 >/dev/null 2>&1 & echo $!'")
    pid = int(out.strip())
    r = host_exec(bed, "h1", ["sh", "-c", f"grep PPid /proc/{pid}/status"])
    assert r.returncode == 0 and r.stdout.split() == ["PPid:", "1"], r.stdout
    # ... and once it exits the init reaps it: no zombie left behind
    deadline = time.monotonic() + 5
    while proc_state(bed, "h1", pid) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc_state(bed, "h1", pid) is None
    states = host_exec(bed, "h1", ["sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null"]).stdout
    zombies = [line for line in states.splitlines() if line[line.rindex(")") + 2:].startswith("Z")]
    assert zombies == []


def test_partition_link_down_up(bed: TestBed):
    assert bed.link_up("h2")
    bed.link("h2", up=False)
    try:
        assert not bed.link_up("h2")
        t0 = time.monotonic()
        r = ssh(bed, "h2", "true", connect_timeout=3)
        elapsed = time.monotonic() - t0
        assert r.returncode == 255, r.stderr
        assert elapsed < 8, f"ssh to a partitioned host took {elapsed:.1f}s"
        ssh_ok(bed, "h1", "true")  # the others are unaffected
    finally:
        bed.link("h2", up=True)
    deadline = time.monotonic() + 5
    while ssh(bed, "h2", "true").returncode != 0:
        assert time.monotonic() < deadline, "h2 unreachable after link up"
        time.sleep(0.2)
    assert ssh_ok(bed, "h2", "hostname -I").split() == [bed.host("h2").address]


def test_sshd_stop_keeps_processes(bed: TestBed):
    pid = start_detached(bed, "h3", "sleep 2998")
    try:
        bed.sshd("h3", running=False)
        assert not bed.sshd_running("h3")
        r = ssh(bed, "h3", "true")
        assert r.returncode == 255 and "refused" in r.stderr.lower(), r.stderr
        assert proc_state(bed, "h3", pid) in ("S", "R")  # processes on the host keep running
        bed.sshd("h3", running=True)
        assert bed.sshd_running("h3")
        assert str(pid) in ssh_ok(bed, "h3", "ps -eo pid=,args=").split()
    finally:
        if not bed.sshd_running("h3"):
            bed.sshd("h3", running=True)
        host_exec(bed, "h3", ["kill", str(pid)])


def test_cli_status_exec_ssh(bed: TestBed):
    common = ["--prefix", bed.prefix, "--dir", bed.dir]
    r = cli("status", "--json", *common)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert [(h["name"], h["address"], h["running"], h["link_up"], h["sshd_running"]) for h in st["hosts"]] == [
        (h.name, h.address, True, True, True) for h in bed.hosts
    ]
    r = cli("exec", "h2", *common, "--", "hostname", "-I")
    assert r.returncode == 0 and r.stdout.split() == [bed.host("h2").address], r.stderr
    r = cli("ssh", "h3", *common, "--", "echo", "hello", "from", "$(hostname -I)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["hello", "from", bed.host("h3").address]
    r = cli("inventory", *common)
    inv = tomllib.loads(r.stdout)
    assert [(h["name"], h["address"], h["gpus"]) for h in inv["hosts"]] == [(h.name, h.address, 0) for h in bed.hosts]
    assert inv["ssh"] == {"user": "root", "key_file": bed.key_file, "known_hosts": bed.known_hosts}


def test_teardown_leaves_nothing(testbed):
    b = testbed(2)
    ssh_ok(b, "h1", "true")
    start_detached(b, "h2", "sleep 2997")
    pids = {pid for h in b.hosts for pid in testbed_lib._netns_pids(h.netns)}
    pids |= {h.init_pid for h in b.hosts} | {h.launcher_pid for h in b.hosts}
    assert len(pids) >= 7  # 2 x (launcher, init, sshd) + the sleep
    b.teardown()
    assert [p for p in pids if testbed_lib._alive(p)] == []
    assert leftovers(b.prefix) == []
    assert b.bridge not in {link["ifname"] for link in testbed_lib._links()}
    assert not os.path.exists(b.dir)
    b.teardown()  # again: fine


def _cli_up(prefix: str, n: int, d: str) -> dict:
    r = cli("up", str(n), "--prefix", prefix, "--subnet", "auto", "--dir", d, "-q")
    assert r.returncode == 0, r.stderr
    return tomllib.loads(r.stdout)


def test_cli_up_is_idempotent_and_down_twice(tmp_path_factory):
    require_testbed()
    prefix = "dltb" + secrets.token_hex(2)
    d = f"/var/tmp/dltb-{prefix}"
    try:
        _cli_up(prefix, 2, d)
        inv = _cli_up(prefix, 2, d)  # again: replaces the first bed
        assert [h["name"] for h in inv["hosts"]] == ["h1", "h2"]
        assert len([n for n in testbed_lib._netns_list() if n.startswith(prefix + "-")]) == 2
        bed = TestBed.load(prefix, d)
        assert ssh_ok(bed, "h2", "hostname -I").split() == [inv["hosts"][1]["address"]]
    finally:
        first = cli("down", "--prefix", prefix, "--dir", d)
        second = cli("down", "--prefix", prefix, "--dir", d)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "nothing found" in second.stderr
    assert leftovers(prefix) == [] and not os.path.exists(d)


def test_down_after_interrupted_up():
    """Objects left by an `up` that died early (no state, no processes) are still found."""
    require_testbed()
    prefix = "dltb" + secrets.token_hex(2)
    try:
        testbed_lib._ip("netns", "add", f"{prefix}-h1")
        testbed_lib._ip("link", "add", "name", f"{prefix}-br", "type", "bridge")
        testbed_lib._ip("link", "add", f"{prefix}-v1", "type", "veth", "peer", "name", f"{prefix}-p1",
                        "netns", f"{prefix}-h1")
        assert len(leftovers(prefix)) == 3
    finally:
        r = cli("down", "--prefix", prefix)
    assert r.returncode == 0, r.stderr
    assert leftovers(prefix) == []


def test_down_all_without_state():
    """`down --all` finds a bed whose state.json is gone.  Goes last: it removes every bed
    (the module's own beds too; their finalizers then find nothing left to do)."""
    require_testbed()
    foreign = set(testbed_lib.find_beds()) - live_prefixes()
    if foreign and not in_ci():
        pytest.skip(f"other test beds exist on this machine ({', '.join(sorted(foreign))}); "
                    "`down --all` would remove them")
    prefix = "dltb" + secrets.token_hex(2)
    d = f"/var/tmp/dltb-{prefix}"
    try:
        _cli_up(prefix, 2, d)
        bed = TestBed.load(prefix, d)
        os.unlink(bed.state_file)
        r = cli("down", "--all")
        assert r.returncode == 0, r.stderr
        assert prefix in r.stderr
        assert leftovers(prefix) == []
        assert not os.path.exists(d)
        assert [h.init_pid for h in bed.hosts if testbed_lib._alive(h.init_pid)] == []
    finally:
        cli("down", "--prefix", prefix, "--dir", d)
        shutil.rmtree(d, ignore_errors=True)
