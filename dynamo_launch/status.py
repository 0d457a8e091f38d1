"""The operator's view: a status snapshot (what the control socket returns) and its table.

Kept outside the daemon package so that ``dynamo-launch status`` imports nothing heavy (no
SSH library): it only reads the socket and renders.

:func:`snapshot` reads the daemon's machines; :func:`render` turns a snapshot (possibly
received as JSON) into the text table ``dynamo-launch status`` prints. Both are cheap: the
snapshot is answered from memory, never by asking the hosts.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .daemon.service import Daemon

__all__ = ["render", "snapshot"]

COLUMNS = ("HOST", "PROCESS", "ROLE", "STATE", "PID", "UPTIME", "RESTARTS", "GEN", "LAST EXIT", "HEALTH")


def snapshot(daemon: "Daemon") -> dict[str, Any]:
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
            "probe_seconds": None if p.probe_seconds is None else round(p.probe_seconds, 4),
        })
    gangs = [{"name": g, "state": m.state.name, "generation": m.generation, "restarts": m.restarts,
              "members": list(m.members), "reason": m.reason} for g, m in runner.gangs.items()]
    hosts = [{"name": n, "address": link.host.address, "up": link.up, "error": "" if link.up else link.last_error}
             for n, link in daemon.links.items()]
    return {"cluster": daemon.plan.cluster, "launch_id": daemon.launch_id, "daemon_pid": os.getpid(),
            "inventory": daemon.inventory_path, "started": daemon.started, "now": now_wall, "hosts": hosts,
            "processes": procs, "gangs": gangs, "timings": dict(daemon.timings)}


def _exit_text(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    if last.get("signal") is not None:
        return f"signal {last['signal']}"
    if last.get("code") is not None:
        return f"code {last['code']}"
    return "unknown"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m" if s < 172800 else f"{s // 86400}d{(s % 86400) // 3600}h"


def render(snap: dict[str, Any]) -> str:
    """The status table (and a header line per cluster, a line per unreachable host and gang)."""
    rows = [COLUMNS]
    for p in snap["processes"]:
        rows.append((p["host"], p["name"], p["role"], p["state"], str(p["pid"] or "-"), _duration(p["uptime"]),
                     str(p["restarts"]), str(p["generation"]), _exit_text(p["last_exit"]),
                     p["health"] or (p["reason"] if p["state"] in ("FAILED", "BACKOFF", "UNKNOWN") else "")))  # last: never cut
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    up = sum(1 for p in snap["processes"] if p["state"] in ("READY", "RUNNING"))
    lines = [f"cluster {snap['cluster']} — launch {snap['launch_id']}, daemon pid {snap['daemon_pid']}, "
             f"up {_duration(snap['now'] - snap['started'])}; {up}/{len(snap['processes'])} processes ready"]
    for h in snap["hosts"]:
        if not h["up"]:
            lines.append(f"host {h['name']} ({h['address']}) UNREACHABLE: {h['error']}")
    for g in snap["gangs"]:
        lines.append(f"gang {g['name']}: {g['state']}, generation {g['generation']}, {g['restarts']} restarts "
                     f"({', '.join(g['members'])})")
    lines.append("")
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines) + "\n"
