"""systemd: the notify protocol over real datagram sockets, the unit, install-systemd."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from dynamo_launch import systemd_unit
from dynamo_launch.cli import main
from dynamo_launch.errors import DynamoLaunchError, InventoryError
from dynamo_launch.load import load_plan
from dynamo_launch.sdnotify import Notifier, watchdog_interval
from dynamo_launch.systemd_unit import instance, render_unit

ROOT = Path(__file__).resolve().parents[2]
GENERIC = str(ROOT / "examples" / "generic-processes.toml")


def install(path: str, **kwargs) -> list[systemd_unit.Action]:
    """``systemd_unit.install`` of the inventory at ``path``, planned as the CLI plans it."""
    return systemd_unit.install(path, load_plan(path)[1], **kwargs)


# --- sd_notify -----------------------------------------------------------------------------------------

@pytest.fixture
def listener(tmp_path: Path):
    """A bound AF_UNIX datagram socket standing in for systemd: (NOTIFY_SOCKET value, socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "n.sock"
    sock.bind(str(path))
    sock.settimeout(2)
    yield str(path), sock
    sock.close()


@pytest.fixture
def abstract_listener():
    """The same on an abstract socket (``@name``), as systemd itself uses."""
    name = f"dynamo-launch-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    yield "@" + name, sock
    sock.close()


def _messages(sock: socket.socket, n: int) -> list[dict[str, str]]:
    out = []
    for _ in range(n):
        text = sock.recv(4096).decode()
        out.append(dict(line.split("=", 1) for line in text.split("\n")))
    return out


@pytest.mark.parametrize("which", ["listener", "abstract_listener"])
def test_ready_status_watchdog_arrive_in_order(which: str, request: pytest.FixtureRequest) -> None:
    address, sock = request.getfixturevalue(which)
    n = Notifier({"NOTIFY_SOCKET": address})
    assert n.enabled
    assert n.ready() and n.status("3/7 ready") and n.watchdog()
    assert _messages(sock, 3) == [{"READY": "1"}, {"STATUS": "3/7 ready"}, {"WATCHDOG": "1"}]


def test_reloading_stopping_and_one_socket_kept(listener) -> None:
    address, sock = listener
    n = Notifier({"NOTIFY_SOCKET": address})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading("re-reading\ninventory")
    first = n._sock
    assert n.ready("supervising 7") and n.stopping() and n.extend_timeout(1.5)
    assert n._sock is first  # one socket for the daemon's life
    reload, ready, stopping, extend = _messages(sock, 4)
    assert reload["RELOADING"] == "1" and reload["STATUS"] == "re-reading inventory"
    assert before <= int(reload["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert ready == {"READY": "1", "STATUS": "supervising 7"}
    assert stopping == {"STOPPING": "1"} and extend == {"EXTEND_TIMEOUT_USEC": "1500000"}
    n.close()


def test_without_notify_socket_everything_is_a_quiet_no_op() -> None:
    for env in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}, {"NOTIFY_SOCKET": "vsock:2:1"}):
        n = Notifier(env)
        assert not n.enabled
        assert not any([n.ready(), n.status("x"), n.watchdog(), n.reloading(), n.stopping()])
        assert n._sock is None and n.watchdog_interval() is None


def test_send_errors_return_false_and_the_next_send_recovers(tmp_path: Path) -> None:
    path = tmp_path / "later.sock"
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    assert n.ready() is False  # nobody listens yet: no exception into the daemon
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        assert n.watchdog() is True
        assert _messages(sock, 1) == [{"WATCHDOG": "1"}]
    finally:
        sock.close()


def test_the_variables_are_taken_out_of_the_environment_children_inherit(listener) -> None:
    address, sock = listener
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    n = Notifier(env)
    assert env == {"PATH": "/bin"}
    assert n.watchdog_interval() == 15.0 and n.watchdog()  # read before they were removed
    assert _messages(sock, 1) == [{"WATCHDOG": "1"}]
    kept = {"NOTIFY_SOCKET": address}
    Notifier(kept, unset_environment=False)
    assert kept == {"NOTIFY_SOCKET": address}


def test_watchdog_interval_is_half_the_timeout_and_only_for_this_pid() -> None:
    me = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4242"}, pid=4242) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    for bad in ({}, {"WATCHDOG_USEC": ""}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "-5"}, {"WATCHDOG_USEC": "30s"},
                {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}):
        assert watchdog_interval(bad) is None, bad


