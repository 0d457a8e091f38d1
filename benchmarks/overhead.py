"""Scenario 8: the fixed overhead of ``up`` — one host, the light workload, to all READY.

    sudo .venv/bin/python -m benchmarks.run --only overhead --update --repeats 9

What every bring-up pays whatever the number of hosts: the CLI's start and imports, one SSH
connection, the node agent's start, preflight, the starts and the first readiness probes.
Measured as scenario 1 is (``benchmarks/bringup.py``, N = 1, ``opts.repeats`` runs with the
per-process and per-host SSH loops interleaved, order rotated), with the phases of each run, so
that a change to that path can be measured in a minute instead of the whole suite's half hour.

Also the floor under the first phase, 10 runs each in a fresh interpreter: ``python -c pass``
(start and exit, wall), and, timed inside the interpreter, the imports of what ``up`` loads before
it reaches a host and those of ``asyncssh`` alone (the SSH library, most of them).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from benchmarks import bringup
from benchmarks.cli_latency import timed
from benchmarks.common import PY, ROOT, Options, summary

__all__ = ["IMPORTS", "TARGET", "import_seconds", "run"]

TARGET = 0.5  # seconds, `up` of one host to all READY (issue 13)
IMPORTS = {  # timed inside a fresh interpreter
    "up_imports": "import dynamo_launch.cli; from dynamo_launch import load, logs, sdnotify; "
                  "from dynamo_launch.daemon import Daemon; from dynamo_launch.transport import SshTransport",
    "asyncssh": "import asyncssh",
}


def import_seconds(code: str) -> float:
    """How long ``code`` (imports) takes in a fresh interpreter, its start and exit left out."""
    timer = f"import time\nt = time.perf_counter()\n{code}\nprint(time.perf_counter() - t)"
    out = subprocess.run([PY, "-W", "ignore", "-c", timer], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True)
    return float(out.stdout.split()[-1])


def run(bed, opts: Options, log: Callable[[str], None] = print) -> dict:
    """Scenario 8 on ``bed`` (its first host); JSON-ready result."""
    result = bringup.run(bed, opts, log, sizes=[1])
    out = {"per_host": result["per_host"], **result["sizes"][0], "target": TARGET}
    repeats = 3 if opts.quick else 10
    out["imports"] = {"python_startup": summary([timed([PY, "-c", "pass"])[0] for _ in range(repeats)])}
    for label, code in IMPORTS.items():
        out["imports"][label] = summary([import_seconds(code) for _ in range(repeats)])
    for label, s in out["imports"].items():
        log(f"{label}: median {s['median']:.3f} s")
    return out
