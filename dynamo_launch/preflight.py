"""Checks before anything starts: reach, interpreter, free ports, GPUs, versions, secrets.

Every host is asked once, in parallel, with one small stdlib-only Python
program (``FACTS``) run by the inventory's interpreter; the answers are judged
here. A failure stops ``up`` before a single process is started; warnings
(GPU count unknown without ``nvidia-smi``, version skew) are shown and ``up``
goes on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass

from . import secrets
from .errors import DynamoLaunchError
from .model import Inventory
from .plan.spec import Plan
from .transport.base import Transport

__all__ = ["Check", "FACTS", "judge", "run_preflight"]

PACKAGES = ("ai-dynamo", "ai-dynamo-runtime", "vllm", "sglang", "tensorrt-llm", "ray")

FACTS = r"""
import json, os, platform, shutil, subprocess, sys
from importlib import metadata
def version(name):
    try:
        return metadata.version(name)
    except Exception:
        return None
def listening():
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return sorted(ports)
gpus = None
smi = shutil.which("nvidia-smi")
if smi:
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        gpus = len([l for l in out.stdout.splitlines() if l.strip()]) if out.returncode == 0 else -1
    except Exception:
        gpus = -1
print(json.dumps({
    "python": platform.python_version(),
    "packages": {n: version(n) for n in json.loads(sys.argv[1])},
    "gpus": gpus,
    "listening": listening(),
    "hostname": platform.node(),
}))
"""


@dataclass(frozen=True)
class Check:
    """One preflight finding: ``status`` is ``ok``, ``warn`` or ``fail``."""

    host: str
    name: str
    status: str
    detail: str


def judge(inv: Inventory, plan: Plan, facts: dict[str, dict | str], *, adopting: Iterable[str] = ()) -> list[Check]:
    """Turn each host's facts (or its error string) into checks. Pure, so tests can feed facts."""
    checks: list[Check] = []
    adopted = set(adopting)
    for host in inv.hosts:
        fact = facts.get(host.name)
        if isinstance(fact, str) or fact is None:
            checks.append(Check(host.name, "reach", "fail", fact or "not checked"))
            continue
        checks.append(Check(host.name, "reach", "ok", f"{'local' if host.local else 'ssh'}, python {fact['python']}"))
        needed = {port: p.name for p in plan.on_host(host.name) if p.name not in adopted for port, _ in p.ports}
        busy = sorted(set(needed) & set(fact.get("listening", [])))
        if busy:
            detail = ", ".join(f"{port} ({needed[port]})" for port in busy)
            checks.append(Check(host.name, "ports", "fail", f"already in use: {detail}"))
        elif needed:
            checks.append(Check(host.name, "ports", "ok", f"{len(needed)} free"))
        gpus = fact.get("gpus")
        if gpus is None:
            status = "warn" if host.gpus else "ok"
            checks.append(Check(host.name, "gpus", status, f"no nvidia-smi; inventory says {host.gpus}"))
        elif gpus != host.gpus:
            checks.append(Check(host.name, "gpus", "fail", f"nvidia-smi sees {gpus}, inventory says {host.gpus}"))
        else:
            checks.append(Check(host.name, "gpus", "ok", str(gpus)))
    checks += _skew(facts)
    return checks


def _skew(facts: dict[str, dict | str]) -> list[Check]:
    good = {h: f for h, f in facts.items() if isinstance(f, dict)}
    out = []
    for key in ("python", *PACKAGES):
        seen: dict[str, list[str]] = {}
        for host, fact in good.items():
            value = fact["python"] if key == "python" else fact["packages"].get(key)
            if value is not None:
                seen.setdefault(value, []).append(host)
        if len(seen) > 1:
            detail = "; ".join(f"{v} on {', '.join(hs)}" for v, hs in sorted(seen.items()))
            out.append(Check("*", f"version {key}", "warn", f"differs across hosts: {detail}"))
    return out


async def _facts(transport: Transport, python: str, timeout: float) -> dict | str:
    try:
        await transport.connect()
        done = await transport.run([python, "-c", FACTS, json.dumps(PACKAGES)], timeout=timeout)
    except DynamoLaunchError as e:
        return str(e)
    if done.code != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        return f"{python} failed (exit {done.code}): {err[-1] if err else 'no output'}"
    try:
        return json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"{python}: unexpected output"


async def run_preflight(inv: Inventory, plan: Plan, transports: dict[str, Transport], *, timeout: float = 60.0,
                        adopting: Iterable[str] = ()) -> list[Check]:  # fmt: skip
    """Ask every host in parallel, then judge; secrets are checked on the head."""
    pythons = {h.name: h.python for h in plan.hosts}
    results = await asyncio.gather(*(_facts(transports[h], pythons[h], timeout) for h in pythons))
    checks = judge(inv, plan, dict(zip(pythons, results)), adopting=adopting)
    for problem in secrets.check([(p.name, p.env) for p in plan.processes]):
        checks.append(Check(plan.head, "secrets", "fail", problem))
    return checks
