"""Status snapshots as the daemon's ``snapshot()`` returns them, for the renderers' tests (the status
table, the metrics families): one process, one whole snapshot, each with keyword overrides."""

from __future__ import annotations


def proc(name: str, state: str, **kw) -> dict:
    """One process entry of a snapshot (node1, no exit, no probe yet) with ``kw`` replacing keys."""
    p = {"host": "node1", "name": name, "role": "worker", "group": None, "state": state, "reason": "", "pid": None,
         "uptime": None, "restarts": 0, "generation": 1, "last_exit": None, "health": "", "probe_seconds": None,
         "tree_procs": None, "memory_bytes": None, "last_lines": None, "log_file": f"/var/lib/dl/logs/{name}.log"}
    p.update(kw)
    return p


def snap(*procs: dict, **kw) -> dict:
    """A snapshot of cluster ``c`` holding ``procs`` (no hosts, gangs or timings unless ``kw`` says)."""
    s = {"cluster": "c", "launch_id": "abc", "daemon_pid": 1, "inventory": "i.toml", "started": 0.0, "now": 100.0,
         "hosts": [], "processes": list(procs), "gangs": [], "timings": {}, "state_unsaved": None}
    s.update(kw)
    return s
