"""The operator's view: the text table of a status snapshot.

:func:`render` turns a snapshot — the JSON the control socket answers or the etcd mirror holds,
made by :func:`dynamo_launch.daemon.snapshot.snapshot` — into what ``dynamo-launch status``
prints. It imports nothing of the daemon (no SSH library), so ``status`` starts fast.

A snapshot read back from etcd may have been forged by anyone who can write there: every field is
printed through :func:`dynamo_launch.printable.clean`, so no value can move the cursor, clear
the screen or start a line of its own.
"""

from __future__ import annotations

from typing import Any

from .printable import clean

__all__ = ["COLUMNS", "render"]

COLUMNS = ("HOST", "PROCESS", "ROLE", "STATE", "PID", "UPTIME", "PROCS", "MEM", "RESTARTS", "GEN", "LAST EXIT",
           "HEALTH")


def _exit_text(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    if last.get("signal") is not None:
        return f"signal {last['signal']}"
    if last.get("code") is not None:
        return f"code {last['code']}"
    return "unknown"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}" if n < 10 * size else f"{n // size}{unit}"
    return f"{n}B"


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
                     str(p.get("tree_procs") or "-"), _bytes(p.get("memory_bytes")),
                     str(p["restarts"]), str(p["generation"]), _exit_text(p["last_exit"]),
                     _health(p)))  # last: never cut
    rows = [tuple(clean(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    up = sum(1 for p in snap["processes"] if p["state"] in ("READY", "RUNNING"))
    lines = [f"cluster {snap['cluster']} — launch {snap['launch_id']}, daemon pid {snap['daemon_pid']}, "
             f"up {_duration(snap['now'] - snap['started'])}; {up}/{len(snap['processes'])} processes ready"]
    unsaved = snap.get("state_unsaved")
    if unsaved:  # a daemon restart now would not know the latest copies: the operator must hear it
        lines.append(f"STATE NOT SAVED for {_duration(snap['now'] - unsaved['since'])}: {unsaved['error']} (retrying)")
    for h in snap["hosts"]:
        if not h["up"]:
            lines.append(f"host {h['name']} ({h['address']}) UNREACHABLE: {h['error']}")
    for g in snap["gangs"]:
        lines.append(f"gang {g['name']}: {g['state']}, generation {g['generation']}, {g['restarts']} restarts "
                     f"({', '.join(g['members'])})")
    lines = [clean(line) for line in lines]
    lines.append("")
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for p in snap["processes"]:
        if p.get("last_lines"):
            lines += ["", clean(f"{p['name']} ({p['state']}, last exit {_exit_text(p['last_exit'])}): "
                                f"the end of {p.get('log_file') or 'its log'}:")]
            # a process's own words: shown, never obeyed (split on \n only, every line cleaned)
            lines += [clean(f"  {x}") for x in p["last_lines"].rstrip("\n").split("\n")]
            if p["state"] == "FAILED":  # no more restarts by itself: the operator's move
                lines.append(clean(f"  (fix the cause, then: dynamo-launch restart {p['name']})"))
    return "\n".join(lines) + "\n"


def _health(p: dict[str, Any]) -> str:
    """The HEALTH column: the probe's last word, after why it is down when it is."""
    if p["state"] in ("FAILED", "BACKOFF", "UNKNOWN") and p["reason"]:
        return p["reason"] if p["health"] in ("", p["reason"]) else f"{p['reason']}; {p['health']}"
    routing = p.get("routing")  # a Dynamo worker: does the frontend route to it (older daemons: absent)
    if routing and p["state"] in ("READY", "RUNNING") and routing not in (p["health"] or ""):
        return f"{p['health']}; {routing}" if p["health"] else routing
    return p["health"] or ""
