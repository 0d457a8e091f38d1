"""Another local user against the launcher's files, on the test bed (issue 14, items 1, 4 and 9).

The attacker is uid 65534 (nobody) on a host: what it makes, it makes with ``setpriv`` as that
user, inside the host's namespaces. The launcher runs as root (SSH as root on every host, the
daemon as root in the root namespace). Each test is one reproduction of the issue, which must
fail for the attacker. Needs root: skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.bed_daemon import by_name, ports
from tests.daemon_harness import PY, standin_process

pytestmark = pytest.mark.testbed

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _sh(bed, host: str, script: str, *, as_nobody: bool = False) -> str:
    r = bed.exec(host, [*(AS_NOBODY if as_nobody else []), "sh", "-c", script], capture_output=True, text=True,
                 timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _stat(bed, host: str, *paths: str) -> dict[str, tuple[int, int]]:
    """``{path: (uid, mode)}`` on ``host`` (lstat)."""
    code = "import json, os, sys; print(json.dumps({p: (os.lstat(p).st_uid, os.lstat(p).st_mode & 0o7777) for p in sys.argv[1:]}))"
    r = bed.exec(host, [PY, "-c", code, *paths], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return {p: tuple(v) for p, v in json.loads(r.stdout).items()}


def test_a_state_dir_made_first_by_another_user_on_a_node_is_a_preflight_fail_and_never_written(cluster, bed):
    (port,) = ports(1)
    c = cluster(standin_process("web", port, hosts=["h1", "h2"]))
    sd = c.state_dir
    _sh(bed, "h2", f"echo precious > /tmp/victim-{c.name}")  # root's file
    _sh(bed, "h2", f"mkdir -m 777 {sd} {sd}/logs && ln -s /tmp/victim-{c.name} {sd}/logs/web-h2.log", as_nobody=True)
    try:
        up = c.cli("up", str(c.path), timeout=120)
        out = up.stdout + up.stderr
        assert up.returncode != 0, out
        fail = [line for line in out.splitlines() if "state_dir" in line and "h2" in line]
        assert fail and "FAIL" in fail[0].upper() and "owned by uid 65534" in fail[0] and sd in fail[0], out
        assert "Traceback" not in out
        assert _sh(bed, "h2", f"cat /tmp/victim-{c.name}") == "precious\n"
        assert _sh(bed, "h2", f"ls -A {sd}") == "logs\n"  # no agent file, no run/ written into it
        assert _sh(bed, "h1", f"ls -A {sd}/run") == ""  # nothing started anywhere
    finally:
        _sh(bed, "h2", f"rm -rf {sd} /tmp/victim-{c.name}")


def test_a_state_dir_made_first_by_another_user_on_the_head_is_refused_and_its_lock_symlink_not_followed(
        cluster, tmp_path):
    (port,) = ports(1)
    c = cluster(standin_process("web", port, hosts=["h1"]))
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.chmod(tmp_path, 0o755)  # the attacker's symlink points into it; root's file stays 0644, root's
    subprocess.run([*AS_NOBODY, "sh", "-c", f"mkdir -m 777 {c.state_dir} && ln -s {victim} {c.state_dir}/daemon.lock"],
                   check=True, timeout=10)
    try:
        up = c.cli("up", str(c.path), timeout=60)
        assert up.returncode == 1, up.stderr
        assert f"state_dir {c.state_dir} is owned by uid 65534" in up.stderr and "refusing" in up.stderr
        assert "Traceback" not in up.stderr
        assert victim.read_text() == "precious"
    finally:
        shutil.rmtree(c.state_dir, ignore_errors=True)


def test_an_unwritable_state_dir_on_a_node_is_a_preflight_fail_line(cluster, bed):
    (port,) = ports(1)
    c = cluster(standin_process("web", port, hosts=["h1", "h3"]))
    sd = c.state_dir
    _sh(bed, "h3", f"mkdir -p {sd} && mount -t tmpfs -o ro,mode=0700 tmpfs {sd}")  # a read-only file system
    try:
        up = c.cli("up", str(c.path), timeout=120)
        out = up.stdout + up.stderr
        assert up.returncode != 0, out
        fail = [line for line in out.splitlines() if "state_dir" in line and "h3" in line]
        assert fail and "not writable" in fail[0] and sd in fail[0], out
        assert "Traceback" not in out
    finally:
        _sh(bed, "h3", f"umount {sd}; rm -rf {sd}")


_PLANT = """
import json, os, subprocess, sys
sd, setpriv = sys.argv[1], sys.argv[2:]
victim = subprocess.Popen(setpriv + ["sleep", "120"], start_new_session=True, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
with open("/proc/%d/stat" % victim.pid) as f:
    start = int(f.read().rsplit(")", 1)[1].split()[19])
with open("/proc/sys/kernel/random/boot_id") as f:
    boot = f.read().strip()
os.makedirs(sd + "/run", 0o700)
path = sd + "/run/web.json"
with open(path, "w") as f:
    json.dump({"name": "web", "pid": victim.pid, "pgid": victim.pid, "start_time": start, "boot_id": boot,
               "launch_id": "planted", "generation": 1, "started_at": 1e10}, f)
os.chmod(path, 0o600)
os.chown(path, 65534, 65534)  # the attacker's file, as if it had been written into a shared run/
print(victim.pid)
"""


def test_a_planted_record_of_a_live_process_is_ignored_and_that_process_never_signalled(cluster, bed):
    (port,) = ports(1)
    c = cluster(standin_process("web", port, host="h2"))
    r = bed.exec("h2", [PY, "-c", _PLANT, c.state_dir, *AS_NOBODY], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    victim = int(r.stdout)
    try:
        snap = c.up()
        assert by_name(snap)["web"]["state"] == "READY" and snap["launch_id"] != "planted"
        assert bed.exec("h2", ["kill", "-0", str(victim)], timeout=10).returncode == 0  # never signalled
        assert "ignoring a process record the launcher did not write" in c.log()
    finally:
        bed.exec("h2", ["kill", "-9", str(victim)], timeout=10)


def test_logs_are_0640_in_0750_directories_and_processes_run_in_a_private_work_dir(cluster, bed):
    (port,) = ports(1)
    marker = f"/tmp/dl-imported-{os.getpid()}"
    # one line: validate refuses control characters (newlines included) in a command
    probe = ("import importlib.util, time; importlib.util.find_spec('dl_planted') and __import__('dl_planted'); "
             "print('probe up', flush=True); time.sleep(3600)")
    c = cluster(standin_process("web", port, hosts=["h1", "h2", "h3"])
                + f'\n[[processes]]\nname = "probe"\nhost = "h2"\ncommand = {json.dumps([PY, "-c", probe])}\n')
    # A module in the state directory, the old default cwd (`python -c`/`-m` put the cwd first on sys.path).
    _sh(bed, "h2", f"mkdir -m 700 {c.state_dir} && echo 'open(\"{marker}\", \"w\")' > {c.state_dir}/dl_planted.py")
    snap = c.up()
    sd = c.state_dir
    for host in ("h1", "h2", "h3"):
        modes = _stat(bed, host, sd, f"{sd}/logs", f"{sd}/logs/web-{host}.log", f"{sd}/work", f"{sd}/run")
        assert modes == {sd: (0, 0o700), f"{sd}/logs": (0, 0o750), f"{sd}/logs/web-{host}.log": (0, 0o640),
                         f"{sd}/work": (0, 0o700), f"{sd}/run": (0, 0o700)}, (host, modes)
        pid = by_name(snap)[f"web-{host}"]["pid"]
        assert _sh(bed, host, f"readlink /proc/{pid}/cwd").strip() == f"{sd}/work"
    assert "probe up" in _sh(bed, "h2", f"cat {sd}/logs/probe.log")
    assert _sh(bed, "h2", f"ls {marker} 2>/dev/null || true") == ""  # the planted module was not imported
