"""Inventory → Plan (pure, deterministic).

Processes are emitted in declaration order — NATS, etcd, the bare Ray
cluster, the frontend, each worker group's replicas, generic processes — and
then ordered so that every process comes after what it waits for.
"""

from __future__ import annotations

from collections import defaultdict

from ..errors import PlanError
from ..model import Backend, Inventory
from ..placement import Placement, place
from . import generic, infra, mocker, sglang, trtllm, vllm
from .context import Context
from .ray import ray_processes
from .spec import Plan, PlanHost, ProcessSpec, gangs_of

__all__ = ["build"]

_BACKENDS = {Backend.VLLM: vllm, Backend.SGLANG: sglang, Backend.TRTLLM: trtllm, Backend.MOCKER: mocker}


def build(inv: Inventory, placement: Placement | None = None) -> Plan:
    """The launch plan of a validated inventory (``placement``: its placement, when the caller
    has it already)."""
    ctx = Context(inv)
    procs: list[ProcessSpec] = []
    targets: dict[str, list[str]] = defaultdict(list)

    def add(name: str, specs: list[ProcessSpec]) -> None:
        procs.extend(specs)
        targets[name].extend(s.name for s in specs)

    if inv.nats.external is None:
        add("nats", [infra.nats(ctx)])
    if inv.etcd.external is None:
        add("etcd", [infra.etcd(ctx)])
    if inv.ray is not None:
        r = inv.ray
        start = [f"--num-cpus={r.num_cpus}"] if r.num_cpus is not None else []
        start += [f"--num-gpus={r.num_gpus}"] if r.num_gpus is not None else []
        start += [f"--object-store-memory={r.object_store_memory}"] if r.object_store_memory is not None else []
        start += list(r.extra_args)
        add("ray", ray_processes(ctx, prefix="ray", head=r.head, workers=r.workers, port=r.port, origin=("ray",),
                                 restart=r.restart, health=r.health, start_args=start, head_args=r.head_args,
                                 worker_args=r.worker_args, user_env=r.env))  # fmt: skip
    placement = place(inv) if placement is None else placement
    if placement.problems:
        raise PlanError("; ".join(message for _, message in placement.problems))
    if inv.frontend is not None:
        add("frontend", [infra.frontend(ctx, replicas=sum(len(placement.replicas[g.name]) for g in inv.workers))])
    for i, group in enumerate(inv.workers):
        for replica in placement.replicas[group.name]:
            add(group.name, _BACKENDS[group.backend].processes(ctx, replica, ("workers", i)))
    for i, proc in enumerate(inv.processes):
        add(proc.name, generic.processes(ctx, i, proc, targets))

    ordered = _start_order(procs)
    hosts = tuple(PlanHost(h.name, h.address, h.local, h.ssh, h.python or inv.cluster.python) for h in inv.hosts)
    return Plan(
        cluster=inv.cluster.name,
        head=inv.cluster.head,
        state_dir=inv.cluster.state_dir,
        nats_url=ctx.nats_url,
        etcd_url=ctx.etcd_url,
        hosts=hosts,
        processes=tuple(ordered),
        gangs=gangs_of(ordered),
    )


def _start_order(procs: list[ProcessSpec]) -> list[ProcessSpec]:
    """Stable topological order: declaration order, except a process follows what it waits for."""
    index = {p.name: i for i, p in enumerate(procs)}
    if len(index) != len(procs):
        dupes = sorted({p.name for p in procs if sum(q.name == p.name for q in procs) > 1})
        raise PlanError(f"two processes would be called {', '.join(dupes)}")
    placed: set[str] = set()
    out: list[ProcessSpec] = []
    pending = list(procs)
    while pending:
        for p in pending:
            waits = {g.process for g in p.depends_on if g.process}
            if waits <= placed:
                out.append(p)
                placed.add(p.name)
                pending.remove(p)
                break
        else:
            missing = {g.process for p in pending for g in p.depends_on if g.process and g.process not in index}
            raise PlanError(
                f"unknown dependencies {', '.join(sorted(missing))}" if missing
                else f"dependency cycle among {', '.join(p.name for p in pending)}"
            )  # fmt: skip
    return out
