"""What only a plan can show: the process names it derives and the ports each host's
processes take (pure). The ports checked are exactly the ports launched.

:func:`build_checked` runs after :func:`dynamo_launch.rules.validate` found nothing wrong:
it checks the derived names (two would otherwise make the planner fail), builds the plan, and
checks the ports on it; every problem is recorded, located, on the reader.
"""

from __future__ import annotations

from ..addresses import split_hostport
from ..errors import PlanError
from ..model import Backend, Executor, Inventory
from ..placement import Placement, place
from ..reader import Reader
from ..tomlpos import KeyPath, format_path
from .build import build
from .spec import Plan
from .workers import rank_name

__all__ = ["build_checked"]


def build_checked(inv: Inventory, r: Reader) -> Plan | None:
    """The plan of ``inv``, or None with the reasons recorded on ``r``."""
    placement = place(inv)
    _check_process_names(inv, r, placement)
    if r.problems:
        return None
    try:
        plan = build(inv, placement)
    except PlanError as e:  # a rule the checks missed: still one located line, never a traceback
        r.problem((), f"cannot plan this inventory: {e}")
        return None
    _check_ports(inv, plan, r)
    return None if r.problems else plan

def _check_process_names(inv: Inventory, r: Reader, placement: Placement) -> None:
    """The process names the planner derives (replicas, ranks, Ray nodes, one per host) must not collide."""
    owners: dict[str, str] = {}

    def claim(names: list[str], owner: str, path: KeyPath) -> None:
        for name in names:
            if name in owners and owners[name] != owner:
                r.problem(path, f"starts a process called {name!r}, as {owners[name]} does; choose another name")
            owners.setdefault(name, owner)

    if inv.ray is not None:
        claim(["ray-head", *(f"ray-{k}" for k in range(1, len(inv.ray.workers) + 1))], "ray", ("ray",))
    for i, w in enumerate(inv.workers):
        for replica in placement.replicas.get(w.name, ()):
            names = [replica.name]
            if replica.multi_node and w.backend is Backend.VLLM and w.executor is Executor.RAY:
                names += [f"{replica.name}-ray-head", *(f"{replica.name}-ray-{k}" for k in range(1, len(replica.nodes)))]
            elif replica.multi_node and w.backend in (Backend.VLLM, Backend.SGLANG):
                names += [rank_name(replica, node) for node in replica.nodes[1:]]
            claim(names, f"workers[{i}]", ("workers", i, "name"))
    for i, p in enumerate(inv.processes):
        claim([p.name] if len(p.hosts) == 1 else [f"{p.name}-{h}" for h in p.hosts], f"processes[{i}]", ("processes", i, "name"))
    for i, p in enumerate(inv.processes):
        if p.gang and p.gang in owners:
            r.problem(("processes", i, "gang"), f"gang name {p.gang!r} is already the name of a process of {owners[p.gang]}")


def _check_ports(inv: Inventory, plan: Plan, r: Reader) -> None:
    used: dict[tuple[str, int], tuple[str, KeyPath]] = {}
    for proc in plan.processes:
        for port, origin in proc.ports:
            if origin == ("cluster", "system_port") and port > 32767:  # Dynamo parses it as a signed 16-bit number
                r.problem(origin, f"{proc.name} on {proc.host} would get system port {port}: Dynamo accepts at most "
                                  "32767; lower cluster.system_port")
            key = (proc.host, port)
            if key in used and used[key][0] != proc.name:
                other, other_origin = used[key]
                r.problem(origin, f"port {port} on {proc.host} is also used by {other} ({format_path(other_origin)})")
            used.setdefault(key, (proc.name, origin))
    _check_metrics_port(inv, r, used)


def _check_metrics_port(inv: Inventory, r: Reader, used: dict[tuple[str, int], tuple[str, KeyPath]]) -> None:
    """The daemon's metrics endpoint lives on the head: its port must not be one the head's processes take."""
    bound = split_hostport(inv.cluster.metrics) if inv.cluster.metrics else None
    if bound is not None and (inv.cluster.head, bound[1]) in used:
        other, origin = used[(inv.cluster.head, bound[1])]
        r.problem(("cluster", "metrics"),
                  f"port {bound[1]} on {inv.cluster.head} is also used by {other} ({format_path(origin)})")
