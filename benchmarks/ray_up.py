"""Scenario 3: `ray up` (Ray's on-prem ``local`` provider) against dynamo-launch, same bare Ray cluster.

    sudo .venv/bin/python -m benchmarks.ray_up [--hosts 4] [--repeats 3] [--quick]

Needs root (the test bed), Ray next to this python (``pip install "ray>=2.60,<3"``) and
``rsync``, which `ray up` uses to copy its files to the head: ``apt-get install -y rsync``
(the benchmark stops with a one-line message when it is missing).

What is timed. Both tools bring up the same bare Ray cluster on the same ``ray_hosts`` (4)
test-bed hosts: head on h1, workers on h2..h4. One observer for all, ``benchmarks/ray_poll.py``,
runs inside h1 (the head host) with Ray's own GCS client: it waits for the GCS port, then
reads the GCS node table (what ``ray status`` / ``ray.nodes()`` read) every 100 ms. The clock
starts (t0) just before the tool is launched, after the observer has imported Ray; the time is
the first moment all N addresses are ALIVE at once (``all_alive``, the headline and ``speedup``
= median ray up / median dynamo-launch). Per run also (seconds after t0 unless said):

- ``head_alive``: the head's node first ALIVE;
- ``last_ray_start``: when the tool had launched the last node's `ray start` (dynamo-launch:
  its last ``started`` event; `ray up`: the last "[7/7] Starting the Ray runtime" of the
  autoscaler's node updaters in the head's ``monitor.out``) — the tool's own orchestration;
- ``last_raylet_started``: the latest raylet process start over the hosts (``/proc``);
- ``host_cpu``: CPU seconds spent inside the 4 hosts' PID namespaces from t0 to all-alive
  (every process, probes and SSH sessions included); ``tool_cpu``: CPU seconds of the tool
  itself in the root namespace (the `ray up` CLI with the ssh/rsync it waited for; the daemon);
- ``ray_up_cli_returned``: when `ray up` itself returned (after the head; its workers are
  started later by the autoscaler on the head).

Three series, run in turn (ray up, dynamo-launch, dynamo-launch cheap probe, ray up, ...) so
drift hits all:
Fairness and environment notes:

- Both sides get ``RAY_agent_register_timeout_ms=60000`` in every `ray start`'s environment:
  on this loaded 2-core machine a worker raylet can wait more than Ray's default for its
  dashboard agent and then aborts ("Timed out waiting for file .../dashboard_agent_listen_port");
  dynamo-launch restarts such a node, `ray up`'s autoscaler leaves it "uninitialized" for good.
  Both also get ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0`` (only matters for stopping).
- `ray up` runs every command through ``ssh ... bash --login -c -i 'source ~/.bashrc; ...'``.
  The bed hosts share the machine's filesystem, root's home included, so ``~/ray_bootstrap_*``
  would land in the real ``/root`` and every command would run the machine's ``.bashrc``
  (pyenv init, ~0.4 s each here). For the `ray up` runs each host gets a private, empty home: a
  directory bind-mounted over ``/root`` inside that host's mount namespace (removed after the run).
- Ray's SSH runner uses ``StrictHostKeyChecking=no`` and ``UserKnownHostsFile=/dev/null`` itself
  (head and the autoscaler's connections to the workers alike); the launcher checks host keys
  against the bed's ``known_hosts``. Accepted: it is Ray's fixed behaviour, and it costs no time.
- Between runs every Ray process on every host is killed by pid (a scan of ``/proc`` inside
  each host; `ray down` would run a bare ``ray stop`` that is not on the login PATH), the
  autoscaler's SSH control masters with it, and ``/tmp/ray`` of every host is wiped, so no
  session or cluster state carries over from one tool to the other. dynamo-launch is stopped
  with its own ``down`` first (a leftover Ray process after it is reported in ``notes``).
- The machine is shared with other jobs: absolute times are noisy; compare the ratio of one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from getpass import getuser
from pathlib import Path

from benchmarks.common import PY, ROOT, BedDaemon, Options, port_base, ratio, summary
from benchmarks.hosts import private_homes
from tests.integration.test_ray_testbed import pinned_ports

RAY = str(Path(PY).parent / "ray")  # the venv's `ray`: what the launcher runs too
POLLER = str(ROOT / "benchmarks" / "ray_poll.py")
NUM_CPUS = 1
OBJECT_STORE = 80_000_000
RUN_TIMEOUT = 180.0  # seconds for one bring-up to reach all nodes alive
RAY_ENV = {"RAY_agent_register_timeout_ms": "60000", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}

# Run inside one host. Finds every Ray process there (the `ray start` CLIs, gcs_server, raylet, the
# Python helpers, every `ray::` worker/agent) and the autoscaler's SSH control masters.
#   scan: prints their number;
#   cpu:  prints {"cpu": CPU seconds ever spent in this host's PID namespace (utime+stime+cutime+
#         cstime of every live process: orphans reaped by the bed's init are in its cutime, probe
#         processes reaped by the launcher's agent in the agent's), "raylet": wall time the raylet
#         started, or null};
#   kill: SIGKILLs them, waits until they are gone, wipes /tmp/ray and the SSH control dirs and
#         prints what was killed (JSON).
_HOST_SCRIPT = r"""
import glob, json, os, shutil, signal, sys, time
me = os.getpid()
def procs():
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        yield int(entry), argv, stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
def ray_pids():
    out = {}
    for pid, argv, comm, fields in procs():
        line = " ".join(argv)
        if fields[0] != "Z" and (comm in ("raylet", "gcs_server") or (argv and argv[0].startswith("ray::"))
                or "/site-packages/ray/" in line or any(a.endswith("/bin/ray") for a in argv[:2])
                or (argv[1:2] == ["-m"] and argv[2:3] and argv[2].startswith("ray."))
                or (comm == "ssh" and "/tmp/ray_ssh_" in line)):
            out[pid] = comm if not argv else argv[0][:40]
    return out
