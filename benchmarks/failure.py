"""Scenario 4: failure detection and repair — kill -9 a supervised process, time the daemon.

    sudo .venv/bin/python -m benchmarks.failure [--hosts 3] [--kills 20] [--quick]

(Replaces the older ``benchmarks/restart_latency.py``: ``single`` is what it measured.)

**single** — the real ``dynamo-launch up`` CLI supervises one stand-in (``tests/standin``, HTTP
``/health`` probed every 0.5 s) on each of 3–4 bed hosts. ``opts.kills`` times, a random one
is killed with SIGKILL *from the root namespace* (the bed's PID namespaces are visible there,
found by its ``DYNAMO_LAUNCH_ID``/``DYNAMO_LAUNCH_NAME`` environment), t_kill taken just
before ``os.kill``. From the daemon's own events (``time`` = its wall clock, same machine):
``detect`` = first ``exited`` of that process − t_kill; ``running`` = its first ``started``
− t_kill (the new copy's pid is known: spawned by the node agent); ``ready`` = its first
``ready`` − t_kill (includes the first successful readiness probe). Targets: detect ≤ 0.5 s
median, running ≤ 1.5 s.

**gang** — three stand-ins in one gang (``gang = "g"``), one per host on 3 hosts; a member
(rotating) is killed the same way; ``detect`` = its ``exited`` − t_kill; ``all_running`` =
the latest first-``started`` over the 3 members − t_kill (every member is stopped and started
again: a new generation); ``all_ready`` = the latest first-``ready`` − t_kill.

Restart policy: ``reset_after = 1.0`` s and kills spaced 1.2 s after recovery, so every restart
is the immediate first of its streak (no backoff delay in the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import BedDaemon, Options, port_base, summary
from benchmarks.hosts import kill_marked
from tests.daemon_harness import scan_launch, standin_process

__all__ = ["gang_kills", "run", "single_kills"]

SPACING = 1.2  # past reset_after (1.0 s): the next restart is immediate again
RECOVER_TIMEOUT = 30.0


def _by_name(snap: dict) -> dict[str, dict]:
    return {p["name"]: p for p in snap["processes"]}


def _last_seq(d: BedDaemon) -> int:
    return max([e["seq"] for e in d.events()] + [0])


def _kill_now(d: BedDaemon, name: str) -> float:
    """SIGKILL the current copy of ``name`` from the root namespace; the wall time of the kill."""
    (pid,) = [p["pid"] for p in scan_launch(d.launch_id) if p["name"] == name]
    t_kill = time.time()
    os.kill(pid, signal.SIGKILL)
    return t_kill


def _first(events: list[dict], name: str, kind: str) -> float:
    return next(e["time"] for e in events if e["process"] == name and e["kind"] == kind)


def _daemon(bed, tmp: Path, body: str, hosts: list[str]) -> BedDaemon:
    d = BedDaemon(bed, tmp, body, hosts=hosts, keepalive=(1.0, 2))
    d.up(timeout=120)
    d.wait(lambda s: all(p["state"] == "READY" for p in s["processes"]), 60)
    return d


def _stop(d: BedDaemon) -> None:
    """``down``, then make sure: kill the daemon and anything of its launches left on the hosts."""
    try:
        if d.proc is not None and d.proc.poll() is None:
            d.cli("down", str(d.path), timeout=60)
            d.proc.wait(30)
    finally:
        d.stop_daemon()
        for lid in d.launch_ids:
            kill_marked(f"DYNAMO_LAUNCH_ID={lid}")


def single_kills(bed, tmp: Path, hosts: list[str], kills: int, log=print) -> dict:
    """``kills`` kill -9s of a random one of one stand-in per host: detect/running/ready series."""
    body = standin_process("web", port_base(), hosts=hosts, max_restarts=10_000, reset_after=1.0)
    d = _daemon(bed, tmp, body, hosts)
    rng = random.Random(1)
    detect, running, ready = [], [], []
    try:
        for i in range(kills):
            name = f"web-{rng.choice(hosts)}"
            seq, old = _last_seq(d), _by_name(d.status())[name]["pid"]
            t_kill = _kill_now(d, name)
            d.wait(lambda s, n=name, o=old: _by_name(s)[n]["pid"] not in (None, o) and _by_name(s)[n]["state"] == "READY",
                   RECOVER_TIMEOUT, interval=0.05)
            events = d.events(seq)
            detect.append(_first(events, name, "exited") - t_kill)
            running.append(_first(events, name, "started") - t_kill)
            ready.append(_first(events, name, "ready") - t_kill)
            log(f"failure single {i + 1}/{kills} {name}: detect {detect[-1]:.3f}s running {running[-1]:.3f}s "
                f"ready {ready[-1]:.3f}s")
            time.sleep(SPACING)
    finally:
        _stop(d)
    return {"detect": summary(detect), "running": summary(running), "ready": summary(ready), "hosts": len(hosts)}


def gang_kills(bed, tmp: Path, hosts: list[str], kills: int, log=print) -> dict:
    """``kills`` kill -9s of one member (rotating) of a 3-member gang across 3 hosts."""
    members = [f"g{i}" for i in range(len(hosts))]
    base = port_base() + 5
    body = "".join(standin_process(m, base + i, host=h, gang="g", max_restarts=10_000, reset_after=1.0)
                   for i, (m, h) in enumerate(zip(members, hosts)))
    d = _daemon(bed, tmp, body, hosts)
    detect, all_running, all_ready = [], [], []
    try:
        for i in range(kills):
            victim = members[i % len(members)]
            seq = _last_seq(d)
            old = {m: p["pid"] for m, p in _by_name(d.status()).items()}

            def back(s, old=old):
                procs = _by_name(s)
                return all(procs[m]["pid"] not in (None, old[m]) and procs[m]["state"] == "READY" for m in members)

            t_kill = _kill_now(d, victim)
            d.wait(back, RECOVER_TIMEOUT, interval=0.05)
            events = d.events(seq)
            detect.append(_first(events, victim, "exited") - t_kill)
            all_running.append(max(_first(events, m, "started") for m in members) - t_kill)
            all_ready.append(max(_first(events, m, "ready") for m in members) - t_kill)
            log(f"failure gang {i + 1}/{kills} {victim}: detect {detect[-1]:.3f}s all running {all_running[-1]:.3f}s "
                f"all ready {all_ready[-1]:.3f}s")
            time.sleep(SPACING)
    finally:
        _stop(d)
    return {"detect": summary(detect), "all_running": summary(all_running), "all_ready": summary(all_ready),
            "members": len(members)}


def run(bed, opts: Options, log=print) -> dict:
    """Scenario 4 on ``bed`` (3–4 of its hosts); see the module docstring."""
    names = [h.name for h in bed.hosts]
    assert len(names) >= 3, "scenario 4 needs a bed of at least 3 hosts"
    tmp = Path(tempfile.mkdtemp(prefix="dl-bench-failure-", dir=opts.tmp))
    kills = 3 if opts.quick else opts.kills
    gang = 2 if opts.quick else max(3, min(5, opts.kills))
    return {"single": single_kills(bed, tmp, names[:4], kills, log),
            "gang": gang_kills(bed, tmp, names[:3], gang, log)}


def main() -> None:
    """Standalone: make a bed, run, print the JSON, tear the bed down."""
    from tests.testbed_fixture import new_testbed

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    opts = Options(quick=args.quick, kills=args.kills)
    bed = new_testbed(max(3, args.hosts))
    try:
        result = run(bed, opts, log=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        bed.teardown()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
