"""What every benchmark scenario shares: machine facts, summaries, the light workload, the bed.

Scenario modules expose ``run(bed, opts) -> dict`` (JSON-ready; numbers in seconds unless the
key says otherwise) and are driven by ``benchmarks/run.py``. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.bed_daemon import DL, BedDaemon  # noqa: E402
from tests.daemon_harness import PY  # noqa: E402

__all__ = ["DL", "PY", "ROOT", "BedDaemon", "Options", "WORKLOAD", "cpu_busy", "machine_facts", "summary", "ratio",
           "light_workload", "all_ready", "wait_all_ready", "port_base"]

WORKLOAD = str(ROOT / "benchmarks" / "workload.py")
PROCESSES_PER_HOST = 3


@dataclass
class Options:
    """What ``benchmarks/run.py`` was asked for."""

    sizes: list[int] = field(default_factory=lambda: [1, 4, 8, 16, 32])
    repeats: int = 5
    quick: bool = False  # the CI smoke: tiny N, one or two repeats, short idle windows
    idle_seconds: float = 60.0
    ray_hosts: int = 4
    kills: int = 20
    tmp: Path = Path("/tmp")
    baseline: str = ""  # serving: the "before" revision ("" its default, "none" after only)
    serving_cases: list[str] | None = None  # serving: case names or layouts (None: all; quick: two)


def machine_facts() -> dict:
    """Cores, memory, kernel and the versions that matter, recorded with every result set."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        mem_kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration, ValueError):
        pass

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return ""

    def tool(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return ""

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {d: version(d) for d in ("dynamo-launch", "asyncssh", "ray", "ai-dynamo", "structlog", "click")},
        "openssh": tool(["ssh", "-V"]),
        "git": tool(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
    }


def summary(values: list[float]) -> dict:
    """``{"n", "median", "min", "max", "values"}`` of one measured series."""
    vals = [float(v) for v in values]
    if not vals:
        return {"n": 0, "median": None, "min": None, "max": None, "values": []}
    return {"n": len(vals), "median": statistics.median(vals), "min": min(vals), "max": max(vals), "values": vals}


def ratio(a: dict, b: dict) -> float | None:
    """median(a) / median(b), or None when either is missing."""
    if not a.get("median") or not b.get("median"):
        return None
    return a["median"] / b["median"]


def cpu_busy() -> float:
    """CPU seconds this machine's cores have been busy since boot (``/proc/stat``, all of them).

    Every bed host runs on this machine, so the busy time over a run, divided by the run's wall
    time and the cores, says how CPU-bound the run was.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def port_base() -> int:
    """Ports for one run (each bed host has its own network namespace; only loopback collides)."""
    return 21000 + 10 * (os.getpid() % 900)


def light_workload(hosts: list[str], base: int, per_host: int = PROCESSES_PER_HOST) -> str:
    """``[[processes]]`` tables: ``per_host`` tiny TCP listeners on each of ``hosts``.

    Table ``w<i>`` runs one copy per host (``w<i>-<host>``); ready = its port accepts.
    """
    out = []
    for i in range(per_host):
        command = [PY, "-I", "-S", WORKLOAD, str(base + i)]
        out.append(f'\n[[processes]]\nname = "w{i}"\nhosts = {json.dumps(hosts)}\ncommand = {json.dumps(command)}\n'
                   f'health = {{ check = "tcp", port = {base + i}, interval = 5.0 }}\n')
    return "".join(out)


def all_ready(snap: dict, expect: int) -> bool:
    """Every one of ``expect`` processes is READY."""
    procs = snap.get("processes", [])
    return len(procs) == expect and all(p["state"] == "READY" for p in procs)


def wait_all_ready(d: BedDaemon, expect: int, timeout: float = 120.0) -> dict:
    """Poll status every 20 ms until all ``expect`` processes are READY."""
    return d.wait(lambda s: all_ready(s, expect), timeout, interval=0.02)