if sys.argv[1] == "cpu":
    tick = os.sysconf("SC_CLK_TCK")
    btime = next(int(x.split()[1]) for x in open("/proc/stat") if x.startswith("btime"))
    cpu, raylet = 0, None
    for pid, argv, comm, fields in procs():
        cpu += sum(int(x) for x in fields[11:15])
        if comm == "raylet":
            raylet = btime + int(fields[19]) / tick
    print(json.dumps({"cpu": cpu / tick, "raylet": raylet}))
    sys.exit(0)
found = ray_pids()
if sys.argv[1] == "scan":
    print(len(found))
    sys.exit(0)
for pid in found:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
deadline = time.monotonic() + 15
while set(ray_pids()) & set(found) and time.monotonic() < deadline:
    time.sleep(0.1)
left = sorted(set(ray_pids()) & set(found))
for d in ["/tmp/ray"] + glob.glob("/tmp/ray_ssh_*"):
    shutil.rmtree(d, ignore_errors=True)
print(json.dumps({"killed": sorted(set(found.values())), "n": len(found), "left": left}))
"""


class Missing(RuntimeError):
    """A prerequisite of this scenario is missing (one line, says what to install)."""


def require_tools() -> None:
    """`ray up` needs rsync and Ray next to this python; fail with one line otherwise."""
    if shutil.which("rsync") is None:
        raise Missing("ray_up: rsync is not installed (`ray up` copies files with it): apt-get install -y rsync")
    if not os.access(RAY, os.X_OK):
        raise Missing(f"ray_up: {RAY} is missing: pip install 'ray>=2.60,<3'")


# --- the two configurations --------------------------------------------------------------------
def ray_start_flags(base: int) -> list[str]:
    """What both tools give every `ray start`: sizes, usage stats off, every port pinned."""
    return ["--disable-usage-stats", f"--num-cpus={NUM_CPUS}", f"--object-store-memory={OBJECT_STORE}",
            *pinned_ports(base)]


def cluster_yaml(name: str, head: str, workers: list[str], base: int, key_file: str) -> str:
    """The `ray up` config (``local`` provider, no setup commands, the launcher's `ray start`)."""
    env = " ".join(f"{k}={v}" for k, v in RAY_ENV.items())
    flags = " ".join(ray_start_flags(base))
    head_cmd = (f"env {env} {RAY} start --head --port={base} --node-ip-address={head} {flags} "
                "--autoscaling-config=~/ray_bootstrap_config.yaml")
    worker_cmd = f"env {env} {RAY} start --address=$RAY_HEAD_IP:{base} {flags}"
    return "\n".join([
        f"cluster_name: {name}",
        "provider:",
        "  type: local",
        f"  head_ip: {head}",
        f"  worker_ips: {json.dumps(workers)}",
        "auth:",
        "  ssh_user: root",
        f"  ssh_private_key: {key_file}",
        f"min_workers: {len(workers)}",
        f"max_workers: {len(workers)}",
        "file_mounts: {}",
        "initialization_commands: []",
        "setup_commands: []",
        "head_setup_commands: []",
        "worker_setup_commands: []",
        "head_start_ray_commands:",
        f"  - {head_cmd}",
        "worker_start_ray_commands:",
        f"  - {worker_cmd}",
        "",
    ])


def ray_table(head: str, workers: list[str], base: int) -> str:
    """The dynamo-launch ``[ray]`` table of the same cluster."""
    env = ", ".join(f'{k} = "{v}"' for k, v in RAY_ENV.items())
    return f"""
[ray]
head = "{head}"
workers = {json.dumps(workers)}
port = {base}
num_cpus = {NUM_CPUS}
object_store_memory = {OBJECT_STORE}
extra_args = {json.dumps(pinned_ports(base))}
env = {{ {env} }}

[ray.health]
timeout = 20.0          # a Ray probe takes up to ~5 s on a busy 2-core machine (docs/ray.md)
startup_timeout = 120.0
"""


def ray_processes(head: str, head_address: str, workers: list[str], base: int) -> str:
    """The same `ray start --block` commands as ``[[processes]]`` with cheap readiness (no Ray probe).

    Head ready = its port accepts; a worker = alive ``start_secs``. Not how anyone should run Ray
    under the launcher (nothing checks that a worker joined): it measures what the ``[ray]``
    table's Ray readiness probes cost during bring-up.
    """
    env = ", ".join(f'{k} = "{v}"' for k, v in RAY_ENV.items())
    flags = ray_start_flags(base)
    head_cmd = [RAY, "start", "--head", f"--port={base}", f"--node-ip-address={head_address}", *flags, "--block"]
    worker_cmd = [RAY, "start", f"--address={head_address}:{base}", *flags, "--block"]
    return f"""
[[processes]]
name = "rhead"
host = "{head}"
command = {json.dumps(head_cmd)}
env = {{ {env} }}
health = {{ check = "tcp", port = {base} }}

[[processes]]
name = "rworker"
hosts = {json.dumps(workers)}
command = {json.dumps(worker_cmd)}
env = {{ {env} }}
depends_on = ["rhead"]
"""


# --- the observer ----------------------------------------------------------------------------------
class Poller:
    """``ray_poll.py`` inside the head host; its JSON events, read on a thread."""

    def __init__(self, bed, head: str, address: str, n: int, timeout: float):
        self.proc = subprocess.Popen(bed.nsenter_argv(head, [PY, POLLER, address, str(n), str(timeout)]),
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.events: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue
        self.events.put({"event": "eof", "t": time.time()})

    def wait(self, kinds: set[str], timeout: float) -> dict:
        """The next event of one of ``kinds`` (or eof/timeout), waiting at most ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return {"event": "deadline", "t": time.time()}
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(ev)
            if ev["event"] in kinds | {"eof", "timeout"}:
                return ev

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def first(self, kind: str) -> float | None:
        return next((e["t"] for e in self.seen if e["event"] == kind), None)


# --- hosts: clean state, private homes -------------------------------------------------------------
def kill_ray(bed, hosts: list[str]) -> dict[str, dict]:
    """SIGKILL every Ray process (and Ray's SSH masters) on ``hosts``, wipe their /tmp/ray."""
    out = {}
    for h in hosts:
        r = bed.exec(h, [PY, "-c", _HOST_SCRIPT, "kill"], capture_output=True, text=True, timeout=60)
        out[h] = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-300:]}
    return out


def ray_count(bed, hosts: list[str]) -> int:
    """How many Ray processes run on ``hosts`` (a scan only: counts, kills nothing)."""
    return sum(int(bed.exec(h, [PY, "-c", _HOST_SCRIPT, "scan"], capture_output=True, text=True, timeout=60).stdout
                   or 0) for h in hosts)


# When `ray up`'s node updaters ran each worker's `ray start` (the head's autoscaler log; local time,
# parsed inside the host with the same zone): the latest "[7/7] Starting the Ray runtime".
_LAST_START = r"""
import datetime, glob
t = None
for path in glob.glob("/tmp/ray/session_latest/logs/monitor.*"):
    for line in open(path, errors="replace"):
        if "Starting the Ray runtime" in line and line[:4].isdigit():
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            t = stamp if t is None else max(t, stamp)
print(t)
"""


def ray_up_last_start(bed, head: str) -> float | None:
    """Wall time `ray up`'s autoscaler ran the last worker's `ray start` (None if it did not)."""
    r = bed.exec(head, [PY, "-c", _LAST_START], capture_output=True, text=True, timeout=60)
    try:
        return float(r.stdout)
    except ValueError:
        return None


def host_cpu(bed, hosts: list[str]) -> dict[str, dict]:
    """Per host: CPU seconds spent in it so far and when its raylet started (all hosts at once)."""
    procs = {h: subprocess.Popen(bed.nsenter_argv(h, [PY, "-c", _HOST_SCRIPT, "cpu"]), stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True) for h in hosts}
    out = {}
    for h, p in procs.items():
        try:
            stdout, _ = p.communicate(timeout=60)
            out[h] = json.loads(stdout)
        except (subprocess.TimeoutExpired, ValueError):
            p.kill()
            p.wait(10)
            out[h] = {"cpu": None, "raylet": None}
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds of a live process of this namespace and its waited-for children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def cpu_facts(before: dict[str, dict], after: dict[str, dict], t0: float, tool_cpu: float | None) -> dict:
    """CPU spent on the hosts and by the tool itself over the run; when the last raylet started."""
    spent = [after[h]["cpu"] - before[h]["cpu"] for h in after
             if after[h]["cpu"] is not None and before.get(h, {}).get("cpu") is not None]
    raylets = [after[h]["raylet"] - t0 for h in after if after[h]["raylet"]]
    return {"host_cpu": sum(spent) if len(spent) == len(after) else None, "tool_cpu": tool_cpu,
            "last_raylet_started": max(raylets) if len(raylets) == len(after) else None}


def kill_control_masters(cluster: str) -> int:
    """SIGKILL `ray up`'s own SSH control masters (root namespace) for ``cluster``; remove their dir."""
    path = f"/tmp/ray_ssh_{hashlib.sha256(getuser().encode()).hexdigest()[:10]}/" \
           f"{hashlib.sha256(cluster.encode()).hexdigest()[:10]}"
    n = 0
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"ssh") and any(path.encode() in a for a in argv):
            try:
                os.kill(int(entry), 9)
                n += 1
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(path))  # only if no other cluster's masters live there
    except OSError:
        pass
    return n


