"""One real `dynamo-launch up` daemon (the CLI, a child process) for an inventory on the test bed.

Shared by the test-bed integration tests and by ``benchmarks/``: it writes the inventory (every
bed host, SSH with the bed's key and strict host keys, external NATS/etcd that nothing contacts
unless the body plans its own), starts ``up`` in the root namespace and talks to it over its
control socket. Subclasses add what their tests count on the hosts.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
from pathlib import Path

from dynamo_launch import control
from tests.daemon_harness import PY, ROOT, wait_until

DL = [PY, "-m", "dynamo_launch.cli"]


class BedDaemon:
    """`dynamo-launch up` for ``body`` (the ``[[processes]]``/``[ray]``/... tables) on ``bed``."""

    counter = 0
    prefix = "bd"

    def __init__(self, bed, tmp: Path, body: str, *, hosts: list[str] | None = None,
                 gpus: dict[str, int] | None = None, known_hosts: str | None = None,
                 keepalive: tuple[float, int] = (2.0, 3), nats: str = "nats://127.0.0.1:1",
                 etcd: str = "http://127.0.0.1:1", cluster_extra: str = "", root: Path = ROOT):
        BedDaemon.counter += 1
        self.bed, self.tmp = bed, Path(tmp)
        self.name = f"{self.prefix}{os.getpid() % 10000}x{BedDaemon.counter}"
        self.state_dir = f"/tmp/dl-{self.name}"  # private per host; the daemon's own in the root namespace
        inv = bed.inventory()
        chosen = [h for h in inv["hosts"] if hosts is None or h["name"] in hosts]
        self.hosts = [h["name"] for h in chosen]
        host_tables = "".join(f'\n[[hosts]]\nname = "{h["name"]}"\naddress = "{h["address"]}"\n'
                              + (f'gpus = {gpus.get(h["name"], 0)}\n' if gpus is not None else "") for h in chosen)
        self.path = self.tmp / f"{self.name}.toml"
        self.path.write_text(f"""
[cluster]
name = "{self.name}"
head = "{self.hosts[0]}"
state_dir = "{self.state_dir}"
python = "{PY}"
metrics = ""
{cluster_extra}
[ssh]
user = "root"
key_file = "{inv['ssh']['key_file']}"
known_hosts = "{known_hosts or inv['ssh']['known_hosts']}"
connect_timeout = 5.0
keepalive_interval = {keepalive[0]}
keepalive_count_max = {keepalive[1]}
{host_tables}
[nats]
external = "{nats}"

