"""Test bed: N fake "hosts" on this machine, each with its own network, PID and mount
namespace and its own OpenSSH server, on a private Linux bridge (DESIGN.md section 5).

Standard library only, no project imports: ``python -m dltestbed`` (``scripts/testbed``) wraps this module, and
tests/benchmarks import it (``tests/testbed_fixture.py``).  Needs root, ``ip`` (iproute2),
``unshare``/``nsenter``/``mount`` (util-linux) and OpenSSH (``sshd``, ``ssh``, ``ssh-keygen``).

Layout of a bed with prefix ``P`` (default ``dltb``) and subnet ``10.77.0.0/24``::

    root namespace: bridge P-br 10.77.0.1/24, root-side veths P-v1, P-v2, ... (bridge ports)
    host hN:        netns P-hN, eth0 10.77.0.(N+1)/24, lo up, default route via 10.77.0.1 only
                    PID namespace whose PID 1 is a tiny init (written to <dir>/dltb-init.py)
                    mount namespace with private tmpfs on /tmp, /run and /dev/shm
                    sshd listening on <address>:22 (key-only, root via key)
    <dir> (default /var/tmp/dltb-P; never under /tmp or /run, which hosts don't share):
        id_ed25519(.pub) client key, authorized_keys, known_hosts, state.json,
        hosts/hN/{ssh_host_ed25519_key, sshd_config, init.log, sshd.log, sshd.state}

Every object is named after the prefix and marked (interface alias, init argv) so that
teardown can find it again without state.json.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Sequence

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_SUBNET",
    "Host",
    "TestBed",
    "TestBedError",
    "default_dir",
    "find_beds",
    "missing_prerequisites",
]

DEFAULT_PREFIX = "dltb"
DEFAULT_SUBNET = "10.77.0.0/24"
#: ``subnet="auto"`` picks a free 10.77.X.0/24 (X random) so several beds can coexist.
AUTO_SUBNET_POOL = "10.77.0.0/16"
MARKER = "dynamo-launch-testbed"
INIT_MARKER = "dynamo-launch-testbed-init"
DIR_MARKER_FILE = ".dynamo-launch-testbed"
LOCK_FILE = "/run/lock/dynamo-launch-testbed.lock"
#: ``down --all`` also tears down beds whose prefix starts like this even when nothing else
#: (state.json, interface alias, init process) is left to identify them.
FAMILY_RE = re.compile(r"^dltb[a-z0-9]*$")
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
IFNAMSIZ = 15  # usable characters of a Linux interface name
SSH_PORT = 22

_SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/local/bin")


class TestBedError(RuntimeError):
    """A test bed operation failed; the message says what and, when known, why."""

    __test__ = False  # not a pytest test class


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(_SBIN)
    return shutil.which(name, path=path)


def missing_prerequisites(probe: bool = True) -> list[str]:
    """What stops a bed from being created here (empty list: nothing).

    Checks root, the needed programs and, with ``probe``, that namespaces can be created.
    """
    missing = []
    if os.geteuid() != 0:
        missing.append(f"must run as root (euid {os.geteuid()})")
    for prog, pkg in (
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("mount", "mount"),
        ("sshd", "openssh-server"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
    ):
        if _which(prog) is None:
            missing.append(f"`{prog}` not found (package {pkg})")
    if probe and not missing:
        try:
            r = subprocess.run(
                [_which("unshare") or "unshare", "--net", "--pid", "--fork", "--mount", "true"],
                capture_output=True, text=True, timeout=10,
            )
            if r.returncode != 0:
                missing.append(f"cannot create namespaces: {r.stderr.strip() or r.returncode}")
        except (OSError, subprocess.SubprocessError) as e:
            missing.append(f"cannot create namespaces: {e}")
    return missing


def default_dir(prefix: str) -> str:
    return f"/var/tmp/dltb-{prefix}"


# --------------------------------------------------------------------------------------------
# The per-host init (PID 1 of the host's PID namespace).  Written to <dir>/dltb-init.py and run
# as: python3 dltb-init.py dynamo-launch-testbed-init prefix=P host=hN HOSTDIR SSHD CONFIG
# --------------------------------------------------------------------------------------------
INIT_SOURCE = r'''
"""PID 1 of one test bed host: private /tmp, /run, /dev/shm; runs sshd; reaps every orphan.

