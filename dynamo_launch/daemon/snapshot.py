"""The daemon's state as plain JSON-able data: what ``status`` shows, the etcd mirror holds and
the metrics endpoint counts. Answered from memory, never by asking the hosts."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any, Protocol

from ..plan.spec import Plan
from .links import HostLink
from .runner import Runner

__all__ = ["Supervised", "snapshot"]


class Supervised(Protocol):
    """What a snapshot is taken of (the daemon)."""

    plan: Plan
    runner: Runner | None
    links: Mapping[str, HostLink]
    launch_id: str
    inventory_path: str
    started: float
    timings: Mapping[str, float]
    save_error: Mapping[str, Any] | None

def snapshot(daemon: Supervised) -> dict[str, Any]:
    """Everything ``status`` shows, as plain JSON-able data."""
    runner = daemon.runner
    assert runner is not None
    now_wall = time.time()
    procs = []
    for name, p in runner.procs.items():
        m = p.machine
        running = m.pid is not None
        last = m.last_exit
        procs.append({
            "host": p.spec.host,
            "name": name,
            "role": p.spec.kind,
            "group": p.spec.group,
            "state": m.state.name,
            "reason": m.reason,
            "pid": m.pid,
            "uptime": round(now_wall - p.started_wall, 1) if running and p.started_wall else None,
            "restarts": m.restarts,
            "generation": m.generation,
            "last_exit": None if last is None else {"code": last.code, "signal": last.signal},
            "health": p.health,
            # a Dynamo worker's discovery instance (its etcd lease, hex) and whether the frontend routes to it
            "instance": None if p.instance is None else f"{p.instance:x}",
            "routing": p.routing or None,
            "probe_seconds": None if p.probe_seconds is None else round(p.probe_seconds, 4),
            # the copy's whole tree as its node last counted it (every TREE_INTERVAL): processes
            # and bytes (cgroup memory.current where the node has it, else summed RSS)
            "tree_procs": (p.tree or {}).get("procs") if running else None,
            "memory_bytes": _memory(p.tree) if running else None,
            # why it keeps dying, in its own words (as `systemctl status` shows a failed unit's log)
            "last_lines": p.last_lines or None if m.state.name in ("BACKOFF", "FAILED") else None,
            "log_file": p.spec.log_file,
        })
    gangs = [{"name": g, "state": m.state.name, "generation": m.generation, "restarts": m.restarts,
              "members": list(m.members), "reason": m.reason} for g, m in runner.gangs.items()]
    hosts = [{"name": n, "address": link.host.address, "up": link.up, "error": "" if link.up else link.last_error}
             for n, link in daemon.links.items()]
    return {"cluster": daemon.plan.cluster, "launch_id": daemon.launch_id, "daemon_pid": os.getpid(),
            "inventory": daemon.inventory_path, "started": daemon.started, "now": now_wall, "hosts": hosts,
            "processes": procs, "gangs": gangs, "timings": dict(daemon.timings),
            # None while the state file is written; else why not, and since when (wall clock)
            "state_unsaved": dict(daemon.save_error) if daemon.save_error else None}


def _memory(tree: dict[str, Any] | None) -> int | None:
    if not tree:
        return None
    value = tree.get("memory_bytes") if tree.get("memory_bytes") is not None else tree.get("rss_bytes")
    return None if value is None else int(value)
