"""Scenario 5, footprint: the daemon's memory and CPU while idle-supervising 32 hosts × 3 processes.

    sudo .venv/bin/python -m benchmarks.footprint [--hosts 32] [--quick] [--idle 60]

Method
------
``dynamo-launch up`` (the real CLI, a child process of this script, in the root namespace) supervises
:func:`~benchmarks.common.light_workload` on every chosen bed host (3 tiny TCP listeners per host,
each with a TCP liveness probe every 5 s, run from the daemon). Once all are READY it is left alone
for ``settle`` seconds (the first probes back off from 50 ms to the interval), then for the idle
window (``opts.idle_seconds``: 60 s; 5 s with ``--quick``). Nothing talks to the daemon during a
window: only its ``/proc`` entries are read, every 1 s.

* **RSS**: ``VmRSS`` of the daemon process (``/proc/<pid>/status``), sampled every 1 s: median and
  max of the samples, in MB (10^6 bytes). The daemon uses asyncssh in-process; it has no child
  processes in this configuration (``children`` in the result lists any found, with their RSS
  added in ``rss_with_children_mb``).
* **CPU**: utime+stime of the daemon (``/proc/<pid>/stat``) at the start and end of the window,
  divided by the window's wall time: % of one core. ``cpu_with_children_pct`` adds live children and
  reaped ones (cutime+cstime).
* **CPU cost of health probing per host**: the same measurement is made twice on the same hosts
  in one run, with probes on (``check = "tcp"`` at ``interval = 5.0``, the workload's default) and
  with probes off (``check = "process"``: alive for ``start_secs`` counts as ready, then no
  periodic probe; the agent still pushes exits). Everything else (SSH keepalives, the etcd/NATS
  retry timers, the status refresh) is identical, so the difference in daemon CPU is the probing:
  reported as % of a core per host, and as CPU ms per probe (probes made in the window =
  hosts × 3 / interval × window). Chosen over "8 vs 32 hosts" because that slope mixes probing
  with the per-host SSH keepalive and agent traffic. The difference of two small numbers is noisy
  on a shared 2-core machine: both raw values are reported.
* **Node agents** (context): on every host, the agent process (``<python> <state_dir>/agent-*.py
  serve --state-dir <state_dir>``, seen from the root namespace, which sees every host's PIDs):
  RSS at the end of the window and CPU % of a core over it; summarised over the hosts. Not
  counted: the per-process shims and the sshd session process.

Caveats: the bed has no NATS/etcd; the inventory points at unreachable ones, so the daemon's etcd
mirror and event bus retry (capped backoff, 5 s) instead of writing heartbeats; both are cheap.
The machine is shared with other benchmarks; CPU time of the daemon itself is less sensitive to
that than wall time, but cache effects remain. Targets: ≤ 120 MB RSS, ≤ 3 % of a core.

:func:`supervising` gives a daemon in that state, so ``benchmarks.cli_latency`` can share one
(:func:`measure_idle` then :func:`benchmarks.cli_latency.measure_status` on the same daemon).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks.common import (
    PROCESSES_PER_HOST,
    BedDaemon,
    Options,
    light_workload,
    machine_facts,
    port_base,
    summary,
    wait_all_ready,
)
from benchmarks.hosts import kill_marked

__all__ = ["agent_pids", "cpu_seconds", "main", "measure_idle", "rss_bytes", "run", "stop", "supervising"]

TARGET_RSS_MB = 120.0
TARGET_CPU_PCT = 3.0
MAX_HOSTS = 32
PROBE_INTERVAL = 5.0  # light_workload's probe interval (and the inventory default)
_TICK = os.sysconf("SC_CLK_TCK")
_MB = 1e6


# --- /proc ----------------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on; comm may hold spaces


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of ``pid`` (plus its reaped children's cutime+cstime with ``children``), in s."""
    f = _stat_fields(pid)
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / _TICK


def rss_bytes(pid: int) -> int:
    """Resident set size (``VmRSS``) of ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (``/proc/<pid>/task/*/children``, recursively)."""
    out, todo = [], [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(c) for c in f.read().split()]
                out.extend(kids)
                todo.extend(kids)
    return out


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def agent_pids(state_dir: str) -> list[int]:
    """Root-namespace pids of the node agents serving ``state_dir`` (one per host)."""
    # argv ends "serve --state-dir DIR" however the agent was started (a script path, or a -c bootstrap)
    want = ["serve", "--state-dir", state_dir]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and argv[-1] == "":
            argv.pop()  # cmdline ends with a NUL
        if argv[-3:] == want and _comm(entry) not in ("dl-agent-forks", "dl-shim"):  # forked copies keep argv
            found.append(int(entry))
    return found