Signals: SIGUSR1 stop sshd (listener only), SIGUSR2 start sshd, SIGTERM/SIGINT/SIGHUP kill
everything in the host and exit.  State of sshd goes to HOSTDIR/sshd.state (JSON).
"""
import json, os, signal, subprocess, sys, time

HOSTDIR, SSHD, CONFIG = sys.argv[4], sys.argv[5], sys.argv[6]
KEEP = sys.argv[7:]  # paths under /tmp, /run or /dev/shm that must stay visible (the project, its venv)
SIGS = {signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
sshd_pid = None


def log(msg):
    print("[init %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def write_state():
    tmp = os.path.join(HOSTDIR, "sshd.state.tmp")
    with open(tmp, "w") as f:
        json.dump({"running": sshd_pid is not None, "pid": sshd_pid, "time": time.time()}, f)
    os.replace(tmp, os.path.join(HOSTDIR, "sshd.state"))


def start_sshd():
    global sshd_pid
    if sshd_pid is not None:
        return
    pid = os.fork()
    if pid == 0:  # child: own session, default signals, nothing blocked
        try:
            os.setsid()
            for s in SIGS:
                signal.signal(s, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            fd = os.open(os.path.join(HOSTDIR, "sshd.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.execv(SSHD, [SSHD, "-D", "-e", "-f", CONFIG])
        finally:
            os._exit(127)
    sshd_pid = pid
    log("sshd started, pid %d" % pid)
    write_state()


def reap():
    global sshd_pid
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == sshd_pid:
            sshd_pid = None
            log("sshd exited (status %d)" % status)
            write_state()


def stop_sshd():
    global sshd_pid
    pid = sshd_pid
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)  # the listener only: sessions have their own sessions
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while sshd_pid is not None and time.monotonic() < deadline:
        time.sleep(0.01)
        reap()
    if sshd_pid is not None:
        os.kill(pid, signal.SIGKILL)
        while sshd_pid is not None:
            time.sleep(0.01)
            reap()
    log("sshd stopped")


def main():
    for s in SIGS:  # handlers too: a PID-namespace init ignores signals it has no handler for
        signal.signal(s, lambda *a: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGS)
    private = (("/tmp", "1777"), ("/run", "0755"), ("/dev/shm", "1777"))
    # A checkout (and its venv) under /tmp would vanish behind the private /tmp: hold each such
    # path open, and bind it back at the same place once the tmpfs is mounted.
    held = [(p, os.open(p, os.O_PATH)) for p in KEEP
            if os.path.isdir(p) and any(p == m or p.startswith(m + "/") for m, _ in private)]
    for path, mode in private:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=%s,nosuid,nodev" % mode, "tmpfs", path], check=True)
    for path, fd in held:
        os.makedirs(path, exist_ok=True)
        # --no-canonicalize: the kernel, not mount(8), must follow the fd's magic link, which
        # leads to the original directory rather than to the new, empty one of the same name.
        subprocess.run(["mount", "--no-canonicalize", "--bind", "/proc/self/fd/%d" % fd, path],
                       check=True, pass_fds=(fd,))
        os.close(fd)
        log("kept %s visible" % path)
    # `ip netns exec` gave the host a fresh /sys without cgroup mounts: mount the cgroup v2
    # hierarchy where a unified node has it, so the agent's cgroup containment runs here as on
    # such a node (the hierarchy is the machine's, shared by all hosts; best effort).
    if os.path.isdir("/sys/fs/cgroup") and not os.path.exists("/sys/fs/cgroup/cgroup.procs"):
        r = subprocess.run(["mount", "-t", "cgroup2", "-o", "nosuid,nodev,noexec", "cgroup2", "/sys/fs/cgroup"],
                           capture_output=True, text=True)
        log("cgroup2 on /sys/fs/cgroup" if r.returncode == 0 else "no cgroup2: %s" % r.stderr.strip())
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    start_sshd()
    log("ready")
    while True:
        info = signal.sigtimedwait(SIGS, 5.0)
        reap()
        if info is None:
            continue
        if info.si_signo == signal.SIGUSR1:
            stop_sshd()
        elif info.si_signo == signal.SIGUSR2:
            start_sshd()
        elif info.si_signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            log("terminating host")
            try:
                os.kill(-1, signal.SIGKILL)  # every other process of this PID namespace
            except ProcessLookupError:
                pass
            sys.exit(0)


if __name__ == "__main__":
    if os.getpid() != 1:
        sys.exit("dltb-init: must be PID 1 of a new PID namespace")
    try:
        main()
    except Exception as e:
        log("fatal: %r" % (e,))
        raise
'''


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _run(argv: Sequence[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TestBedError(f"{shlex.join(argv)}: {e}") from None
    if check and r.returncode != 0:
        raise TestBedError(f"{shlex.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run([_which("ip") or "ip", *args], check=check)


def _netns_list() -> list[str]:
    r = _ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _links(netns: str | None = None) -> list[dict]:
    args = ["-j", "link", "show"] if netns is None else ["-n", netns, "-j", "link", "show"]
    r = _ip(*args, check=False)
    try:
        return json.loads(r.stdout or "[]")
    except ValueError:
        return []


def _netns_pids(netns: str) -> list[int]:
    r = _ip("netns", "pids", netns, check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def _proc_state(pid: int) -> str | None:
    """Process state letter, or None when the pid does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()[0]