# --- one bring-up of each tool ---------------------------------------------------------------------
def timed(poller: Poller, t0: float, timeout: float) -> dict:
    """Wait for all nodes alive; the run's times relative to ``t0`` (None where not reached)."""
    end = poller.wait({"all"}, timeout)
    head = poller.first("head")
    return {"all_alive": end["t"] - t0 if end["event"] == "all" else None,
            "head_alive": head - t0 if head else None, "end": end["event"]}


def run_ray_up(bed, hosts: list[str], base: int, work: Path, i: int, log) -> dict:
    """One `ray up`, timed to all nodes alive; its processes and state removed afterwards."""
    inv = bed.inventory()
    addr = {h["name"]: h["address"] for h in inv["hosts"]}
    name = f"rbench{os.getpid() % 10000}x{i}"
    cfg = work / f"{name}.yaml"
    cfg.write_text(cluster_yaml(name, addr[hosts[0]], [addr[h] for h in hosts[1:]], base, inv["ssh"]["key_file"]))
    state = work / f"{name}-state"
    state.mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(state), "RAY_UP_enable_autoscaler_v2": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    poller = proc = None
    try:
        private_homes(bed, hosts, work / name, mount=True)
        poller = Poller(bed, hosts[0], f"{addr[hosts[0]]}:{base}", len(hosts), RUN_TIMEOUT)
        if poller.wait({"ready"}, 60)["event"] != "ready":
            raise RuntimeError("ray_poll.py did not start")
        before = host_cpu(bed, hosts)
        with open(work / f"{name}.log", "wb") as out:
            t0 = time.time()
            proc = subprocess.Popen([RAY, "up", "-y", "--no-config-cache", str(cfg)], env=env, cwd=work,
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            ended: list[tuple] = []
            waiter = threading.Thread(target=lambda: ended.append((os.wait4(proc.pid, 0), time.time())), daemon=True)
            waiter.start()
            res = timed(poller, t0, RUN_TIMEOUT)
            after = host_cpu(bed, hosts)
            waiter.join(max(1.0, RUN_TIMEOUT - (time.time() - t0)))
        if ended:  # reaped here, with its rusage (the CLI and the ssh/rsync it waited for)
            (_, status, usage), t_end = ended[0]
            proc.returncode = os.waitstatus_to_exitcode(status)
            res.update(cli_returned=t_end - t0, cli_code=proc.returncode)
            res.update(cpu_facts(before, after, t0, usage.ru_utime + usage.ru_stime))
        else:
            res.update(cli_returned=None, cli_code=None, **cpu_facts(before, after, t0, None))
        last = ray_up_last_start(bed, hosts[0])
        res["last_ray_start"] = last - t0 if last else None
        if res["all_alive"] is None:
            res["log_tail"] = (work / f"{name}.log").read_text(errors="replace")[-1500:]
        return res
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if poller is not None:
            poller.stop()
        res_kill = kill_ray(bed, hosts)
        kill_control_masters(name)
        private_homes(bed, hosts, work / name, mount=False)
        log(f"  ray up #{i}: cleanup {json.dumps({h: v.get('n') for h, v in res_kill.items()})}")


def run_dynamo(bed, hosts: list[str], base: int, work: Path, i: int, log, cheap_probe: bool = False) -> dict:
    """One `dynamo-launch up` of the ``[ray]`` table (or, ``cheap_probe``, of :func:`ray_processes`),
    timed to all nodes alive; then `down`."""
    addr = {h["name"]: h["address"] for h in bed.inventory()["hosts"]}
    body = (ray_processes(hosts[0], addr[hosts[0]], hosts[1:], base) if cheap_probe
            else ray_table(hosts[0], hosts[1:], base))
    d = BedDaemon(bed, work, body, hosts=hosts)
    poller = Poller(bed, hosts[0], f"{addr[hosts[0]]}:{base}", len(hosts), RUN_TIMEOUT)
    try:
        if poller.wait({"ready"}, 60)["event"] != "ready":
            raise RuntimeError("ray_poll.py did not start")
        before = host_cpu(bed, hosts)
        t0 = time.time()
        try:
            d.start(timeout=RUN_TIMEOUT)
        except AssertionError:  # `up` exited or its control socket never answered
            return {"all_alive": None, "head_alive": None, "end": "daemon failed", "log_tail": d.log()[-1500:]}
        res = timed(poller, t0, RUN_TIMEOUT - (time.time() - t0))
        res.update(cpu_facts(before, host_cpu(bed, hosts), t0, proc_cpu(d.proc.pid)))
        starts = [e["time"] for e in d.events() if e["kind"] == "started"]
        res["last_ray_start"] = max(starts) - t0 if len(starts) >= len(hosts) else None
        if res["all_alive"] is None:
            res["log_tail"] = d.log()[-1500:]
        return res
    finally:
        poller.stop()
        t = time.time()
        if d.proc is not None:
            d.cli("down", str(d.path))
        d.stop_daemon()
        res_left = ray_count(bed, hosts)
        kill_ray(bed, hosts)
        log(f"  dynamo-launch #{i}: down {time.time() - t:.1f}s, Ray processes left after down: {res_left}")
        if res_left:
            NOTES.append(f"dynamo-launch run {i}: {res_left} Ray processes left after `down` (killed)")


NOTES: list[str] = []
TOOLS = {  # run in this order within each repeat
    "ray_up": run_ray_up,
    "dynamo_launch": run_dynamo,
    "dynamo_launch_cheap_probe": lambda *a: run_dynamo(*a, cheap_probe=True),
}


def run(bed, opts: Options, log=print) -> dict:
    """Scenario 3 on ``bed`` (needs ``opts.ray_hosts`` hosts): see the module docstring."""
    require_tools()
    n = opts.ray_hosts
    hosts = [h.name for h in bed.hosts[:n]]
    if len(hosts) < n:
        raise RuntimeError(f"ray_up: the bed has {len(hosts)} hosts, {n} wanted")
    if ray_count(bed, hosts):
        raise RuntimeError(f"ray_up: Ray processes already run on {hosts}; refusing to start")
    NOTES.clear()
    repeats = 1 if opts.quick else opts.repeats
    base = port_base()
    work = Path(tempfile.mkdtemp(prefix="dl-rayup-", dir="/var/tmp"))  # hosts see /var/tmp, not /tmp
    series: dict[str, list[dict]] = {tool: [] for tool in TOOLS}
    try:
        for i in range(repeats):
            for tool, fn in TOOLS.items():
                res = fn(bed, hosts, base, work, i, log)
                series[tool].append(res)
                log(f"{tool} #{i}: all alive {fmt(res['all_alive'])}, head alive {fmt(res['head_alive'])}, "
                    f"last `ray start` {fmt(res.get('last_ray_start'))}, last raylet "
                    f"started {fmt(res.get('last_raylet_started'))}, CPU on hosts {fmt(res.get('host_cpu'))}, "
                    f"tool CPU {fmt(res.get('tool_cpu'))}"
                    + (f", `ray up` returned {fmt(res.get('cli_returned'))}" if tool == "ray_up" else ""))
        return result(series, hosts, bed, base)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def result(series: dict[str, list[dict]], hosts: list[str], bed, base: int) -> dict:
    """The scenario's JSON: summaries of the runs that completed, failures counted in ``notes``."""
    out: dict = {"hosts": len(hosts)}
    for tool, runs in series.items():
        out[tool] = summary([r["all_alive"] for r in runs if r["all_alive"] is not None])
        out[f"{tool}_head_alive"] = summary([r["head_alive"] for r in runs if r["head_alive"] is not None])
        failed = [r for r in runs if r["all_alive"] is None]
        if failed:
            NOTES.append(f"{tool}: {len(failed)} of {len(runs)} runs did not reach {len(hosts)} alive nodes "
                         f"within {RUN_TIMEOUT:.0f} s ({', '.join(r['end'] for r in failed)})")
            out[f"{tool}_failures"] = [{k: v for k, v in r.items()} for r in failed]
    for key in ("last_ray_start", "host_cpu", "tool_cpu", "last_raylet_started"):
        out[key] = {tool: summary([r[key] for r in runs if r.get(key) is not None])
                    for tool, runs in series.items()}
    out["ray_up_cli_returned"] = summary([r["cli_returned"] for r in series["ray_up"] if r.get("cli_returned")])
    out["speedup"] = ratio(out["ray_up"], out["dynamo_launch"])
    out["speedup_cheap_probe"] = ratio(out["ray_up"], out["dynamo_launch_cheap_probe"])
    addr = {h["name"]: h["address"] for h in bed.inventory()["hosts"]}
    out["config"] = cluster_yaml("rbench", addr[hosts[0]], [addr[h] for h in hosts[1:]], base,
                                 bed.inventory()["ssh"]["key_file"])
    out["inventory_body"] = ray_table(hosts[0], hosts[1:], base)
    out["inventory_body_cheap_probe"] = ray_processes(hosts[0], addr[hosts[0]], hosts[1:], base)
    out["notes"] = [*NOTES, ("all_alive = t0 (tool launched) → the GCS lists all hosts ALIVE, seen from the head "
                    "host by benchmarks/ray_poll.py every 100 ms; `ray up` returns after the head, its workers "
                    "are started by the v1 autoscaler on the head (5 s update interval, Ray's default)")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    try:
        require_tools()
    except Missing as e:
        sys.exit(str(e))
    from tests.testbed_fixture import new_testbed

    bed = new_testbed(args.hosts)
    try:
        res = run(bed, Options(repeats=args.repeats, quick=args.quick, ray_hosts=args.hosts))
        print(json.dumps(res, indent=1))
    finally:
        bed.teardown()


if __name__ == "__main__":
    main()
