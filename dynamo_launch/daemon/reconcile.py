"""What to do with what the nodes report (pure): adopt, count as gone, or remove as a stray.

Used when the daemon starts (adoption after a restart) and when a lost host answers again.
A record is *ours* only when its process is alive (pid + start time + boot id verified by
the agent against ``/proc``) and carries our launch id; everything else is gone. A gang is
adopted whole or not at all: a gang with some members missing is restarted at a new
generation, and its surviving members are stopped first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..plan.spec import Plan

__all__ = ["Adoption", "pick_launch_id", "plan_adoption", "strays"]

Record = Mapping[str, Any]


@dataclass
class Adoption:
    """The result of :func:`plan_adoption`."""

    adopt: dict[str, Record] = field(default_factory=dict)  # process → its live record
    stop: list[tuple[str, Record]] = field(default_factory=list)  # (host, record): alive, not adoptable
    generation: dict[str, int] = field(default_factory=dict)  # process → generation of its next start
    gang_generation: dict[str, int] = field(default_factory=dict)  # gang → adopted or next generation
    adopted_gangs: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)  # adopted on trust: their host does not answer yet


def pick_launch_id(saved: str | None, records: Mapping[str, Iterable[Record]]) -> str | None:
    """The launch id to continue: the saved one, else the newest one still alive on the nodes."""
    if saved:
        return saved
    best: tuple[float, str] | None = None
    for recs in records.values():
        for r in recs:
            if r.get("alive") and r.get("launch_id"):
                key = (float(r.get("started_at") or 0), str(r["launch_id"]))
                best = key if best is None or key > best else best
    return best[1] if best else None


def plan_adoption(plan: Plan, records: Mapping[str, Iterable[Record]], launch_id: str,
                  unknown: Mapping[str, Iterable[Record]] | None = None) -> Adoption:
    """Decide, per planned process, whether its recorded copy is adopted; ``records`` by host.

    ``unknown``: for hosts that do not answer yet, the copies the state file says run there.
    They are taken as alive (adopted, and listed in ``Adoption.unknown``: UNKNOWN until their
    host answers and its records decide); never stopped from here, since nothing can reach them.
    """
    out = Adoption()
    unknown = unknown or {}
    records = {**records, **unknown}
    unreachable = set(unknown)
    planned = {p.name: p for p in plan.processes}
    live: dict[str, tuple[str, Record]] = {}
    last_gen: dict[str, int] = {}
    for host, recs in records.items():
        for r in recs:
            name = str(r.get("name", ""))
            spec = planned.get(name)
            if spec is None or spec.host != host or r.get("launch_id") != launch_id:
                if r.get("alive"):  # another launch's copy, or a process no longer planned here
                    out.stop.append((host, r))
                continue
            last_gen[name] = max(last_gen.get(name, 0), int(r.get("generation") or 0))
            if r.get("alive"):
                live[name] = (host, r)
    for gang in plan.gangs:
        members = [live.get(m) for m in gang.members]
        gens = {int(r["generation"]) for _, r in filter(None, members)}
        newest = max([last_gen.get(m, 0) for m in gang.members] + [0])
        if all(members) and len(gens) == 1:
            out.adopted_gangs.add(gang.name)
            out.gang_generation[gang.name] = gens.pop()
            continue
        out.gang_generation[gang.name] = newest + 1
        for m in gang.members:
            if m in live:
                host, r = live.pop(m)
                if host not in unreachable:  # one behind an unreachable host is a stray once it is back
                    out.stop.append((host, r))
    for name, (host, r) in live.items():
        out.adopt[name] = r
        if host in unreachable:
            out.unknown.add(name)
    for name, spec in planned.items():
        if name not in out.adopt:
            out.generation[name] = last_gen.get(name, spec.generation - 1) + 1
    return out


def strays(scanned: Iterable[Record], keep: Mapping[str, int]) -> list[Record]:
    """Scanned processes (``scan`` results) that are not of a kept process and generation.

    ``keep`` maps each process we hold on this host to its live generation; the children of
    a kept process carry the same name and generation and are kept with it. A process whose
    name or generation cannot be read is never a stray: Ray's ``ray::`` processes overwrite
    their environment with their title, leaving the launch id readable and the rest not, and
    killing what cannot be attributed could kill a worker's helpers. (A gang restart already
    kills each member's whole process group.)
    """
    out = []
    for s in scanned:
        name, gen = s.get("name"), s.get("generation")
        try:
            gen = int(gen)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if not name:
            continue
        if name not in keep or keep[name] != gen:
            out.append(s)
    return out