def _alive(pid: int | None) -> bool:
    """Running (a zombie counts as dead: it is only waiting for its parent)."""
    if not pid:
        return False
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        pass
    kids = []  # no CONFIG_PROC_CHILDREN: scan
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    data = f.read()
                if int(data[data.rindex(")") + 2:].split()[1]) == pid:
                    kids.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def _marked_processes(prefix: str | None = None) -> dict[int, str]:
    """Bed init processes (and their `unshare` launchers) by argv marker: {pid: prefix}."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        args = _cmdline(int(d))
        if INIT_MARKER not in args:
            continue
        p = next((a[7:] for a in args if a.startswith("prefix=")), None)
        if p and (prefix is None or p == prefix):
            found[int(d)] = p
    return found


def _kill_and_wait(pids: Iterable[int], timeout: float = 5.0) -> list[int]:
    """SIGKILL ``pids``; wait until they are gone (or zombies). Returns those still alive."""
    pids = [p for p in dict.fromkeys(pids) if p and p != os.getpid()]
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if _alive(p)]
    return left


def _listening(init_pid: int | None, port: int = SSH_PORT) -> bool:
    """Whether some socket listens on TCP ``port`` in the network namespace of ``init_pid``."""
    if not init_pid:
        return False
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{init_pid}/net/{table}") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            pass
    return False


def _tcp_accepts(address: str, port: int = SSH_PORT, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _write(path: str, text: str, mode: int = 0o644) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


_lock_depth = 0
_lock_fd: int | None = None


@contextlib.contextmanager
def _global_lock() -> Iterator[None]:
    """Serialise create/teardown between processes (reentrant within one process)."""
    global _lock_depth, _lock_fd
    if _lock_depth == 0:
        path = LOCK_FILE if os.path.isdir(os.path.dirname(LOCK_FILE)) else "/var/tmp/dynamo-launch-testbed.lock"
        _lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(_lock_fd, fcntl.LOCK_EX)
    _lock_depth += 1
    try:
        yield
    finally:
        _lock_depth -= 1
        if _lock_depth == 0 and _lock_fd is not None:
            os.close(_lock_fd)  # releases the flock
            _lock_fd = None


def _networks_in_use(ignore_dev: str | None = None) -> list[ipaddress.IPv4Network]:
    nets = []
    for args in (("-j", "-4", "addr", "show"), ("-j", "-4", "route", "show", "table", "all")):
        r = _ip(*args, check=False)
        try:
            entries = json.loads(r.stdout or "[]")
        except ValueError:
            continue
        for e in entries:
            if "addr_info" in e:
                if e.get("ifname") == ignore_dev:
                    continue
                for a in e["addr_info"]:
                    if a.get("family") == "inet":
                        nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
            else:
                dst = e.get("dst", "default")
                if dst == "default" or e.get("dev") == ignore_dev or e.get("type") in ("local", "broadcast"):
                    continue
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(dst, strict=False))
    return nets


def _pick_subnet() -> str:
    used = _networks_in_use()
    pool = ipaddress.ip_network(AUTO_SUBNET_POOL)
    candidates = list(pool.subnets(new_prefix=24))[1:]  # keep 10.77.0.0/24 for the CLI default
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(u) for u in used):
            return str(net)
    raise TestBedError(f"no free /24 left in {AUTO_SUBNET_POOL}")


# --------------------------------------------------------------------------------------------
# the bed
# --------------------------------------------------------------------------------------------
def _shared_paths() -> list[str]:
    """What every host must see as on the machine: this project and the Python running it."""
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = {os.path.realpath(project), os.path.realpath(sys.prefix),
             os.path.dirname(os.path.realpath(sys.executable))}
    return sorted(paths)


@dataclass
class Host:
    """One fake host.  ``name`` is ``h1``, ``h2``, ...; ``init_pid`` is in the root PID namespace."""

    name: str
    index: int
    address: str
    netns: str
    veth: str
    dir: str
    init_pid: int | None = None
    launcher_pid: int | None = None  # the `unshare` process outside the host that waits for init

    @property
    def sshd_config(self) -> str:
        return os.path.join(self.dir, "sshd_config")


@dataclass
class TestBed:
    """A running bed.  Build with :meth:`create`, find an existing one with :meth:`load`."""

    __test__ = False  # not a pytest test class

    prefix: str
    subnet: str
    dir: str
    bridge: str
    gateway: str
    hosts: list[Host] = field(default_factory=list)
    _launchers: dict = field(default_factory=dict, repr=False)  # name -> Popen (beds made here)

    # ---- paths ---------------------------------------------------------------------------
    @property
    def key_file(self) -> str:
        return os.path.join(self.dir, "id_ed25519")

    @property
    def known_hosts(self) -> str:
        return os.path.join(self.dir, "known_hosts")

    @property
    def state_file(self) -> str:
        return os.path.join(self.dir, "state.json")

    # ---- creation --------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        n: int,
        prefix: str = DEFAULT_PREFIX,
        subnet: str | None = DEFAULT_SUBNET,
        dir: str | None = None,
        timeout: float = 10.0,
        log=None,
    ) -> "TestBed":
        """Create a bed of ``n`` hosts (tearing down any bed with the same prefix first).

        ``subnet="auto"`` (or None) picks a free 10.77.X.0/24.  Waits up to ``timeout`` seconds
        until every sshd accepts TCP connections.  On failure everything is torn down again.
        """
        say = log or (lambda msg: None)
        if not PREFIX_RE.match(prefix):
            raise TestBedError(f"prefix {prefix!r}: 1-10 characters, a lowercase letter then [a-z0-9]")
        if n < 1:
            raise TestBedError("need at least one host")
        if len(f"{prefix}-v{n}") > IFNAMSIZ:
            raise TestBedError(f"prefix {prefix!r} too long for {n} hosts: interface names exceed {IFNAMSIZ} chars")
        missing = missing_prerequisites(probe=False)
        if missing:
            raise TestBedError("cannot create a test bed: " + "; ".join(missing))
        dir = os.path.abspath(dir or default_dir(prefix))
        for private in ("/tmp", "/run", "/dev/shm"):
            if dir == private or dir.startswith(private + "/"):
                raise TestBedError(f"--dir {dir}: must not be under {private} (hosts have a private {private})")
        if any(c.isspace() for c in dir):
            raise TestBedError(f"--dir {dir!r}: no whitespace please")
        if os.path.isdir(dir) and os.listdir(dir) and not os.path.exists(os.path.join(dir, DIR_MARKER_FILE)):
            raise TestBedError(f"{dir} exists and is not a test bed directory; refusing to use it")

        with _global_lock():
            cls.teardown_all(prefix, dir=dir)
            if subnet in (None, "auto"):
                subnet = _pick_subnet()
            net = ipaddress.ip_network(subnet, strict=False)
            if net.version != 4 or net.num_addresses - 2 < n + 1:
                raise TestBedError(f"subnet {subnet}: need an IPv4 subnet with room for a gateway and {n} hosts")
            clash = [str(u) for u in _networks_in_use() if net.overlaps(u)]
            if clash:
                raise TestBedError(f"subnet {net} overlaps networks in use here: {', '.join(sorted(set(clash)))}")
            addrs = list(net.hosts())
            bed = cls(prefix=prefix, subnet=str(net), dir=dir, bridge=f"{prefix}-br", gateway=str(addrs[0]))
            try:
                bed._build(n, addrs, net.prefixlen, timeout, say)
            except BaseException:
                bed.teardown()
                raise
            return bed

    def _build(self, n: int, addrs: list, plen: int, timeout: float, say) -> None:
        os.makedirs(os.path.join(self.dir, "hosts"), mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        _write(os.path.join(self.dir, DIR_MARKER_FILE), f"{MARKER} prefix={self.prefix}\n")
        _write(os.path.join(self.dir, "dltb-init.py"), INIT_SOURCE)
        self.hosts = [
            Host(name=f"h{i}", index=i, address=str(addrs[i]), netns=f"{self.prefix}-h{i}",
                 veth=f"{self.prefix}-v{i}", dir=os.path.join(self.dir, "hosts", f"h{i}"))
            for i in range(1, n + 1)
        ]
        self._save()
        keygen = _which("ssh-keygen")
        sshd = _which("sshd")
        _run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"{MARKER}-{self.prefix}", "-f", self.key_file])
        with open(self.key_file + ".pub") as f:
            _write(os.path.join(self.dir, "authorized_keys"), f.read(), 0o600)

        alias = f"{MARKER} prefix={self.prefix} dir={self.dir}"
        say(f"bridge {self.bridge} {self.gateway}/{plen}")
        _ip("link", "add", "name", self.bridge, "type", "bridge")
        _ip("link", "set", "dev", self.bridge, "alias", alias)
        # A fixed address: otherwise the bridge takes the lowest port MAC, which changes as ports come and go.
        mac = "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))
        _ip("link", "set", "dev", self.bridge, "address", mac)
        # Packets from the bed are never routed onwards out of this machine.
        with contextlib.suppress(OSError):
            with open(f"/proc/sys/net/ipv4/conf/{self.bridge}/forwarding", "w") as f:
                f.write("0")
        _ip("addr", "add", f"{self.gateway}/{plen}", "dev", self.bridge)
        _ip("link", "set", "dev", self.bridge, "up")

        known = []
        for h in self.hosts:
            say(f"host {h.name} {h.address} (netns {h.netns})")
            os.makedirs(h.dir, mode=0o700, exist_ok=True)
            _ip("netns", "add", h.netns)
            peer = f"{self.prefix}-p{h.index}"
            _ip("link", "add", h.veth, "type", "veth", "peer", "name", peer, "netns", h.netns)
            _ip("link", "set", "dev", h.veth, "alias", f"{MARKER} prefix={self.prefix} host={h.name}")
            _ip("link", "set", "dev", h.veth, "master", self.bridge)
            _ip("link", "set", "dev", h.veth, "up")
            _ip("-n", h.netns, "link", "set", "dev", peer, "name", "eth0")
            _ip("-n", h.netns, "link", "set", "dev", "eth0", "alias", f"{MARKER} prefix={self.prefix} host={h.name}")
            _ip("-n", h.netns, "addr", "add", f"{h.address}/{plen}", "dev", "eth0")
            _ip("-n", h.netns, "link", "set", "dev", "eth0", "up")
            _ip("-n", h.netns, "link", "set", "dev", "lo", "up")
            _ip("-n", h.netns, "route", "add", "default", "via", self.gateway, "dev", "eth0")

            hostkey = os.path.join(h.dir, "ssh_host_ed25519_key")
            _run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"{self.prefix}-{h.name}", "-f", hostkey])
            with open(hostkey + ".pub") as f:
                ktype, kdata = f.read().split()[:2]
            known.append(f"{h.address} {ktype} {kdata}\n")
            _write(h.sshd_config, self._sshd_config(h, hostkey))
            self._launch(h, sshd)
            self._save()
        _write(self.known_hosts, "".join(known))
        self._wait_ready(timeout, say)
        self._save()

    def _sshd_config(self, h: Host, hostkey: str) -> str:
        return "\n".join([
            f"# {MARKER} prefix={self.prefix} host={h.name}",
            f"ListenAddress {h.address}",
            f"Port {SSH_PORT}",
            f"HostKey {hostkey}",
            "PidFile /run/sshd.pid",  # the host's private /run
            f"AuthorizedKeysFile {os.path.join(self.dir, 'authorized_keys')}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            # UsePAM no, unless root's password is locked with "!": then OpenSSH refuses root
            # without PAM ("account is locked"), so let PAM decide.
            f"UsePAM {'yes' if _root_password_locked() else 'no'}",
            "StrictModes no",  # the key files live under /var/tmp (world-writable, sticky)
            "MaxSessions 64",
            "MaxStartups 100",
            "UseDNS no",
            "PrintMotd no",
            "X11Forwarding no",
            "AllowTcpForwarding yes",
            "Subsystem sftp internal-sftp",
            "LogLevel INFO",
            "",
        ])

    def _launch(self, h: Host, sshd: str) -> None:
        init = [sys.executable, os.path.join(self.dir, "dltb-init.py"), INIT_MARKER,
                f"prefix={self.prefix}", f"host={h.name}", h.dir, sshd, h.sshd_config, *_shared_paths()]
        argv = [_which("ip"), "netns", "exec", h.netns,
                _which("unshare"), "--pid", "--fork", "--kill-child", "--mount-proc",
                # slave, not private: what is mounted in the root namespace later still shows
                # up on every host (the rest of the filesystem stays shared), while the host's
                # own mounts (/tmp, /run, /dev/shm) never propagate back.
                "--mount", "--propagation", "slave", *init]
        with open(os.path.join(h.dir, "init.log"), "ab") as logf:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True, cwd="/")
        self._launchers[h.name] = p
        h.launcher_pid = p.pid
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            kids = [k for k in _children(p.pid) if INIT_MARKER in _cmdline(k)]
            if kids:
                h.init_pid = kids[0]
                return
            if p.poll() is not None:
                break
            time.sleep(0.005)
        raise TestBedError(f"{h.name}: init did not start\n{self._logs(h)}")

    def _logs(self, h: Host) -> str:
        out = []
        for name in ("init.log", "sshd.log"):
            with contextlib.suppress(OSError):
                with open(os.path.join(h.dir, name), errors="replace") as f:
                    text = f.read()[-3000:].strip()
                if text:
                    out.append(f"--- {h.name} {name}:\n{text}")
        return "\n".join(out)

    def _wait_ready(self, timeout: float, say) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.hosts)
        while pending:
            for h in list(pending):
                if not _alive(h.init_pid):
                    raise TestBedError(f"{h.name}: init exited\n{self._logs(h)}")
                if _listening(h.init_pid) and _tcp_accepts(h.address, timeout=0.5):
                    pending.remove(h)
            if pending:
                if time.monotonic() > deadline:
                    names = ", ".join(h.name for h in pending)
                    logs = "\n".join(self._logs(h) for h in pending)
                    raise TestBedError(f"sshd not accepting connections after {timeout:g}s on {names}\n{logs}")
                time.sleep(0.02)
        say(f"{len(self.hosts)} host{'s' if len(self.hosts) != 1 else ''} up")

    # ---- state -----------------------------------------------------------------------------
    def _save(self) -> None:
        state = {
            "marker": MARKER,
            "prefix": self.prefix,
            "subnet": self.subnet,
            "dir": self.dir,
            "bridge": self.bridge,
            "gateway": self.gateway,
            "key_file": self.key_file,
            "known_hosts": self.known_hosts,
            "hosts": [asdict(h) for h in self.hosts],
        }
        _write(self.state_file, json.dumps(state, indent=2) + "\n", 0o600)

    @classmethod
    def load(cls, prefix: str = DEFAULT_PREFIX, dir: str | None = None) -> "TestBed":
        """The bed described by ``<dir>/state.json`` (raises TestBedError when there is none)."""
        dir = os.path.abspath(dir or default_dir(prefix))
        try:
            with open(os.path.join(dir, "state.json")) as f:
                s = json.load(f)
        except FileNotFoundError:
            raise TestBedError(f"no test bed with prefix {prefix!r} (no {dir}/state.json); run `testbed up`") from None
        except (OSError, ValueError) as e:
            raise TestBedError(f"{dir}/state.json: {e}") from None
        bed = cls(prefix=s["prefix"], subnet=s["subnet"], dir=s["dir"], bridge=s["bridge"], gateway=s["gateway"])
        bed.hosts = [Host(**h) for h in s["hosts"]]
        return bed

    # ---- use ---------------------------------------------------------------------------------
    def host(self, h: "Host | str | int") -> Host:
        """A host by object, name (``h1``), netns name, address or 1-based index."""
        if isinstance(h, Host):
            return h
        for x in self.hosts:
            if h in (x.name, x.netns, x.address, x.index, str(x.index)):
                return x
        raise TestBedError(f"no host {h!r} in bed {self.prefix!r} (hosts: {', '.join(x.name for x in self.hosts)})")

    def inventory(self) -> dict[str, Any]:
        """``{"hosts": [{"name", "address"}...], "ssh": {"user", "key_file", "known_hosts"}}``."""
        return {
            "hosts": [{"name": h.name, "address": h.address} for h in self.hosts],
            "ssh": {"user": "root", "key_file": self.key_file, "known_hosts": self.known_hosts},
        }

    def inventory_toml(self, gpus: int = 0) -> str:
        """A TOML inventory fragment: ``[ssh]`` then one ``[[hosts]]`` per host."""
        inv = self.inventory()
        q = json.dumps  # a JSON string is a valid TOML basic string for these values
        n = len(self.hosts)
        lines = [f"# test bed {self.prefix!r}: {n} host{'s' if n != 1 else ''} on {self.subnet} (scripts/testbed)",
                 "[ssh]"]
        lines += [f"{k} = {q(v)}" for k, v in inv["ssh"].items()]
        for h in inv["hosts"]:
            lines += ["", "[[hosts]]", f"name = {q(h['name'])}", f"address = {q(h['address'])}", f"gpus = {gpus}"]
        return "\n".join(lines) + "\n"

    def nsenter_argv(self, host: "Host | str | int", argv: Sequence[str], cwd: str = "/") -> list[str]:
        """argv that runs ``argv`` inside the host's network, PID and mount namespaces."""
        h = self.host(host)
        if not _alive(h.init_pid):
            raise TestBedError(f"{h.name}: host is not running (init pid {h.init_pid})")
        return [_which("nsenter") or "nsenter", "-t", str(h.init_pid), "-n", "-p", "-m", f"--wd={cwd}", "--", *argv]

    def exec(self, host: "Host | str | int", argv: Sequence[str], cwd: str = "/",
             **kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run`` of ``argv`` inside the host (cwd defaults to ``/``: /tmp differs)."""
        return subprocess.run(self.nsenter_argv(host, argv, cwd), **kwargs)

    def ssh_argv(self, host: "Host | str | int", argv: "Sequence[str] | str | None" = None,
                 connect_timeout: float = 5, user: str = "root", options: Sequence[str] = ()) -> list[str]:
        """OpenSSH client argv to ``host`` with the bed key and strict host key checking.

        ``argv`` as a list is quoted for the remote shell; as a string it is the remote command.
        """
        h = self.host(host)
        ssh = [
            _which("ssh") or "ssh", "-F", "/dev/null", "-i", self.key_file,
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"ConnectTimeout={connect_timeout:g}", "-o", "LogLevel=ERROR",
            *options, "-p", str(SSH_PORT), f"{user}@{h.address}",
        ]
        if argv is None:
            return ssh
        return ssh + ["--", argv if isinstance(argv, str) else shlex.join(argv)]

    def ssh(self, host: "Host | str | int", argv: "Sequence[str] | str", connect_timeout: float = 5,
            **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(self.ssh_argv(host, argv, connect_timeout), **kwargs)

    # ---- fault injection -----------------------------------------------------------------
    def link(self, host: "Host | str | int", up: bool) -> None:
        """Partition (``up=False``) or reconnect a host by setting its root-side veth down/up."""
        h = self.host(host)
        _ip("link", "set", "dev", h.veth, "up" if up else "down")
        if up:  # wait until the bridge port forwards again
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError, ValueError):
                    with open(f"/sys/class/net/{h.veth}/brport/state") as f:
                        if int(f.read()) == 3:  # BR_STATE_FORWARDING
                            return
                time.sleep(0.01)

    def link_up(self, host: "Host | str | int") -> bool:
        h = self.host(host)
        try:
            with open(f"/sys/class/net/{h.veth}/flags") as f:
                return bool(int(f.read(), 16) & 1)  # IFF_UP
        except OSError:
            return False

    def sshd(self, host: "Host | str | int", running: bool, timeout: float = 10) -> None:
        """Stop (only the listener: sessions and processes stay) or start the host's sshd."""
        h = self.host(host)
        if not _alive(h.init_pid):
            raise TestBedError(f"{h.name}: host is not running")
        os.kill(h.init_pid, signal.SIGUSR2 if running else signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._sshd_state(h) == running and _listening(h.init_pid) == running:
                return
            time.sleep(0.01)
        what = "start" if running else "stop"
        raise TestBedError(f"{h.name}: sshd did not {what} within {timeout:g}s\n{self._logs(h)}")

    def _sshd_state(self, h: Host) -> bool:
        try:
            with open(os.path.join(h.dir, "sshd.state")) as f:
                return bool(json.load(f).get("running"))
        except (OSError, ValueError):
            return False

    def sshd_running(self, host: "Host | str | int") -> bool:
        h = self.host(host)
        return _alive(h.init_pid) and self._sshd_state(h) and _listening(h.init_pid)

    def status(self) -> list[dict[str, Any]]:
        netns = set(_netns_list())
        return [
            {
                "name": h.name,
                "address": h.address,
                "netns": h.netns,
                "netns_exists": h.netns in netns,
                "init_pid": h.init_pid,
                "running": _alive(h.init_pid),
                "link_up": self.link_up(h),
                "sshd_running": self.sshd_running(h),
            }
            for h in self.hosts
        ]

    # ---- teardown --------------------------------------------------------------------------
    def teardown(self) -> None:
        """Remove everything of this bed; safe to call again, and after a failed create."""
        with _global_lock():
            _teardown(self.prefix, self.dir, self.hosts, self._launchers)

    @staticmethod
    def teardown_all(prefix: str | None = None, dir: str | None = None) -> list[str]:
        """Tear down the bed ``prefix`` (``None``: every bed found) without needing state.json.

        Finds objects by name, interface alias, init argv marker and bed directory. Returns the
        prefixes of which something was found (and removed).
        """
        with _global_lock():
            if prefix is None:
                beds = [(p, d) for p, d in find_beds().items()]
            else:
                dirs = dict.fromkeys(os.path.abspath(x) for x in (dir, _dir_of(prefix)) if x)
                beds = [(prefix, d) for d in dirs]
            done = set()
            for p, d in beds:
                hosts = []
                with contextlib.suppress(TestBedError, KeyError, TypeError):
                    hosts = TestBed.load(p, d).hosts
                if _teardown(p, d, hosts, {}):
                    done.add(p)
            return sorted(done)

    def __enter__(self) -> "TestBed":
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()


def _root_password_locked() -> bool:
    try:
        with open("/etc/shadow") as f:
            for line in f:
                if line.startswith("root:"):
                    return line.split(":")[1].startswith("!")
    except OSError:
        pass
    return False


def _dir_of(prefix: str) -> str:
    """The bed directory of ``prefix``: from the bridge alias if there is one, else the default."""
    for link in _links():
        m = re.match(rf"^{re.escape(MARKER)} prefix={re.escape(prefix)} dir=(\S+)$", link.get("ifalias", ""))
        if m:
            return m.group(1)
    return default_dir(prefix)


def find_beds() -> dict[str, str]:
    """Every bed (even half-built or without state) on this machine: ``{prefix: dir}``."""
    found: dict[str, str | None] = {}
    netns_re = re.compile(r"^([a-z][a-z0-9]{0,9})-h\d+$")
    for ns in _netns_list():
        m = netns_re.match(ns)
        if not m:
            continue
        if FAMILY_RE.match(m.group(1)):
            found.setdefault(m.group(1), None)
            continue
        for link in _links(ns):  # another prefix: ours only if the interface inside says so
            a = re.match(rf"^{re.escape(MARKER)} prefix=([a-z0-9]+)", link.get("ifalias", ""))
            if a and a.group(1) == m.group(1):
                found.setdefault(m.group(1), None)
    link_re = re.compile(r"^([a-z][a-z0-9]{0,9})-(br|v\d+)$")
    for link in _links():
        name = link.get("ifname", "")
        a = re.match(rf"^{re.escape(MARKER)} prefix=([a-z0-9]+)(?: dir=(\S+))?", link.get("ifalias", ""))
        if a:
            if a.group(2):
                found[a.group(1)] = a.group(2)
            else:
                found.setdefault(a.group(1), None)
        elif (m := link_re.match(name)) and FAMILY_RE.match(m.group(1)):
            found.setdefault(m.group(1), None)
    for p in set(_marked_processes().values()):
        found.setdefault(p, None)
    with contextlib.suppress(OSError):
        for entry in os.listdir("/var/tmp"):
            d = os.path.join("/var/tmp", entry)
            if entry.startswith("dltb-") and os.path.exists(os.path.join(d, DIR_MARKER_FILE)):
                with contextlib.suppress(OSError, ValueError):
                    with open(os.path.join(d, DIR_MARKER_FILE)) as f:
                        m = re.search(r"prefix=(\S+)", f.read())
                    if m:
                        found[m.group(1)] = d
    return {p: (d or default_dir(p)) for p, d in found.items()}


def _teardown(prefix: str, dir: str, hosts: Sequence[Host], launchers: dict) -> bool:
    """Kill, delete, remove: every step tolerates objects that are already gone.

    Returns whether anything of the bed was found.
    """
    netns_names = {h.netns for h in hosts}
    netns_names |= {ns for ns in _netns_list() if re.fullmatch(rf"{re.escape(prefix)}-h\d+", ns)}
    # 1. processes: the inits first (that kills each host's whole PID namespace), then anything
    #    else in the bed's network namespaces, and marked processes whose netns is already gone.
    inits = [h.init_pid for h in hosts if h.init_pid and prefix in _marker_prefixes(h.init_pid)]
    launchers_pids = [h.launcher_pid for h in hosts if h.launcher_pid and prefix in _marker_prefixes(h.launcher_pid)]
    others = [pid for ns in sorted(netns_names) for pid in _netns_pids(ns)]
    others += list(_marked_processes(prefix))
    found = bool(netns_names or inits or launchers_pids or others)
    _kill_and_wait(inits, timeout=5)
    left = _kill_and_wait(launchers_pids + others, timeout=5)
    for p in launchers.values():  # reap our own children
        with contextlib.suppress(Exception):
            p.kill()
        with contextlib.suppress(Exception):
            p.wait(timeout=5)
    launchers.clear()
    # 2. network namespaces, veths, bridge
    for ns in sorted(netns_names):
        _ip("netns", "del", ns, check=False)
    link_re = re.compile(rf"^{re.escape(prefix)}-(br|v\d+|p\d+)$")
    names = {h.veth for h in hosts} | {n for link in _links() if link_re.match(n := link.get("ifname", ""))}
    bridge = f"{prefix}-br"
    for name in sorted(names - {bridge}) + [bridge]:
        if os.path.exists(f"/sys/class/net/{name}"):
            found = True
            _ip("link", "del", "dev", name, check=False)
    # 3. the directory, only if it is a bed directory
    if dir and os.path.isdir(dir):
        if os.path.exists(os.path.join(dir, DIR_MARKER_FILE)) or not os.listdir(dir):
            found = True
            shutil.rmtree(dir, ignore_errors=True)
    left = [p for p in left if _alive(p)]
    if left:
        raise TestBedError(f"bed {prefix!r}: processes survived SIGKILL: {left}")
    return found


def _marker_prefixes(pid: int) -> set[str]:
    args = _cmdline(pid)
    if INIT_MARKER not in args:
        return set()
    return {a[7:] for a in args if a.startswith("prefix=")}
