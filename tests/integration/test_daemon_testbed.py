"""`dynamo-launch up/status/down/restart` over real SSH on the test bed (stand-in workloads).

The daemon runs as the real CLI in the root namespace; every host is a test-bed host (own
network, PID and mount namespaces, own sshd) reached only through SSH with strict host key
checking. Processes are counted on the hosts themselves (``/proc`` inside each host's
namespaces), never through the daemon. Needs root: skipped with the reason otherwise, and
failed under CI=true.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.bed_daemon import by_name, ports
from tests.daemon_harness import standin_process

pytestmark = pytest.mark.testbed

def test_up_status_down_over_ssh(cluster):
    a, b = ports(2)
    c = cluster(standin_process("web", a, hosts=["h1", "h2", "h3"])
                + standin_process("api", b, host="h2", depends_on=["web"]))
    snap = c.up()
    procs = by_name(snap)
    assert set(procs) == {"web-h1", "web-h2", "web-h3", "api"}
    on_hosts = c.scan_all()
    for name, p in procs.items():  # status tells the truth: the pid it shows runs on that host
        assert [x["pid"] for x in on_hosts[p["host"]] if x["name"] == name] == [p["pid"]]
    text = c.cli("status", "--cluster", c.name)
    assert text.returncode == 0 and "web-h3" in text.stdout and "READY" in text.stdout
    as_json = json.loads(c.cli("status", "--json", "--cluster", c.name).stdout)
    assert as_json["launch_id"] == snap["launch_id"]
    logs = c.cli("logs", "api", "--cluster", c.name, "-n", "5")
    assert f"port={b}" in logs.stdout
    down = c.cli("down", str(c.path))
    assert down.returncode == 0, down.stderr
    assert c.proc.wait(30) == 0
    assert c.scan_all() == {"h1": [], "h2": [], "h3": []}
    after = c.cli("status", "--cluster", c.name)
    assert after.returncode == 3 and "no dynamo-launch daemon" in after.stderr


def test_random_kill_9_twenty_times_never_duplicates(cluster):
    (port,) = ports(1)
    c = cluster(standin_process("web", port, hosts=["h1", "h2", "h3"], max_restarts=100, reset_after=1.0))
    c.up()
    rng = random.Random(7)
    latencies = []
    for i in range(20):
        name = rng.choice(["web-h1", "web-h2", "web-h3"])
        before = by_name(c.status())[name]
        c.kill_on_host(before["host"], before["pid"])
        t0 = time.monotonic()

        def recovered(s, name=name, old=before["pid"]):
            p = by_name(s)[name]
            return p["pid"] not in (None, old) and p["state"] == "READY"

        deadline = time.monotonic() + 30
        while not recovered(c.status()):  # meanwhile: never two copies of anything, anywhere
            assert time.monotonic() < deadline, c.log()
            for host, procs in c.scan_all().items():
                names = [p["name"] for p in procs]
                assert len(names) == len(set(names)) <= 1, (i, host, procs)
            time.sleep(0.05)
        latencies.append(time.monotonic() - t0)
    snap = c.status()
    assert sum(p["restarts"] for p in snap["processes"]) == 20
    for host, procs in c.scan_all().items():
        assert len(procs) == 1 and procs[0]["pid"] == by_name(snap)[f"web-{host}"]["pid"]
    print(f"kill -9 → READY again: median {sorted(latencies)[10]:.2f}s, max {max(latencies):.2f}s")


def test_gang_across_two_hosts_restarts_every_member(cluster):
    a, b = ports(2)
    c = cluster(standin_process("lead", a, host="h1", gang="pair")
                + standin_process("follow", b, host="h2", gang="pair", depends_on=["lead"]))
    snap = c.up()
    old = {n: p["pid"] for n, p in by_name(snap).items()}
    c.kill_on_host("h2", old["follow"])
    snap = c.wait(lambda s: s["gangs"][0]["generation"] == 2 and s["gangs"][0]["state"] == "RUNNING")
    new = by_name(snap)
    assert new["lead"]["pid"] != old["lead"] and new["follow"]["pid"] != old["follow"]
    assert new["lead"]["generation"] == new["follow"]["generation"] == 2
    on_hosts = c.scan_all()
    assert {p["generation"] for ps in on_hosts.values() for p in ps} == {"2"}  # nothing of gen 1 survives
    assert sum(len(ps) for ps in on_hosts.values()) == 2


def test_crash_loop_backs_off_to_the_cap_then_fails_and_restart_recovers(cluster):
    (port,) = ports(1)
    c = cluster(standin_process("loop", port, host="h3", max_restarts=5, health=False,
                                extra=["--crash-after", "0.3", "--exit-code", "7"]))
    c.up(wait_ready=False)
    snap = c.wait(lambda s: by_name(s)["loop"]["state"] == "FAILED", 60)
    assert by_name(snap)["loop"]["last_exit"] == {"code": 7, "signal": None}
    delays = [e["delay"] for e in c.request("events")["events"] if e["kind"] == "restarting"]
    assert delays == [0.0, 0.5, 1.0, 2.0, 2.0]  # immediate, doubling, capped at backoff_max
    r = c.cli("restart", "loop", "--cluster", c.name)
    assert r.returncode == 0 and "loop" in r.stdout
    c.wait(lambda s: by_name(s)["loop"]["state"] != "FAILED", 10)
    c.wait(lambda s: by_name(s)["loop"]["state"] == "FAILED", 60)  # still crashing: fails again, budget reset


def test_alive_but_failing_health_is_restarted(cluster, bed):
    (port,) = ports(1)
    c = cluster(standin_process("sick", port, host="h2"))
    snap = c.up()
    old = by_name(snap)["sick"]["pid"]
    address = bed.host("h2").address
    urllib.request.urlopen(f"http://{address}:{port}/unhealthy", timeout=5).read()
    snap = c.wait(lambda s: by_name(s)["sick"]["pid"] not in (None, old) and by_name(s)["sick"]["state"] == "READY")
    assert by_name(snap)["sick"]["last_exit"]["signal"] == signal.SIGTERM
    assert [p["pid"] for p in c.scan("h2")] == [by_name(snap)["sick"]["pid"]]


def test_daemon_killed_5_times_adopts_every_worker(cluster):
    a, b, d = ports(3)
    c = cluster(standin_process("web", a, hosts=["h1", "h2", "h3"])
                + standin_process("lead", b, host="h1", gang="pair")
                + standin_process("follow", d, host="h3", gang="pair", depends_on=["lead"]))
    first = c.up()
    pids = {n: p["pid"] for n, p in by_name(first).items()}
    for _ in range(5):
        c.kill_daemon()
        snap = c.up()
        assert snap["launch_id"] == first["launch_id"]
        assert {n: p["pid"] for n, p in by_name(snap).items()} == pids
        assert all(p["restarts"] == 0 and p["generation"] == 1 for p in snap["processes"])
    assert sum(len(ps) for ps in c.scan_all().values()) == 5


def test_partition_longer_than_keepalive_then_heal_keeps_one_copy(cluster, bed):
    (port,) = ports(1)
    c = cluster(standin_process("web", port, hosts=["h1", "h2"], interval=1.0, threshold=30))
    snap = c.up()
    pid = by_name(snap)["web-h2"]["pid"]
    bed.link("h2", False)
    try:
        c.wait(lambda s: by_name(s)["web-h2"]["state"] == "UNKNOWN", 20)
        time.sleep(3)  # well past the keepalive: still UNKNOWN, nothing started elsewhere
        snap = c.status()
        assert by_name(snap)["web-h2"]["state"] == "UNKNOWN" and by_name(snap)["web-h1"]["state"] == "READY"
        assert [p["pid"] for p in c.scan("h2")] == [pid]
    finally:
        bed.link("h2", True)
    snap = c.wait(lambda s: by_name(s)["web-h2"]["state"] == "READY", 40)
    assert by_name(snap)["web-h2"]["pid"] == pid and by_name(snap)["web-h2"]["restarts"] == 0
    assert [p["pid"] for p in c.scan("h2")] == [pid]


def test_a_partition_shorter_than_the_keepalive_window_kills_nothing(cluster, bed):
    """Liveness fails through an 8 s partition (threshold: 3 probes, 1.5 s), well inside SSH
    keepalive's 15 s window: the host is suspected lost within seconds and its process is UNKNOWN;
    no TERM waits in the stalled connection to be delivered when the link heals."""
    (port,) = ports(1)
    c = cluster(standin_process("web", port, hosts=["h1", "h2"], interval=0.5, threshold=3), keepalive=(5.0, 3))
    snap = c.up()
    pid = by_name(snap)["web-h2"]["pid"]
    since = c.events()[-1]["seq"]
    t0 = time.monotonic()
    bed.link("h2", False)
    try:
        c.wait(lambda s: by_name(s)["web-h2"]["state"] == "UNKNOWN", 15)
        detected = time.monotonic() - t0
        seen = set()
        while time.monotonic() - t0 < 8.0:
            seen.add(by_name(c.status())["web-h2"]["state"])
            time.sleep(0.2)
    finally:
        bed.link("h2", True)
    snap = c.wait(lambda s: by_name(s)["web-h2"]["state"] == "READY", 40)
    time.sleep(3)  # a TERM queued behind the partition would arrive about now
    snap = c.status()
    assert detected < 8.0, f"the partitioned host took {detected:.1f}s to show UNKNOWN"
    assert seen == {"UNKNOWN"}, f"states during the partition: {seen}"
    assert by_name(snap)["web-h2"]["pid"] == pid and by_name(snap)["web-h2"]["restarts"] == 0
    assert [p["pid"] for p in c.scan("h2")] == [pid]
    kinds = [e["kind"] for e in c.events(since) if e.get("process") == "web-h2"]
    assert "stopping" not in kinds and "exited" not in kinds, kinds


def test_a_process_killed_during_a_partition_shows_its_recorded_exit_once_the_host_is_back(cluster, bed):
    (port,) = ports(1)
    c = cluster(standin_process("web", port, hosts=["h2"], interval=0.5, threshold=3))
    snap = c.up()
    pid = by_name(snap)["web"]["pid"]
    bed.link("h2", False)
    try:
        c.wait(lambda s: by_name(s)["web"]["state"] == "UNKNOWN", 15)
        c.kill_on_host("h2", pid)  # the shim on h2 records signal 9; nobody can tell the daemon yet
        time.sleep(1)
    finally:
        bed.link("h2", True)
    snap = c.wait(lambda s: by_name(s)["web"]["state"] == "READY" and by_name(s)["web"]["pid"] != pid, 40)
    web = by_name(snap)["web"]
    assert web["last_exit"] == {"code": None, "signal": 9} and web["restarts"] == 1


def test_up_after_a_crash_supervises_the_reachable_hosts_while_one_is_unreachable(cluster, bed):
    """The daemon dies; h2 is partitioned when it comes back. `up` adopts h1's process and keeps
    supervising it, shows h2's as UNKNOWN (never started again), and adopts it, same pid, once h2
    answers. With --require-all-hosts the same `up` starts nothing."""
    (port,) = ports(1)
    c = cluster(standin_process("web", port, hosts=["h1", "h2"], interval=0.5, threshold=3))
    first = c.up()
    pids = {n: p["pid"] for n, p in by_name(first).items()}
    c.kill_daemon()
    bed.link("h2", False)
    try:
        strict = c.cli("up", str(c.path), "--require-all-hosts", "--log-format", "json", timeout=180)
        assert strict.returncode == 1 and "preflight failed" in strict.stderr, strict.stderr[-2000:]
        snap = c.start(timeout=180)
        snap = c.wait(lambda s: by_name(s)["web-h1"]["state"] == "READY" and by_name(s)["web-h2"]["state"] == "UNKNOWN")
        assert by_name(snap)["web-h1"]["pid"] == pids["web-h1"] and by_name(snap)["web-h2"]["pid"] == pids["web-h2"]
        c.kill_on_host("h1", pids["web-h1"])  # h1 is supervised meanwhile: restarted
        snap = c.wait(lambda s: by_name(s)["web-h1"]["state"] == "READY" and by_name(s)["web-h1"]["pid"] != pids["web-h1"])
        assert by_name(snap)["web-h2"]["state"] == "UNKNOWN"
    finally:
        bed.link("h2", True)
    snap = c.wait(lambda s: by_name(s)["web-h2"]["state"] == "READY", 60)
    assert by_name(snap)["web-h2"]["pid"] == pids["web-h2"] and by_name(snap)["web-h2"]["restarts"] == 0
    assert [p["pid"] for p in c.scan("h2")] == [pids["web-h2"]]


def test_unknown_host_key_refuses_before_starting_anything(cluster, bed, tmp_path):
    (port,) = ports(1)
    partial = tmp_path / "known_hosts_without_h3"
    h3 = bed.host("h3").address
    partial.write_text("".join(line + "\n" for line in Path(bed.known_hosts).read_text().splitlines()
                               if line and not line.split()[0].split(",")[0].strip("[]").startswith(h3)))
    c = cluster(standin_process("web", port, hosts=["h1", "h2", "h3"]), known_hosts=str(partial))
    r = c.cli("up", str(c.path), "--log-format", "json", timeout=60)
    assert r.returncode == 1
    assert "h3" in r.stderr and "SHA256:" in r.stderr and "ssh-keyscan" in r.stderr
    assert "nothing was started" in r.stderr
    for h in ("h1", "h2", "h3"):  # no stand-in and no record anywhere
        ps = bed.exec(h, ["sh", "-c", f"ls {c.state_dir}/run 2>/dev/null; pgrep -f '[s]tandin.py --port {port}' || true"],
                      capture_output=True, text=True, timeout=10)
        assert ps.stdout.strip() == "", (h, ps.stdout)


def test_hostile_inventory_strings_reach_argv_unchanged_over_ssh(cluster, bed):
    (port,) = ports(1)
    hostile = ["; touch /tmp/pwned", "$(touch /tmp/pwned2)", "`id`", "it's", 'say "hi"', "a b  c", "$HOME", "*", "\\n"]
    c = cluster(standin_process("odd", port, host="h2", extra=["--argv-file", "/tmp/odd-argv.json", "--", *hostile]))
    c.up()
    got = bed.exec("h2", ["cat", "/tmp/odd-argv.json"], capture_output=True, text=True, timeout=10)
    assert json.loads(got.stdout)[-len(hostile):] == hostile
    left = bed.exec("h2", ["sh", "-c", "ls /tmp/pwned /tmp/pwned2 2>/dev/null || true"], capture_output=True,
                    text=True, timeout=10)
    assert left.stdout.strip() == ""
    assert c.cli("down", str(c.path)).returncode == 0


def test_down_without_a_daemon_finds_and_stops_everything(cluster):
    a, b = ports(2)
    c = cluster(standin_process("web", a, hosts=["h1", "h2", "h3"])
                + standin_process("lead", b, host="h2", gang="pair"))
    c.up()
    c.kill_daemon()
    assert sum(len(ps) for ps in c.scan_all().values()) == 4  # the workers outlive the daemon
    r = c.cli("down", str(c.path))
    assert r.returncode == 0, r.stderr
    assert "stopped 4 processes" in r.stderr
    assert c.scan_all() == {"h1": [], "h2": [], "h3": []}


def test_down_without_a_daemon_gives_each_stage_its_grace_in_reverse_order(cluster):
    """A dependent on h3 drains for 1 s on TERM before what it depends on (h2) is asked to stop;
    nothing is KILLed. The TERM log lives under /var/tmp, which every bed host shares."""
    a, b = ports(2)
    shared = Path(tempfile.mkdtemp(prefix="dl-term-", dir="/var/tmp"))
    log = shared / "term.log"
    try:
        drain = ["--term-log", str(log), "--term-delay", "1.0"]
        c = cluster(standin_process("base", a, host="h2", extra=drain)
                    + standin_process("top", b, host="h3", depends_on=["base"], extra=drain))
        c.up()
        c.kill_daemon()
        r = c.cli("down", str(c.path))
        assert r.returncode == 0 and "stopped 2 processes" in r.stderr, r.stderr
        events = [line.split() for line in log.read_text().splitlines()]
        assert [(int(port), what) for port, what, _ in events] == [(b, "TERM"), (b, "EXIT"), (a, "TERM"), (a, "EXIT")]
        assert float(events[2][2]) >= float(events[1][2])
        assert c.scan_all() == {"h1": [], "h2": [], "h3": []}
        assert not Path(c.sock).exists()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_deleted_run_directory_on_a_node_is_recreated_by_the_next_spawn(cluster, bed):
    (port,) = ports(1)
    c = cluster(standin_process("web", port, host="h2", interval=0.5, threshold=3))
    snap = c.up()
    pid = by_name(snap)["web"]["pid"]
    bed.exec("h2", ["rm", "-rf", f"{c.state_dir}/run"], check=True, timeout=10)
    c.kill_on_host("h2", pid)
    snap = c.wait(lambda s: by_name(s)["web"]["state"] == "READY" and by_name(s)["web"]["pid"] != pid, 30)
    assert by_name(snap)["web"]["restarts"] == 1
    mode = bed.exec("h2", ["stat", "-c", "%a", f"{c.state_dir}/run"], capture_output=True, text=True, timeout=10)
    assert mode.stdout.strip() == "700"


def test_sighup_reload_restarts_only_the_changed_group(cluster):
    a, b = ports(2)
    web = standin_process("web", a, hosts=["h1", "h2", "h3"])
    api = standin_process("api", b, hosts=["h2", "h3"])
    c = cluster(web + api)
    before = by_name(c.up())
    diff = c.cli("plan", "--diff", "--exit-code", str(c.path))
    assert diff.returncode == 0 and "no change" in diff.stdout
    c.path.write_text(c.path.read_text().replace(f'"--port", "{b}"', f'"--port", "{b}", "--ready-after", "0.2"'))
    diff = c.cli("plan", "--diff", str(c.path))
    assert "~ api-h2 (restarted, step 1/2: argv)" in diff.stdout and "= 3 unchanged" in diff.stdout
    assert "~ api-h3 (restarted, step 2/2: argv)" in diff.stdout  # one replica at a time
    as_json = c.cli("plan", "--diff", "--json", "--exit-code", str(c.path))
    assert as_json.returncode == 1, as_json.stderr  # changes: as `git diff --exit-code`
    assert json.loads(as_json.stdout) == {
        "added": [], "removed": [], "unchanged": ["web-h1", "web-h2", "web-h3"], "steps": 2,
        "changed": [{"name": "api-h2", "step": 1, "why": "argv"}, {"name": "api-h3", "step": 2, "why": "argv"}]}
    c.proc.send_signal(signal.SIGHUP)
    snap = c.wait(lambda s: all(by_name(s)[n]["generation"] == 2 and by_name(s)[n]["state"] == "READY"
                                for n in ("api-h2", "api-h3")), 60)
    after = by_name(snap)
    assert {n: after[n]["pid"] for n in ("web-h1", "web-h2", "web-h3")} == \
           {n: before[n]["pid"] for n in ("web-h1", "web-h2", "web-h3")}  # untouched
    assert all(after[n]["pid"] != before[n]["pid"] for n in ("api-h2", "api-h3"))
    kinds = [e["kind"] for e in c.request("events")["events"]]
    assert "reload" in kinds and "reloaded" in kinds
    assert sum(len(ps) for ps in c.scan_all().values()) == 5
    lines = c.cli("events", "--json").stdout.splitlines()  # JSON Lines, the same events
    assert [json.loads(x)["kind"] for x in lines] == kinds

    # nothing changed: no "reloading"; another file: it says that file is the daemon's from now on
    other = c.path.with_name("other.toml")
    other.write_text(c.path.read_text())
    r = c.cli("reload", str(other))
    assert r.returncode == 0 and r.stdout.splitlines() == [
        "no change: a reload would leave every process running untouched",
        f"from now on the daemon reads {other} on every reload (SIGHUP, `systemctl reload`), not {c.path}"], r.stdout
    c.wait(lambda s: s["inventory"] == str(other), 10)


def test_a_rollout_halts_at_a_replica_that_does_not_come_up_and_leaves_the_rest_running(cluster):
    (port,) = ports(1)
    c = cluster(standin_process("api", port, hosts=["h1", "h2", "h3"], policy="never"))
    before = by_name(c.up())
    good = c.path.read_text()
    c.path.write_text(good.replace(f'"--port", "{port}"', f'"--port", "{port}", "--crash-after", "0"'))
    r = c.cli("reload", "--wait", "--cluster", c.name)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "step 1/3: api-h1 FAILED (generation 2): NOT READY" in r.stdout, r.stdout
    assert "halted at step 1/3: api-h1 FAILED" in r.stderr and "the steps after it were not taken" in r.stderr
    after = by_name(c.status())
    assert {n: (after[n]["pid"], after[n]["state"]) for n in ("api-h2", "api-h3")} == \
        {n: (before[n]["pid"], "READY") for n in ("api-h2", "api-h3")}  # not taken down
    assert "reload-halted" in [e["kind"] for e in c.request("events")["events"]]
    # The plan in force is what runs: the next reload takes the replicas not reached.
    c.path.write_text(good)
    diff = c.cli("plan", "--diff", str(c.path))
    assert "~ api-h1 (restarted, step 1/1: argv)" in diff.stdout and "= 2 unchanged" in diff.stdout, diff.stdout
    r = c.cli("reload", "--wait", "--cluster", c.name)
    assert r.returncode == 0 and "step 1/1: api-h1 READY (generation 3)" in r.stdout, r.stdout + r.stderr
    assert c.cli("plan", "--diff", "--exit-code", str(c.path)).returncode == 0
