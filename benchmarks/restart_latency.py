"""Exit detection and restart latency over real SSH on the test bed (needs root).

    .venv/bin/python benchmarks/restart_latency.py [--hosts 3] [--kills 30]

Starts `dynamo-launch up` (the real CLI) for one stand-in process per test-bed host, then
kill -9s a random one, ``--kills`` times, from the root namespace (precise kill time), and
reads the daemon's events: *exit detected* = the daemon applied the exit (``exited`` event)
minus the kill; *respawned* = the new copy's ``started`` event minus the kill; *ready* = its
``ready`` event minus the kill (includes the first readiness probe). Restarts of one process
are spaced past ``reset_after`` so every restart is the immediate first one of a streak.
Prints a table and writes the Markdown rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.daemon_harness import scan_launch, standin_process  # noqa: E402
from tests.integration.test_daemon_testbed import Cluster, by_name, ports  # noqa: E402
from tests.testbed_fixture import new_testbed  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--kills", type=int, default=30)
    args = ap.parse_args()
    bed = new_testbed(args.hosts)
    tmp = Path(tempfile.mkdtemp(prefix="dl-bench-"))
    c = None
    try:
        (port,) = ports(1)
        names = [h.name for h in bed.hosts]
        c = Cluster(bed, tmp, standin_process("web", port, hosts=names, max_restarts=1000, reset_after=1.0))
        c.up()
        rng = random.Random(1)
        detect, spawn, ready = [], [], []
        for _ in range(args.kills):
            host = rng.choice(names)
            name = f"web-{host}"
            seq = max([e["seq"] for e in c.request("events")["events"]] + [0])
            old = by_name(c.status())[name]["pid"]
            # the same process seen from the root namespace: kill it from here, timestamp exact
            target = [p["pid"] for p in scan_launch(c.status()["launch_id"]) if p["name"] == name]
            t_kill = time.time()
            os.kill(target[0], signal.SIGKILL)
            c.wait(lambda s: by_name(s)[name]["pid"] not in (None, old) and by_name(s)[name]["state"] == "READY", 30)
            events = [e for e in c.request("events", since=seq)["events"] if e["process"] == name]
            first = {k: next(e["time"] for e in events if e["kind"] == k) for k in ("exited", "started", "ready")}
            detect.append(first["exited"] - t_kill)
            spawn.append(first["started"] - t_kill)
            ready.append(first["ready"] - t_kill)
            time.sleep(1.2)  # past reset_after: the next restart of it is immediate again
        rows = [("exit detected", detect), ("new copy started", spawn), ("new copy READY", ready)]
        print(f"{args.kills} kill -9 over SSH, {args.hosts} test-bed hosts (seconds after the kill)")
        print(f"{'':18} {'median':>8} {'p90':>8} {'max':>8}")
        for label, vals in rows:
            print(f"{label:18} {statistics.median(vals):8.3f} {pct(vals, 0.9):8.3f} {max(vals):8.3f}")
        print()
        for label, vals in rows:
            print(f"| {label} | {statistics.median(vals) * 1000:.0f} ms | {pct(vals, 0.9) * 1000:.0f} ms | "
                  f"{max(vals) * 1000:.0f} ms |")
    finally:
        if c is not None:
            c.cli("down", str(c.path))
            c.cleanup()
        bed.teardown()


if __name__ == "__main__":
    main()