[etcd]
external = "{etcd}"
{body}
""")
        # ``root``: the checkout whose launcher runs (a benchmark's baseline is another tree); it is
        # both the working directory and PYTHONPATH, since `python -m` puts the former first
        self.root = Path(root)
        self.env = {**os.environ, "DYNAMO_LAUNCH_RUNTIME_DIR": str(self.tmp / "run"), "PYTHONPATH": str(self.root)}
        self.sock = str(self.tmp / "run" / f"{self.name}.sock")
        self.proc: subprocess.Popen | None = None
        self.launch_id = ""
        self.launch_ids: set[str] = set()
        self.stderr_path = self.tmp / f"{self.name}.up.log"

    # --- the daemon ------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> dict:
        """Start `up` and wait until its control socket answers; the first status."""
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen([*DL, "up", str(self.path), "--log-format", "json"], env=self.env,
                                         stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, cwd=self.root)
        assert wait_until(lambda: self.answers() or self.proc.poll() is not None, timeout, 0.05), self.log()
        assert self.proc.poll() is None, self.log()
        snap = self.status()
        self.launch_id = snap["launch_id"]
        self.launch_ids.add(self.launch_id)
        return snap

    def up(self, wait_ready: bool = True, timeout: float = 60.0) -> dict:
        """:meth:`start`, then (``wait_ready``) wait until every process is READY or RUNNING."""
        snap = self.start(timeout=timeout)
        if wait_ready:
            return self.wait(lambda s: all(p["state"] in ("READY", "RUNNING") for p in s["processes"]), timeout)
        return snap

    def answers(self) -> bool:
        """Whether the control socket answers a status request."""
        try:
            self.status()
            return True
        except control.ControlError:
            return False

    def status(self) -> dict:
        return control.request(self.sock, "status", timeout=5)

    def request(self, op: str, **args) -> dict:
        return control.request(self.sock, op, timeout=30, **args)

    def events(self, since: int = 0) -> list[dict]:
        return control.request(self.sock, "events", timeout=10, since=since)["events"]

    def wait(self, condition, timeout: float = 60.0, interval: float = 0.1) -> dict:
        """The first status for which ``condition(status)`` holds; fails after ``timeout``."""
        snap: dict = {}

        def check() -> bool:
            nonlocal snap
            try:
                snap = self.status()
            except control.ControlError:
                return False
            return condition(snap)

        assert wait_until(check, timeout, interval), \
            f"timed out; last status:\n{json.dumps(snap, indent=1)}\n{self.log()}"
        return snap

    def wait_event(self, match, since: int, timeout: float) -> dict:
        """The first event after ``since`` that ``match``es; fails after ``timeout``."""
        found: list[dict] = []

        def check() -> bool:
            found[:] = [e for e in self.events(since) if match(e)]
            return bool(found)

        assert wait_until(check, timeout, 0.1), f"no such event; events:\n{json.dumps(self.events(since), indent=1)}"
        return found[0]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([*DL, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                                  cwd=self.root, check=False)
        except subprocess.TimeoutExpired:  # what the daemon was doing is the only clue there will be
            raise AssertionError(f"dynamo-launch {' '.join(args)} ran past {timeout:g} s; the daemon's log:\n"
                                 f"{self.log()}") from None

    def kill_daemon(self) -> None:
        """SIGKILL the daemon (its socket stays behind, as after a real kill -9)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        os.unlink(self.sock)

    def stop_daemon(self) -> None:
        """SIGKILL the daemon if it still runs (cleanup; the hosts' processes are the caller's)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        try:
            return self.stderr_path.read_text()[-4000:]
        except OSError:
            return ""


# Counts the processes of a launch inside a host (run there with nsenter; the tree is shared).
_SCAN = ("import json, sys; sys.path.insert(0, sys.argv[2]); from tests.daemon_harness import scan_launch; "
         "print(json.dumps(scan_launch(sys.argv[1])))")


class Cluster(BedDaemon):
    """One `dynamo-launch up` daemon for stand-in processes on the bed (keepalive 1 s × 2)."""

    prefix = "tb"

    def __init__(self, bed, tmp: Path, processes: str, *, known_hosts: str | None = None,
                 keepalive: tuple[float, int] = (1.0, 2)):
        super().__init__(bed, tmp, processes, known_hosts=known_hosts, keepalive=keepalive)

    # --- the hosts -------------------------------------------------------------------------------
    def scan(self, host: str, launch_id: str | None = None) -> list[dict]:
        lid = launch_id or next(iter(self.launch_ids))
        r = self.bed.exec(host, [PY, "-c", _SCAN, lid, str(ROOT)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def scan_all(self) -> dict[str, list[dict]]:
        return {h.name: self.scan(h.name) for h in self.bed.hosts}

    def kill_on_host(self, host: str, pid: int, sig: int = signal.SIGKILL) -> None:
        self.bed.exec(host, ["kill", f"-{sig}", str(pid)], check=True, timeout=10)

    def cleanup(self) -> None:
        self.stop_daemon()
        for lid in self.launch_ids:
            for h in self.bed.hosts:
                for p in self.scan(h.name, lid):
                    self.bed.exec(h.name, ["kill", "-9", str(p["pid"])], timeout=10)


def ports(n: int) -> list[int]:
    base = 20000 + random.randrange(0, 20000)
    return [base + i for i in range(n)]


def by_name(snap: dict) -> dict[str, dict]:
    return {p["name"]: p for p in snap["processes"]}


FAST = """
[{table}.restart]
backoff_initial = 0.5
backoff_max = 2.0
stop_timeout = 5.0

[{table}.health]
interval = 0.5
timeout = 1.0
failure_threshold = 3
startup_timeout = 60.0
"""


class InfraCluster(Cluster):
    """A Cluster whose inventory has the launcher RUN nats and etcd on h1 (``infra`` is the
    ``[nats]``/``[etcd]`` text that replaces the external endpoints of the base inventory)."""

    def __init__(self, bed, tmp, processes: str, infra: str):
        super().__init__(bed, tmp, processes)
        text = self.path.read_text()
        external = re.search(r"\[nats\]\nexternal = .*?\n\n\[etcd\]\nexternal = .*?\n", text)
        assert external, text
        self.path.write_text(text.replace(external.group(0), infra))


def run_infra(nats_ports: tuple[int, int], etcd_ports: tuple[int, int], *, nats_tls: bool = False) -> str:
    """``[nats]`` and ``[etcd]`` tables for the launcher to run them (``nats_tls``: NATS over TLS)."""
    on = "tls = true\n" if nats_tls else ""
    return (f"[nats]\nport = {nats_ports[0]}\nmonitor_port = {nats_ports[1]}\n{on}" + FAST.format(table="nats")
            + f"\n[etcd]\nclient_port = {etcd_ports[0]}\npeer_port = {etcd_ports[1]}\n" + FAST.format(table="etcd"))