def _safe(fn: Callable[[], float], default: float = 0.0) -> float:
    try:
        return fn()
    except (OSError, ValueError, IndexError):
        return default


# --- one idle window ------------------------------------------------------------------------------

def measure_idle(d: BedDaemon, seconds: float, log: Callable[[str], None] = print) -> dict:
    """Sample ``d``'s daemon (and the agents) over an idle window of ``seconds``; see module doc."""
    pid = d.proc.pid
    agents = agent_pids(d.state_dir)
    kids = descendants(pid)
    cpu0, cpu0_all = cpu_seconds(pid), cpu_seconds(pid, children=True) + sum(_safe(lambda k=k: cpu_seconds(k)) for k in kids)
    agent_cpu0 = {a: _safe(lambda a=a: cpu_seconds(a), -1.0) for a in agents}
    t0 = time.monotonic()
    rss, rss_all = [], []
    deadline = t0 + seconds
    for _ in range(int(seconds) + 2):  # one sample a second, bounded
        kids = descendants(pid)
        own = rss_bytes(pid)
        rss.append(own / _MB)
        rss_all.append((own + sum(_safe(lambda k=k: rss_bytes(k)) for k in kids)) / _MB)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(1.0, left))
    wall = time.monotonic() - t0
    cpu1 = cpu_seconds(pid)
    cpu1_all = cpu_seconds(pid, children=True) + sum(_safe(lambda k=k: cpu_seconds(k)) for k in kids)
    agent_rows = []
    for a, c0 in agent_cpu0.items():
        c1 = _safe(lambda a=a: cpu_seconds(a), -1.0)
        if c0 >= 0 and c1 >= 0:
            agent_rows.append((_safe(lambda a=a: rss_bytes(a)) / _MB, 100 * (c1 - c0) / wall))
    result = {
        "window": wall,
        "daemon_pid": pid,
        "children": kids,
        "rss_mb": summary(rss),
        "rss_with_children_mb": summary(rss_all),
        "cpu_pct": 100 * (cpu1 - cpu0) / wall,
        "cpu_with_children_pct": 100 * (cpu1_all - cpu0_all) / wall,
        "daemon_cpu_seconds": cpu1 - cpu0,
        "agents": {
            "n": len(agent_rows),
            "rss_mb": summary([r for r, _ in agent_rows]),
            "cpu_pct": summary([c for _, c in agent_rows]),
        },
    }
    log(f"  idle {wall:.1f} s: daemon RSS median {result['rss_mb']['median']:.1f} MB "
        f"(max {result['rss_mb']['max']:.1f}), CPU {result['cpu_pct']:.2f} % of a core; "
        f"{len(agent_rows)} agents, RSS median {result['agents']['rss_mb']['median'] or 0:.1f} MB, "
        f"CPU median {result['agents']['cpu_pct']['median'] or 0:.2f} %")
    return result


# --- a daemon in the measured state ---------------------------------------------------------------

def _without_probes(body: str) -> str:
    """``body`` (light_workload) with every periodic probe replaced by ``check = "process"``."""
    return re.sub(r"health = \{[^}]*\}", 'health = { check = "process" }', body)


@contextlib.contextmanager
def supervising(bed, tmp: Path, hosts: list[str], *, probes: bool = True, log: Callable[[str], None] = print,
                timeout: float = 180.0) -> Iterator[BedDaemon]:
    """A daemon supervising the light workload on ``hosts``, all READY; stopped and cleaned after.

    ``probes=False``: the same workload with ``check = "process"`` (no periodic probe; all RUNNING).
    """
    body = light_workload(hosts, port_base())
    d = BedDaemon(bed, tmp, body if probes else _without_probes(body), hosts=hosts)
    try:
        t0 = time.monotonic()
        d.start(timeout=60)
        expect = len(hosts) * PROCESSES_PER_HOST
        if probes:
            wait_all_ready(d, expect, timeout=timeout)
        else:  # no readiness probe: such a process stays RUNNING (alive past start_secs), never READY
            d.wait(lambda s: len(s["processes"]) == expect and all(p["state"] == "RUNNING" for p in s["processes"]),
                   timeout, interval=0.05)
        log(f"  {len(hosts)} hosts × {PROCESSES_PER_HOST} {'READY' if probes else 'RUNNING'} in {time.monotonic() - t0:.1f} s "
            f"(probes {'on' if probes else 'off'})")
        yield d
    finally:
        stop(d, log)