# --- the unit ------------------------------------------------------------------------------------------

def test_unit_has_the_lines_that_matter() -> None:
    lines = set(render_unit("/opt/dl/bin/dynamo-launch").splitlines())
    for line in (
        "Type=notify", "NotifyAccess=main", "KillMode=process", "WatchdogSec=30", "OOMPolicy=continue",
        "ExecStart=/opt/dl/bin/dynamo-launch up ${DYNAMO_LAUNCH_INVENTORY} --log-format json $DYNAMO_LAUNCH_ARGS",
        "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "RestartSec=5", "StartLimitBurst=5",
        "TimeoutStartSec=3600", f"TimeoutStopSec={systemd_unit.TIMEOUT_STOP}",
        "EnvironmentFile=-/etc/dynamo-launch/%i.env",
        "Environment=DYNAMO_LAUNCH_INVENTORY=/etc/dynamo-launch/%i.toml", "StateDirectory=dynamo-launch",
        "RuntimeDirectory=dynamo-launch", "RuntimeDirectoryPreserve=yes", "PrivateTmp=no", "ProtectHome=no",
        "ProtectSystem=full", "NoNewPrivileges=yes", "LimitNOFILE=1048576", "TasksMax=infinity",
        "WantedBy=multi-user.target",
    ):
        assert line in lines, line
    settings = [x for x in lines if x and not x.startswith("#")]
    assert not any(x.startswith(("KillMode=mixed", "KillMode=control", "PrivateDevices", "ProtectKernelModules",
                                 "MemoryDenyWriteExecute")) for x in settings)
    assert "EnvironmentFile=-/srv/conf/%i.env" in render_unit("/x/dynamo-launch", conf_dir="/srv/conf")


def test_the_shipped_unit_is_the_rendered_one() -> None:
    assert (ROOT / "systemd" / "dynamo-launch@.service").read_text() == render_unit()


@pytest.mark.parametrize("bad", ["relative/dynamo-launch", "/opt/my dir/dynamo-launch", "/opt/%i/x", "/opt/$HOME/x"])
def test_paths_systemd_would_misread_are_refused(bad: str) -> None:
    with pytest.raises(DynamoLaunchError, match="absolute path"):
        render_unit(bad)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # An instance file (not the bare template) so that %i resolves; ExecStart must exist.
    unit = tmp_path / "dynamo-launch@verify.service"
    unit.write_text(render_unit(sys.executable, conf_dir=str(tmp_path)))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          check=False, timeout=60)
    complaints = [x for x in (proc.stdout + proc.stderr).splitlines() if unit.name in x]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


# What `systemd-analyze security` rates the unit (9.3 UNSAFE before the hardening; docs/systemd.md
# says what each remaining exposure is for). A change that loosens the sandbox fails here.
SECURITY_EXPOSURE = 7.8
HARDENED = ("NoNewPrivileges=", "ProtectHostname=", "LockPersonality=", "RestrictSUIDSGID=", "RestrictRealtime=",
            "SystemCallArchitectures=", "CapabilityBoundingSet=~CAP_SYS_BOOT", "SystemCallFilter=~@reboot",
            "SystemCallFilter=~@swap", "SystemCallFilter=~@obsolete", "SystemCallFilter=~@clock",
            "SystemCallFilter=~@cpu-emulation", "NotifyAccess=")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_security_rates_the_unit_no_worse_than_recorded(tmp_path: Path) -> None:
    unit = tmp_path / "dynamo-launch@rated.service"
    unit.write_text(render_unit(sys.executable, conf_dir=str(tmp_path)))
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit.name],
                          capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    if "--offline" in out and "unrecognized" in out:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert score <= SECURITY_EXPOSURE, out
    passed = {line.split()[1] for line in out.splitlines() if line.startswith("✓")}
    assert [h for h in HARDENED if h not in passed] == [], out


