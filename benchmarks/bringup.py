"""Scenarios 1 and 2: bring-up time against N hosts, dynamo-launch versus a plain OpenSSH loop.

    sudo .venv/bin/python -m benchmarks.bringup [--hosts 32] [--quick] [--repeats 5]

Workload: the light one (``common.light_workload``): 3 tiny TCP listeners per host, each ready
when its port accepts. For every N in ``opts.sizes`` (quick: 1 and 2), on the first N bed
hosts, ``opts.repeats`` times, with the tools' order rotated every repeat so drift (other load
on the 2-core machine) hits all of them alike:

* **dynamo_launch** — t0 = just before the real ``dynamo-launch up`` CLI is launched (a child
  process, ``BedDaemon.start``); end = the latest ``ready`` event's ``time`` (the daemon's own
  wall clock, same machine). Cross-check: when a 20 ms status poll first saw all READY
  (``poll``; it can only be later, by up to a poll plus a control round-trip). Phases, from the
  daemon's JSON log and its events, all relative to t0: ``logging`` (first log line: the CLI
  has imported and loaded the inventory), ``agents`` (one SSH connection and one node agent per
  host, up), ``preflight`` (preflight, asked through the agents, passed on every host), ``first_start`` (first
  ``starting`` event), ``last_started`` (last ``started``), ``all_ready`` (last ``ready``).
  Then ``down`` and a check that nothing of the launch runs on any host before the next run.
  While it runs, the daemon's established TCP connections to each host's sshd and the sshd
  session processes on each host are counted (``connections``: max per host over the run).
* **ssh_loop_per_process** — what the reference guides amount to when an operator (or a
  script) starts each process on each node: for each host in turn, for each process,
  ``ssh root@host 'nohup python workload.py PORT >LOG 2>&1 </dev/null & echo $!'`` with
  OpenSSH (the bed's key and known_hosts, strict host keys, no connection sharing), then
  wait until every port accepts a TCP connect from the root namespace (polled every 10 ms).
* **ssh_loop_per_host** — the same with one ``ssh`` per host starting all 3 (fairer to the
  loop: a third of the connections).

Fairness notes: the loops do no preflight, no supervision, no health checks and no adoption;
readiness for them is our own 10 ms port poll, for dynamo-launch its readiness probe (TCP from
the head, first after 50 ms, then backing off). The loops' processes carry a marker variable
(``DL_BENCH_LOOP=<tag>``) so they are found and killed from the root namespace afterwards.
OpenSSH here is the system client (no ControlMaster): each ``ssh`` pays a full handshake.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchmarks.common import (
    PY,
    WORKLOAD,
    BedDaemon,
    Options,
    cpu_busy,
    light_workload,
    port_base,
    ratio,
    summary,
    wait_all_ready,
)
from benchmarks.hosts import kill_marked, launch_leftovers, sshd_sessions, tcp_peers, wait_ports

__all__ = ["dynamo_once", "run", "ssh_loop_once"]

PER_HOST = 3
SSH_PORT = 22
TOOLS = ("dynamo_launch", "ssh_loop_per_process", "ssh_loop_per_host")
PHASES = ("logging", "agents", "preflight", "first_start", "last_started", "all_ready")


def _log_times(path: Path) -> dict[str, float]:
    """Wall times of the daemon's first JSON log line and of the phase lines, by phase name."""
    wanted = {"preflight passed": "preflight", "agents up": "agents"}
    out: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
            at = datetime.fromisoformat(rec["timestamp"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        out.setdefault("logging", at)
        if rec.get("event") in wanted:
            out.setdefault(wanted[rec["event"]], at)
    return out


def _phases(t0: float, events: list[dict], log_times: dict[str, float]) -> dict[str, float]:
    """Every phase as seconds after t0 (missing ones are left out)."""
    def times(kind: str) -> list[float]:
        return [e["time"] for e in events if e["kind"] == kind]

    at = dict(log_times)
    for name, kind, pick in (("first_start", "starting", min), ("last_started", "started", max),
                             ("all_ready", "ready", max)):
        if times(kind):
            at[name] = pick(times(kind))
    return {k: round(at[k] - t0, 4) for k in PHASES if k in at}


def _connections(bed, d: BedDaemon, hosts: list[str]) -> dict[str, int]:
    """The daemon's TCP connections to each host's sshd, and sshd sessions on each host (max over hosts)."""
    address = {h.name: h.address for h in bed.hosts}
    peers = tcp_peers(d.proc.pid)
    per_host = [peers.get((address[h], SSH_PORT), 0) for h in hosts]
    sessions = sshd_sessions(bed)
    return {"daemon_tcp_max": max(per_host), "daemon_tcp_min": min(per_host),
            "sshd_sessions_max": max(sessions[h] for h in hosts)}


def dynamo_once(bed, tmp: Path, hosts: list[str], base: int) -> dict:
    """One ``up`` → all READY → ``down`` on ``hosts``: total, poll cross-check, phases, connections."""
    d = BedDaemon(bed, tmp, light_workload(hosts, base, PER_HOST), hosts=hosts)
    expect = PER_HOST * len(hosts)
    try:
        busy0 = cpu_busy()
        t0 = time.time()  # BedDaemon.start's first act is the Popen of the CLI
        d.start(timeout=120)
        wait_all_ready(d, expect, timeout=120)
        t_poll = time.time()
        busy = cpu_busy() - busy0
        events = d.events()
        conns = _connections(bed, d, hosts)
        phases = _phases(t0, events, _log_times(d.stderr_path))
        down = d.cli("down", str(d.path), timeout=120)
        assert down.returncode == 0, down.stderr
        d.proc.wait(60)
        left = launch_leftovers(d.launch_id)
        assert not left, f"after down, processes of {d.launch_id} still run: {left}"
        return {"total": phases["all_ready"], "poll": round(t_poll - t0, 4), "phases": phases, "connections": conns,
                "busy": busy / (t_poll - t0) / (os.cpu_count() or 1)}
    finally:
        d.stop_daemon()
        for lid in d.launch_ids:
            kill_marked(f"DYNAMO_LAUNCH_ID={lid}")


def _start_commands(base: int, tag: str) -> list[str]:
    """The operator's shell line for each process: nohup, log to a file, background, print its pid."""
    marker = f"DL_BENCH_LOOP={tag}"
    return [f"nohup env {marker} {shlex.quote(PY)} -I -S {shlex.quote(WORKLOAD)} {base + i} "
            f">/tmp/dl-bench-{tag}-{i}.log 2>&1 </dev/null & echo $!" for i in range(PER_HOST)]


def ssh_loop_once(bed, hosts: list[str], base: int, *, per_host: bool) -> dict:
    """Sequential OpenSSH starts on ``hosts`` (one ssh per process, or per host), until every port accepts."""
    tag = secrets.token_hex(4)
    commands = _start_commands(base, tag)
    batches = ["\n".join(commands)] if per_host else commands
    address = {h.name: h.address for h in bed.hosts}
    try:
        busy0 = cpu_busy()
        t0 = time.time()
        pids = 0
        for h in hosts:
            for cmd in batches:
                r = subprocess.run(bed.ssh_argv(h, cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
                                   timeout=60)
                assert r.returncode == 0, f"{h}: ssh failed: {r.stderr}"
                pids += len(r.stdout.split())
        t_started = time.time()
        t_ready = wait_ports([(address[h], base + i) for h in hosts for i in range(PER_HOST)], timeout=60)
        assert t_ready is not None, "ports never all accepted"
        assert pids == PER_HOST * len(hosts), f"{pids} pids echoed"
        busy = cpu_busy() - busy0
        return {"total": round(t_ready - t0, 4), "ssh_done": round(t_started - t0, 4),
                "busy": busy / (time.time() - t0) / (os.cpu_count() or 1)}
    finally:
        left = kill_marked(f"DL_BENCH_LOOP={tag}")
        assert not left, f"ssh loop processes survive: {left}"


def _sizes(bed, opts: Options) -> list[int]:
    sizes = [1, 2] if opts.quick else list(opts.sizes)
    return [n for n in sizes if n <= len(bed.hosts)]


def run(bed, opts: Options, log=print, sizes: list[int] | None = None) -> dict:
    """Scenarios 1 and 2 on ``bed`` (see the module docstring); JSON-ready result. ``sizes``
    overrides the host counts of ``opts`` (``benchmarks/overhead.py``: 1 alone)."""
    names = [h.name for h in bed.hosts]
    base = port_base()
    tmp = Path(tempfile.mkdtemp(prefix="dl-bench-bringup-", dir=opts.tmp))
    out = []
    for n in sizes or _sizes(bed, opts):
        hosts = names[:n]
        series: dict[str, list[dict]] = {t: [] for t in TOOLS}
        for rep in range(opts.repeats):
            order = TOOLS[rep % len(TOOLS):] + TOOLS[:rep % len(TOOLS)]  # rotate: drift hits every tool
            for tool in order:
                if tool == "dynamo_launch":
                    r = dynamo_once(bed, tmp, hosts, base)
                else:
                    r = ssh_loop_once(bed, hosts, base, per_host=tool == "ssh_loop_per_host")
                series[tool].append(r)
                log(f"bringup N={n} rep={rep + 1}/{opts.repeats} {tool}: {r['total']:.3f}s")
        out.append(_size_result(n, series))
    return {"per_host": PER_HOST, "sizes": out, **_scaling(out)}


def _size_result(n: int, series: dict[str, list[dict]]) -> dict:
    dl = series["dynamo_launch"]
    phases = {k: summary([r["phases"][k] for r in dl if k in r["phases"]]) for k in PHASES}
    conns = {k: max(r["connections"][k] for r in dl) for k in dl[0]["connections"]} if dl else {}
    if dl:
        conns["daemon_tcp_min"] = min(r["connections"]["daemon_tcp_min"] for r in dl)
    return {
        "n": n,
        **{t: summary([r["total"] for r in series[t]]) for t in TOOLS},
        "dynamo_launch_poll": summary([r["poll"] for r in dl]),
        "ssh_loop_per_process_ssh_done": summary([r["ssh_done"] for r in series["ssh_loop_per_process"]]),
        "ssh_loop_per_host_ssh_done": summary([r["ssh_done"] for r in series["ssh_loop_per_host"]]),
        "phases": phases,
        "connections_per_host": conns,
        # share of all cores busy from t0 to all ready: near 1 means the bed's CPU, not the tool, set the pace
        "cpu_busy": {t: summary([r["busy"] for r in series[t]]) for t in TOOLS},
        "speedup_vs_ssh_loop_per_process": ratio(summary([r["total"] for r in series["ssh_loop_per_process"]]),
                                                 summary([r["total"] for r in dl])),
        "speedup_vs_ssh_loop_per_host": ratio(summary([r["total"] for r in series["ssh_loop_per_host"]]),
                                              summary([r["total"] for r in dl])),
    }


def _scaling(sizes: list[dict]) -> dict:
    """median(N=max) / median(N=1) per tool (the target: ≤ 1.5 for dynamo-launch)."""
    if len(sizes) < 2 or sizes[0]["n"] != 1:
        return {"scaling": None}
    first, last = sizes[0], sizes[-1]
    out = {"scaling": ratio(last["dynamo_launch"], first["dynamo_launch"]), "scaling_n": last["n"]}
    for t in TOOLS[1:]:
        out[f"scaling_{t}"] = ratio(last[t], first[t])
    return out


def main() -> None:
    """Standalone: make a bed, run, print the JSON, tear the bed down."""
    from tests.testbed_fixture import new_testbed

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=None, help="bed size (default: the largest N)")
    ap.add_argument("--sizes", type=str, default=None, help="comma-separated N (default 1,4,8,16,32)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    opts = Options(quick=args.quick, repeats=args.repeats or (2 if args.quick else 5))
    if args.sizes:
        opts.sizes = [int(x) for x in args.sizes.split(",")]
    need = args.hosts or (2 if opts.quick else max(opts.sizes))
    bed = new_testbed(need)
    try:
        result = run(bed, opts, log=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        bed.teardown()
    print(json.dumps(result, indent=1))
    for s in result["sizes"]:
        print(f"N={s['n']:3}  " + "  ".join(f"{t} {s[t]['median']:.3f}s" for t in TOOLS
                                           if s[t]["median"] is not None), file=sys.stderr)


if __name__ == "__main__":
    main()