def stop(d: BedDaemon, log: Callable[[str], None] = print) -> None:
    """``down`` the daemon, then SIGKILL whatever is left of it (daemon, agents, processes)."""
    if d.proc is not None and d.proc.poll() is None:
        try:
            r = d.cli("down", str(d.path), timeout=120)
            if r.returncode != 0:
                log(f"  down exited {r.returncode}: {r.stderr.strip()[-300:]}")
        except Exception as e:  # noqa: BLE001 — cleanup goes on whatever happened
            log(f"  down failed: {e}")
    d.stop_daemon()
    for lid in d.launch_ids:
        left = kill_marked(f"DYNAMO_LAUNCH_ID={lid}")
        if left:
            log(f"  could not kill {left} of launch {lid}")
    for pid in agent_pids(d.state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


# --- the scenario ---------------------------------------------------------------------------------

def _settle(opts: Options) -> float:
    return 3.0 if opts.quick else 10.0


def _idle_seconds(opts: Options) -> float:
    return min(opts.idle_seconds, 5.0) if opts.quick else opts.idle_seconds


def probing_cost(on: dict, off: dict, hosts: int, interval: float = PROBE_INTERVAL) -> dict:
    """Daemon CPU of probing: probes-on minus probes-off, per host and per probe."""
    delta_pct = on["cpu_pct"] - off["cpu_pct"]
    probes = hosts * PROCESSES_PER_HOST * on["window"] / interval
    delta_s = on["daemon_cpu_seconds"] - off["daemon_cpu_seconds"] * on["window"] / off["window"]
    return {
        "hosts": hosts,
        "probe_interval": interval,
        "probes_per_second": hosts * PROCESSES_PER_HOST / interval,
        "cpu_pct_probes_on": on["cpu_pct"],
        "cpu_pct_probes_off": off["cpu_pct"],
        "cpu_pct_per_host": delta_pct / hosts,
        "cpu_ms_per_probe": 1000 * delta_s / probes if probes else None,
    }


def run(bed, opts: Options, log: Callable[[str], None] = print,
        after_window: Callable[[BedDaemon], None] | None = None) -> dict:
    """Scenario 5 on ``bed`` (up to 32 of its hosts): the idle footprint, probes on and off.

    ``after_window(daemon)`` is called with the probes-on daemon after its window (to share it).
    """
    hosts = [h.name for h in bed.hosts][:MAX_HOSTS]
    idle, settle = _idle_seconds(opts), _settle(opts)
    tmp = Path(tempfile.mkdtemp(prefix="dl-footprint-", dir=opts.tmp))
    windows = {}
    try:
        for probes in (True, False):
            log(f"footprint: {len(hosts)} hosts, probes {'on' if probes else 'off'}, idle {idle:.0f} s")
            with supervising(bed, tmp, hosts, probes=probes, log=log) as d:
                time.sleep(settle)
                windows["probes_on" if probes else "probes_off"] = measure_idle(d, idle, log)
                if probes and after_window is not None:
                    after_window(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    on = windows["probes_on"]
    result = {
        "hosts": len(hosts),
        "processes": len(hosts) * PROCESSES_PER_HOST,
        "idle_seconds": idle,
        "settle_seconds": settle,
        "rss_mb": on["rss_mb"],
        "cpu_pct": on["cpu_pct"],
        "targets": {"rss_mb": TARGET_RSS_MB, "cpu_pct": TARGET_CPU_PCT},
        "met": {"rss": on["rss_mb"]["max"] <= TARGET_RSS_MB, "cpu": on["cpu_pct"] <= TARGET_CPU_PCT},
        "probing": probing_cost(on, windows["probes_off"], len(hosts)),
        "agents": on["agents"],
        "windows": windows,
    }
    log(f"footprint: RSS max {on['rss_mb']['max']:.1f} MB (target {TARGET_RSS_MB:.0f}), CPU {on['cpu_pct']:.2f} % "
        f"(target {TARGET_CPU_PCT:.0f}); probing {result['probing']['cpu_pct_per_host']:.3f} % of a core per host")
    return result


def main() -> None:
    """Standalone: make a bed, run the scenario, print the JSON, tear the bed down."""
    from tests.testbed_fixture import new_testbed

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=MAX_HOSTS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--idle", type=float, default=60.0)
    args = ap.parse_args()
    opts = Options(quick=args.quick, idle_seconds=args.idle)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    bed = new_testbed(args.hosts)
    try:
        print(json.dumps({"machine": machine_facts(), "footprint": run(bed, opts, log)}, indent=1))
    finally:
        bed.teardown()


if __name__ == "__main__":
    main()