# --- install ---------------------------------------------------------------------------------------------

@pytest.fixture
def no_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def fake_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A systemctl on PATH that records its arguments (and fails for `enable` of cluster `broken`)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\n'
                      'case "$*" in *broken*) echo "Failed to enable unit: nope" >&2; exit 1;; esac\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(systemd_unit, "systemd_running", lambda: True)
    return log


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    units, conf = tmp_path / "units", tmp_path / "conf"
    actions = install(GENERIC, dry_run=True, unit_dir=str(units), conf_dir=str(conf), executable="/opt/x/dynamo-launch")
    assert not units.exists() and not conf.exists()
    assert [a.describe() for a in actions] == [
        f"write {units}/dynamo-launch@.service",
        f"write {conf}/generic.env (DYNAMO_LAUNCH_INVENTORY={GENERIC})",
        "run systemctl daemon-reload",
        "run systemctl enable dynamo-launch@generic.service",
    ]
    assert {a.outcome for a in actions} == {"planned"}
    assert actions[0].content == render_unit("/opt/x/dynamo-launch", conf_dir=str(conf))


def test_install_writes_unit_and_env_and_skips_commands_without_systemctl(tmp_path: Path, no_systemctl) -> None:
    units, conf = tmp_path / "units", tmp_path / "conf"
    actions = install(GENERIC, unit_dir=str(units), conf_dir=str(conf), executable="/opt/x/dynamo-launch")
    assert (units / "dynamo-launch@.service").read_text() == render_unit("/opt/x/dynamo-launch", conf_dir=str(conf))
    env = conf / "generic.env"
    assert f"DYNAMO_LAUNCH_INVENTORY={GENERIC}" in env.read_text().splitlines()
    assert stat.S_IMODE(env.stat().st_mode) == 0o600  # it is where the secrets go
    assert [(a.kind, a.outcome) for a in actions] == [("write", "done"), ("write", "done"), ("run", "skipped"),
                                                      ("run", "skipped")]
    assert "systemctl not found" in actions[2].detail


def test_reinstall_keeps_the_operators_lines_of_the_env_file(tmp_path: Path, no_systemctl) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    old = "HF_TOKEN=hf_secret\nDYNAMO_LAUNCH_INVENTORY=/old/inv.toml\nPATH=/opt/bin:/usr/bin"  # no final newline
    (conf / "generic.env").write_text(old)
    actions = install(GENERIC, unit_dir=str(tmp_path / "u"), conf_dir=str(conf), enable=False)
    new = f"HF_TOKEN=hf_secret\nDYNAMO_LAUNCH_INVENTORY={GENERIC}\nPATH=/opt/bin:/usr/bin\n"
    assert (conf / "generic.env").read_text() == new
    assert "hf_secret" not in " ".join(a.describe() for a in actions)
    assert [a.argv for a in actions if a.kind == "run"] == [("systemctl", "daemon-reload")]


def test_systemctl_is_run_and_its_failure_reported(tmp_path: Path, fake_systemctl: Path) -> None:
    actions = install(GENERIC, unit_dir=str(tmp_path / "u"), conf_dir=str(tmp_path / "c"))
    assert [a.outcome for a in actions] == ["done"] * 4
    assert fake_systemctl.read_text().splitlines() == ["daemon-reload", "enable dynamo-launch@generic.service"]
    broken = tmp_path / "broken.toml"
    broken.write_text(Path(GENERIC).read_text().replace('name = "generic"', 'name = "broken"'))
    failed = install(str(broken), unit_dir=str(tmp_path / "u"), conf_dir=str(tmp_path / "c"))[-1]
    assert failed.outcome == "failed" and failed.detail == "Failed to enable unit: nope"


