"""Files and directories another local user could have made or planted are refused (issue 14,
items 1 and 4): the checks of agent.py that the head's daemon shares, the agent's records and
logs, the bootstrap's refusal, and preflight's state_dir line. "Another user" is uid 65534
(nobody): files are given to it with chown, which needs root (skipped otherwise)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest

from dynamo_launch.agent import LogWriter, Unsafe, open_private, private_dir, read_record
from dynamo_launch.errors import AgentError, UnsafePath
from dynamo_launch.preflight import Check, state_dir_checks
from tests.agent_harness import PY, launch_id, node, run  # noqa: F401  (launch_id: a fixture)

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


def _theirs(path, mode: int = 0o700):
    """A directory ``path`` made by the other user (uid 65534)."""
    path.mkdir(mode=mode, parents=True)
    os.chown(path, NOBODY, NOBODY)
    return path


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_missing_directory_is_made_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        assert private_dir(str(tmp_path / "a" / "state"), 0o700) is True
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a" / "state") == 0o700 and _mode(tmp_path / "a") == 0o700
    assert private_dir(str(tmp_path / "a" / "state"), 0o700) is False  # reused: ours and private


@as_root
def test_a_directory_made_first_by_another_user_is_refused(tmp_path):
    d = _theirs(tmp_path / "state")
    with pytest.raises(Unsafe, match=r"state_dir .*/state is owned by uid 65534.*another user created it\?.*refusing"):
        private_dir(str(d), 0o700, "state_dir")


def test_a_symlinked_or_group_writable_directory_is_refused(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(Unsafe, match="is a symlink"):
        private_dir(str(tmp_path / "link"))
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o775)
    with pytest.raises(Unsafe, match=r"writable by group \(mode 0775; chmod go-w\)"):
        private_dir(str(tmp_path / "open"))
    (tmp_path / "file").write_text("")
    with pytest.raises(Unsafe, match="is not a directory"):
        private_dir(str(tmp_path / "file"))


@as_root
def test_a_directory_under_one_another_user_controls_is_refused(tmp_path):
    theirs = _theirs(tmp_path / "theirs", 0o755)
    with pytest.raises(Unsafe, match=r"theirs is owned by uid 65534.*could replace"):
        private_dir(str(theirs / "state"))
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # world-writable without the sticky bit: anyone can rename our directory
    with pytest.raises(Unsafe, match="no sticky bit"):
        private_dir(str(shared / "state"))
    os.chmod(shared, 0o1777)  # like /tmp: fine
    assert private_dir(str(shared / "state")) is True


def test_an_unwritable_directory_says_so(tmp_path):
    with pytest.raises(Unsafe, match=r"state_dir /proc/dl-nope cannot be created: "):
        private_dir("/proc/dl-nope", 0o700, "state_dir")


def test_a_planted_symlink_is_never_opened_and_its_target_is_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "daemon.lock").symlink_to(victim)
    with pytest.raises(Unsafe, match=r"lock file .*daemon.lock is a symlink: refusing"):
        open_private(str(tmp_path / "daemon.lock"), os.O_RDWR | os.O_CREAT, 0o600, "lock file")
    assert victim.read_text() == "precious"


@as_root
def test_a_file_of_another_user_is_refused(tmp_path):
    f = tmp_path / "daemon.lock"
    f.write_text("")
    os.chown(f, NOBODY, NOBODY)
    with pytest.raises(Unsafe, match="owned by uid 65534"):
        os.close(open_private(str(f), os.O_RDWR))


def test_a_log_is_0640_and_an_older_0644_one_is_tightened(tmp_path):
    LogWriter(str(tmp_path / "logs" / "a.log"), 1 << 20, 2).write(b"token=x\n")
    assert _mode(tmp_path / "logs") == 0o750 and _mode(tmp_path / "logs" / "a.log") == 0o640
    old = tmp_path / "logs" / "b.log"
    old.write_text("")
    os.chmod(old, 0o644)
    LogWriter(str(old), 1 << 20, 2)
    assert _mode(old) == 0o640


def test_a_log_planted_as_a_symlink_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("")
    (tmp_path / "logs").mkdir(mode=0o750)
    (tmp_path / "logs" / "a.log").symlink_to(victim)
    with pytest.raises(Unsafe, match="is a symlink"):
        LogWriter(str(tmp_path / "logs" / "a.log"), 1 << 20, 2)
    assert victim.read_text() == ""


def _record(path, pid: int, **extra) -> None:
    from dynamo_launch.agent import boot_id, proc_stat

    rec = {"name": path.stem, "pid": pid, "pgid": pid, "start_time": proc_stat(pid)[1], "boot_id": boot_id(),
           "launch_id": "planted", "generation": 1, **extra}
    path.write_text(json.dumps(rec))


@as_root
def test_only_records_of_ours_with_mode_0600_are_trusted(tmp_path):
    good = tmp_path / "good.json"
    _record(good, os.getpid())
    os.chmod(good, 0o600)
    assert read_record(str(good))[0]["pid"] == os.getpid()
    loose = tmp_path / "loose.json"
    _record(loose, os.getpid())
    os.chmod(loose, 0o644)
    assert read_record(str(loose)) == (None, f"record {loose} has mode 0644, not 0600: ignored")
    theirs = tmp_path / "theirs.json"
    _record(theirs, os.getpid())
    os.chmod(theirs, 0o600)
    os.chown(theirs, NOBODY, NOBODY)
    assert read_record(str(theirs))[0] is None and "owned by uid 65534" in read_record(str(theirs))[1]
    (tmp_path / "link.json").symlink_to(good)
    assert "is a symlink" in read_record(str(tmp_path / "link.json"))[1]
    assert read_record(str(tmp_path / "none.json")) == (None, None)


@as_root
def test_a_planted_record_of_a_live_process_is_listed_untrusted_and_never_signalled(tmp_path, launch_id):
    victim = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: os.setuid(NOBODY))  # another user's process
    try:
        async def go():
            async with node(tmp_path, launch_id) as n:
                planted = tmp_path / "run" / "evil.json"
                _record(planted, victim.pid)
                os.chmod(planted, 0o600)
                os.chown(planted, NOBODY, NOBODY)
                listed = await n.call("list")
                assert listed == [{"name": "evil", "alive": False, "untrusted": listed[0]["untrusted"]}]
                assert "owned by uid 65534" in listed[0]["untrusted"]
                with pytest.raises(AgentError):  # watch, signal: there is no record of "evil"
                    await n.call("watch", name="evil")
                start_time = json.loads(planted.read_text())["start_time"]
                out = await n.call("signal", name="evil", pid=victim.pid, start_time=start_time, signal="KILL")
                assert out["sent"] is False
                # nor does a scan find another user's process that claims our launch id
                assert await n.call("scan", launch_id="planted") == []

        run(go())
        time.sleep(0.1)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


@as_root
def test_the_agent_refuses_a_state_dir_made_by_another_user_and_runs_nothing_from_it(tmp_path, launch_id):
    state = _theirs(tmp_path / "state", 0o755)

    async def go():
        with pytest.raises(UnsafePath, match=r"state_dir .*/state is owned by uid 65534, not uid 0.*refusing"):
            async with node(state, launch_id):
                pass

    run(go())
    assert os.listdir(state) == []  # no agent file written into it, nothing run from it


def test_the_agent_refuses_a_state_dir_under_a_directory_others_can_write(tmp_path, launch_id):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)

    async def go():
        with pytest.raises(UnsafePath, match=r"shared is writable by other users .*no sticky bit"):
            async with node(shared / "state", launch_id):
                pass

    run(go())


def test_preflight_shows_the_state_dir_of_every_reachable_host():
    checks = [Check("h1", "reach", "ok", "ssh"), Check("h1", "ports", "ok", "1 free"),
              Check("h2", "reach", "ok", "ssh"), Check("h3", "reach", "fail", "no route")]
    out = state_dir_checks(checks, "/var/lib/dl", {"h1"}, {"h2": "h2 (root@x:22): state_dir /var/lib/dl is a symlink"})
    assert [(c.host, c.name, c.status) for c in out] == [
        ("h1", "reach", "ok"), ("h1", "state_dir", "ok"), ("h1", "ports", "ok"),
        ("h2", "reach", "ok"), ("h2", "state_dir", "fail"), ("h3", "reach", "fail")]


@as_root
def test_a_control_socket_directory_made_first_by_another_user_is_refused(tmp_path, monkeypatch):
    from dynamo_launch import control

    theirs = _theirs(tmp_path / "dynamo-launch-0")
    _theirs(theirs / "dynamo-launch")
    monkeypatch.setenv("DYNAMO_LAUNCH_RUNTIME_DIR", str(theirs / "dynamo-launch"))
    with pytest.raises(UnsafePath, match="owned by uid 65534"):
        control.find_socket()  # `status` never talks to a socket the other user could answer on

    async def start():
        await control.ControlServer(control.socket_path("c"), lambda req: None).start()

    with pytest.raises(UnsafePath, match="owned by uid 65534"):
        run(start())
    assert os.listdir(theirs / "dynamo-launch") == []
