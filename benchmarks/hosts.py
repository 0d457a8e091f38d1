"""Looking at the test bed's hosts from the root namespace: marked processes, ports, connections.

The bed's hosts are PID and network namespaces under the root namespace, so the root's ``/proc``
sees every process of every host; a process's host is the one whose network namespace it shares.
Scenario modules use these helpers to verify that a run left nothing behind, to clean up what
they started, to wait for ports, and to count SSH connections (one per host is a claim to check).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import PY

__all__ = [
    "find_marked",
    "host_of_pid",
    "kill_marked",
    "kill_pids",
    "launch_leftovers",
    "private_homes",
    "sshd_sessions",
    "tcp_peers",
    "wait_ports",
]


def _environ(pid: str, proc_root: str) -> list[bytes] | None:
    try:
        with open(f"{proc_root}/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def find_marked(needle: str, proc_root: str = "/proc") -> list[int]:
    """Pids (root namespace) of every process, on any bed host, whose environment holds ``needle``
    (a whole ``NAME=value`` entry, e.g. ``DYNAMO_LAUNCH_ID=abc123``)."""
    want = needle.encode()
    return [int(pid) for pid in os.listdir(proc_root)
            if pid.isdigit() and want in (_environ(pid, proc_root) or [])]


def launch_leftovers(launch_id: str) -> list[int]:
    """Pids of processes of dynamo-launch launch ``launch_id`` still running on any host."""
    return find_marked(f"DYNAMO_LAUNCH_ID={launch_id}")


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    """Signal root-namespace ``pids``; ones already gone are skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_marked(needle: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process marked with ``needle`` and wait (bounded) until none is left;
    the pids still alive after ``timeout`` (empty when clean)."""
    deadline = time.monotonic() + timeout
    left = find_marked(needle)
    while left and time.monotonic() < deadline:
        kill_pids(left)
        time.sleep(0.05)
        left = find_marked(needle)
    return left


def wait_ports(targets: list[tuple[str, int]], timeout: float = 60.0, interval: float = 0.01) -> float | None:
    """Poll until every ``(address, port)`` accepts a TCP connection; the wall time (``time.time()``)
    at which the last one first accepted, or None after ``timeout``."""
    pending = set(targets)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for target in list(pending):
            with contextlib.suppress(OSError):
                socket.create_connection(target, timeout=0.5).close()
                pending.discard(target)
        if pending:
            time.sleep(interval)
    return None if pending else time.time()


def _netns(pid: int | str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


def host_of_pid(bed, pid: int) -> str | None:
    """The bed host whose network namespace ``pid`` lives in (None: the root's or gone)."""
    ns = _netns(pid)
    for h in bed.hosts:
        if ns and _netns(h.init_pid) == ns:
            return h.name
    return None


def tcp_peers(pid: int) -> Counter:
    """Established TCP connections of process ``pid`` (root network namespace), counted by
    remote ``(address, port)``. Used to check "one SSH connection per host" on the daemon."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    peers: Counter = Counter()
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] != "01" or parts[9] not in inodes:  # 01 = ESTABLISHED
                continue
            addr, port = parts[2].split(":")
            ip = socket.inet_ntoa(int(addr, 16).to_bytes(4, "little"))
            peers[(ip, int(port, 16))] += 1
    return peers


def sshd_sessions(bed) -> dict[str, int]:
    """Per bed host: how many sshd connection processes run there now (``sshd: user@...``
    session processes, one per SSH connection; the listener is not counted)."""
    by_ns = {_netns(h.init_pid): h.name for h in bed.hosts}
    counts = {h.name: 0 for h in bed.hosts}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("sshd:") and "@" in cmd:
            host = by_ns.get(_netns(pid))
            if host is not None:
                counts[host] += 1
    return counts


def _keep_under_root() -> list[str]:
    """Paths under /root the hosts still need with a private home: this python's installation
    (here a venv whose interpreter lives in /root/.pyenv)."""
    keep = set()
    for path in (os.path.realpath(sys.base_prefix), os.path.realpath(PY)):
        parts = Path(path).parts
        if parts[:2] == ("/", "root") and len(parts) > 2:
            keep.add(str(Path("/root", parts[2])))
    return sorted(keep)


def private_homes(bed, hosts: list[str], root: Path, mount: bool) -> None:
    """Mount (or unmount) an empty per-host home over /root inside each host's mount namespace.

    Like a fresh node's, a host's home then holds nothing of this machine's (whose root
    ``.bashrc`` may cost every SSH command tenths of a second, on every tool alike), and what a
    tool writes to ``~`` stays on its host. Mounts stack: a scenario may mount its own over one.

    What the hosts' python needs from /root (``_keep_under_root``) is bind-mounted into it first.
    The mounts exist only inside the hosts (their propagation is ``slave``): from here each home
    is a plain directory whose mount points are empty, so removing it touches nothing else.
    """
    keep = _keep_under_root()
    for h in hosts:
        home = root / f"home-{h}"
        if mount:
            home.mkdir(parents=True)
            (home / ".bashrc").write_text("")  # sourced by bash for every SSH command, and by `ray up`
            cmds = []
            for path in keep:
                inner = home / os.path.relpath(path, "/root")
                inner.mkdir()
                cmds.append(["mount", "--bind", path, str(inner)])
            cmds.append(["mount", "--rbind", str(home), "/root"])
        else:
            cmds = [["umount", "-l", "/root"]] + [["umount", "-l", str(home / os.path.relpath(p, "/root"))]
                                                  for p in keep]
        for argv in cmds:
            r = bed.exec(h, argv, capture_output=True, text=True, timeout=30)
            if mount and r.returncode != 0:
                raise RuntimeError(f"{h}: {' '.join(argv)}: {r.stderr.strip()}")