def test_a_slow_stopping_cluster_gets_a_longer_stop_timeout(tmp_path: Path, no_systemctl) -> None:
    inv = tmp_path / "slow.toml"
    slow = Path(GENERIC).read_text().replace('policy = "on-failure"', 'policy = "on-failure"\nstop_timeout = 400')
    inv.write_text(slow)
    actions = install(str(inv), unit_dir=str(tmp_path / "u"), conf_dir=str(tmp_path / "c"))
    dropin = tmp_path / "u" / "dynamo-launch@generic.service.d" / "stop-timeout.conf"
    assert dropin.exists() and actions[2].path == str(dropin)
    timeout = int(dropin.read_text().split("TimeoutStopSec=")[1])
    assert timeout > 400  # that process alone may take 400 s
    assert not any("stop-timeout" in a.path for a in install(GENERIC, dry_run=True))


def test_a_bad_inventory_is_reported_and_nothing_is_written(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[cluster]\nname = "x"\nhead = "nope"\n')
    with pytest.raises(InventoryError):
        load_plan(str(bad))
    result = CliRunner().invoke(main, ["install-systemd", str(bad), "--unit-dir", str(tmp_path / "u"),
                                       "--conf-dir", str(tmp_path / "c")])
    assert result.exit_code == 1 and "bad.toml:" in result.output
    assert not (tmp_path / "u").exists() and not (tmp_path / "c").exists()


# --- the command ---------------------------------------------------------------------------------------

def test_cli_dry_run_prints_actions_and_the_unit(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["install-systemd", "--dry-run", GENERIC, "--unit-dir", str(tmp_path / "u"),
                                       "--conf-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"write {tmp_path}/u/dynamo-launch@.service" in out
    assert "run systemctl enable dynamo-launch@generic.service" in out
    assert "KillMode=process" in out and "Type=notify" in out
    assert not (tmp_path / "u").exists() and not (tmp_path / "c").exists()


def test_cli_dry_run_with_default_dirs_names_etc() -> None:
    result = CliRunner().invoke(main, ["install-systemd", "--dry-run", "--no-enable", GENERIC])
    assert result.exit_code == 0, result.output
    assert "write /etc/systemd/system/dynamo-launch@.service" in result.output
    assert "write /etc/dynamo-launch/generic.env" in result.output and "run systemctl enable" not in result.output


def test_cli_without_systemctl_writes_warns_and_exits_zero(tmp_path: Path, no_systemctl) -> None:
    result = CliRunner().invoke(main, ["install-systemd", GENERIC, "--unit-dir", str(tmp_path / "u"),
                                       "--conf-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    warning = "warning: not run (systemctl not found on PATH): systemctl enable dynamo-launch@generic.service"
    assert warning in result.output
    assert (tmp_path / "u" / "dynamo-launch@.service").exists() and (tmp_path / "c" / "generic.env").exists()


def test_cli_failed_systemctl_exits_one(tmp_path: Path, fake_systemctl: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(Path(GENERIC).read_text().replace('name = "generic"', 'name = "broken"'))
    result = CliRunner().invoke(main, ["install-systemd", str(broken), "--unit-dir", str(tmp_path / "u"),
                                       "--conf-dir", str(tmp_path / "c")])
    assert result.exit_code == 1
    assert "error: systemctl enable dynamo-launch@broken.service failed: Failed to enable unit: nope" in result.output


def test_cli_bad_inventory_gets_located_errors_and_exit_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[cluster]\nname = "x"\nhead = "nope"\nnmae = 1\n\n[[hosts]]\nname = "a"\naddress = "10.0.0.1"\n')
    result = CliRunner().invoke(main, ["install-systemd", str(bad), "--unit-dir", str(tmp_path / "u"),
                                       "--conf-dir", str(tmp_path / "c")])
    assert result.exit_code == 1
    assert f"{bad}:3: cluster.head: unknown host 'nope'; hosts are a" in result.output
    assert not (tmp_path / "u").exists() and not (tmp_path / "c").exists()


def test_instance_name() -> None:
    assert instance("llama70b") == "dynamo-launch@llama70b.service"
