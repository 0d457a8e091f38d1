"""What a reload changes: two plans compared process by process (pure).

A process is *unchanged* when everything that defines it — argv, env (secret references,
not values), host and address, cwd, log file, probes, gates, restart policy, gang — is
equal; its generation does not count. A changed member makes its whole gang changed (a
multi-node replica restarts as a unit). Changed processes are grouped into *steps* that a
reload takes one at a time, so the service stays up (:func:`steps`): up to
``max_unavailable`` replicas of one inventory entry each, a gang counting as one replica.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .spec import Plan, ProcessSpec

__all__ = ["PlanDiff", "diff", "render_diff", "steps"]


@dataclass(frozen=True)
class PlanDiff:
    """The difference between the running plan and a new one."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    units: tuple[tuple[str, ...], ...]  # changed processes, in rollout steps (:func:`steps`), in start order
    why: dict[str, str]  # changed process → what changed, for people

    @property
    def empty(self) -> bool:
        """True when the reload would touch nothing."""
        return not (self.added or self.removed or self.changed)

    def as_dict(self) -> dict[str, Any]:
        """The diff as JSON-able data (``plan --diff --json``): restarted processes with their
        step (1-based, in the order a reload takes them) and what changed."""
        return {"added": list(self.added), "removed": list(self.removed),
                "changed": [{"name": n, "step": i, "why": self.why[n]}
                            for i, unit in enumerate(self.units, 1) for n in unit],
                "unchanged": list(self.unchanged), "steps": len(self.units)}


def _same(a: ProcessSpec, b: ProcessSpec) -> bool:
    return replace(a, generation=0) == replace(b, generation=0)


def _what(a: ProcessSpec, b: ProcessSpec) -> str:
    fields = [f for f in ("argv", "env", "host", "address", "cwd", "log_file", "readiness", "liveness", "depends_on",
                          "restart", "group", "leader", "startup_timeout", "start_secs", "gpus", "kind")
              if getattr(a, f) != getattr(b, f)]
    return ", ".join(fields) or "settings"


def steps(specs: list[ProcessSpec], *, all_at_once: bool = False) -> list[tuple[str, ...]]:
    """The steps of a rollout of ``specs`` (in start order): each inventory entry's replicas — a
    gang, or one process — ``max_unavailable`` at a time (every replica at once with
    ``all_at_once``), entries in the order of their first process."""
    replicas: dict[str, dict[str, list[str]]] = {}  # entry → replica → its processes
    width: dict[str, int] = {}
    gang_entry: dict[str, str] = {}  # a gang's members may come from several entries: its first one's
    for p in specs:
        entry = gang_entry.setdefault(p.group, p.origin or p.name) if p.group else p.origin or p.name
        replicas.setdefault(entry, {}).setdefault(f"gang {p.group}" if p.group else p.name, []).append(p.name)
        width[entry] = max(width.get(entry, 1), p.max_unavailable)
    out: list[tuple[str, ...]] = []
    for entry, units in replicas.items():
        batch = len(units) if all_at_once else width[entry]
        members = list(units.values())
        out += [tuple(n for unit in members[i:i + batch] for n in unit) for i in range(0, len(members), batch)]
    return out


def diff(old: Plan, new: Plan, *, all_at_once: bool = False) -> PlanDiff:
    """Compare ``old`` (running) with ``new`` (the re-read inventory); ``all_at_once``: a changed
    entry's replicas restart together instead of ``max_unavailable`` at a time."""
    old_p = {p.name: p for p in old.processes}
    new_p = {p.name: p for p in new.processes}
    why = {n: _what(old_p[n], new_p[n]) for n in new_p if n in old_p and not _same(old_p[n], new_p[n])}
    old_gangs = {g.name: set(g.members) for g in old.gangs}
    for g in new.gangs:  # one member changed, or the membership changed: the whole gang restarts
        touched = [m for m in g.members if m in why] or (
            [m for m in g.members if m in old_p] if old_gangs.get(g.name) != set(g.members) else [])
        for m in g.members:
            if touched and m in old_p and m not in why:
                why[m] = f"gang {g.name} restarts as a unit"
    # start order: a step restarts after what it depends on
    units = steps([p for p in new.processes if p.name in why], all_at_once=all_at_once)
    return PlanDiff(
        added=tuple(n for n in new_p if n not in old_p),
        removed=tuple(n for n in old_p if n not in new_p),
        changed=tuple(n for n in new_p if n in why),
        unchanged=tuple(n for n in new_p if n in old_p and n not in why),
        units=tuple(units),
        why=why,
    )


def render_diff(d: PlanDiff) -> str:
    """The diff as lines an operator reads before a reload."""
    if d.empty:
        return "no change: a reload would leave every process running untouched\n"
    lines = []
    lines += [f"+ {n} (new: started)" for n in d.added]
    lines += [f"- {n} (removed: stopped)" for n in d.removed]
    for i, unit in enumerate(d.units, 1):
        lines += [f"~ {n} (restarted, step {i}/{len(d.units)}: {d.why[n]})" for n in unit]
    lines.append(f"= {len(d.unchanged)} unchanged (keep running)")
    return "\n".join(lines) + "\n"
