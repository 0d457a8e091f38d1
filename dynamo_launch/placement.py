"""Where each worker replica runs and which GPUs it gets (pure).

A replica is one model instance. It fits one host when TP×PP×DP ≤ GPUs per
host; otherwise it is a *gang* spanning ``TP×PP×DP / GPUs-per-host`` hosts,
each contributing all its GPUs. Replicas of every group share a per-host pool
of device indices, so two groups on one host get disjoint
``CUDA_VISIBLE_DEVICES`` slices. Problems are returned, never raised, so that
validation can report them all with their lines.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Backend, Inventory, WorkerGroup
from .tomlpos import KeyPath

__all__ = ["Node", "Placement", "Replica", "place"]


@dataclass(frozen=True)
class Node:
    """One host's share of a replica."""

    host: str
    rank: int
    gpus: tuple[int, ...]
    all_gpus: bool


@dataclass(frozen=True)
class Replica:
    """One model instance of a worker group."""

    group: WorkerGroup
    index: int
    nodes: tuple[Node, ...]
    gpus_per_node: int

    @property
    def name(self) -> str:
        """``<group>-<index>``: the gang name and the leader's process name."""
        return f"{self.group.name}-{self.index}"

    @property
    def multi_node(self) -> bool:
        """True when the replica spans hosts (a gang)."""
        return len(self.nodes) > 1

    @property
    def dp_local(self) -> int:
        """Data-parallel ranks per host."""
        return max(1, self.gpus_per_node // self.group.world_size) if self.multi_node else self.group.data_parallel_size


@dataclass(frozen=True)
class Placement:
    """Replicas per worker group, in inventory order, plus the problems found."""

    replicas: dict[str, tuple[Replica, ...]]
    problems: tuple[tuple[KeyPath, str], ...]


def place(inv: Inventory) -> Placement:
    """Place every worker group of ``inv`` onto its hosts."""
    gpus = {h.name: h.gpus for h in inv.hosts}
    free = {h.name: list(range(h.gpus)) for h in inv.hosts}
    owners: dict[str, list[str]] = {h.name: [] for h in inv.hosts}
    problems: list[tuple[KeyPath, str]] = []
    out: dict[str, tuple[Replica, ...]] = {}
    for i, group in enumerate(inv.workers):
        path: KeyPath = ("workers", i)
        if not group.hosts or any(h not in gpus for h in group.hosts):
            out[group.name] = ()
            continue  # reported by the reference checks
        replicas = _place_group(group, path, gpus, free, owners, problems)
        out[group.name] = tuple(replicas)
    return Placement(out, tuple(problems))


def _place_group(
    group: WorkerGroup,
    path: KeyPath,
    gpus: dict[str, int],
    free: dict[str, list[int]],
    owners: dict[str, list[str]],
    problems: list[tuple[KeyPath, str]],
) -> list[Replica]:
    hosts = group.hosts
    if group.backend is Backend.MOCKER:
        count = group.replicas or len(hosts)
        return [Replica(group, r, (Node(hosts[r % len(hosts)], 0, (), True),), 0) for r in range(count)]

    world, dp = group.world_size, group.data_parallel_size
    total = world * dp
    sizes = sorted({gpus[h] for h in hosts})
    label = _label(group)
    if sizes[0] == 0:
        empty = [h for h in hosts if gpus[h] == 0]
        problems.append((path + ("hosts",), f"{group.backend.value} needs GPUs but {_names(empty)} {'has' if len(empty) == 1 else 'have'} gpus = 0"))
        return []
    if total <= sizes[0]:
        return _place_single(group, path, total, gpus, free, owners, problems)

    # Multi-node: a gang of equal hosts each giving all its GPUs.
    if len(sizes) > 1:
        detail = ", ".join(f"{h}={gpus[h]}" for h in hosts)
        problems.append((path + ("hosts",), f"{label} spans hosts, which must have equal GPU counts; got {detail}"))
        return []
    per_node = sizes[0]
    if dp > 1 and world > per_node:
        problems.append((path + ("data_parallel_size",), f"TP×PP={world} is larger than one host ({per_node} GPUs); data parallelism needs each rank on one host"))
        return []
    if dp > 1 and per_node % world:
        problems.append((path + ("tensor_parallel_size",), f"TP×PP={world} must divide the {per_node} GPUs per host for data parallelism"))
        return []
    if total % per_node:
        problems.append((path + ("hosts",), f"{label} = {total} GPUs is not a multiple of {per_node} GPUs per host"))
        return []
    nodes = total // per_node
    count = group.replicas or max(1, len(hosts) // nodes)
    if len(hosts) < nodes * count:
        want = f"{nodes} hosts with {per_node} GPUs" + (f" per replica × {count} replicas" if count > 1 else "")
        problems.append((path + ("hosts",), f"{label} needs {want}, got {len(hosts)}"))
        return []
    if len(hosts) > nodes * count:
        problems.append((path + ("hosts",), f"{label} uses {nodes * count} of the {len(hosts)} hosts listed ({nodes} per replica × {count}); list exactly the hosts it runs on"))
        return []
    replicas = []
    for r in range(count):
        members = hosts[r * nodes : (r + 1) * nodes]
        taken = [h for h in members if len(free[h]) < per_node]
        if taken:
            h = taken[0]
            problems.append((path + ("hosts",), f"{h} has {gpus[h]} GPUs, already given to {_names(owners[h])}; {group.name} needs all of them"))
            return replicas
        for h in members:
            free[h].clear()
            owners[h].append(group.name)
        replicas.append(
            Replica(group, r, tuple(Node(h, k, tuple(range(per_node)), True) for k, h in enumerate(members)), per_node)
        )
    return replicas


def _place_single(group, path, total, gpus, free, owners, problems) -> list[Replica]:  # type: ignore[no-untyped-def]
    hosts = group.hosts
    capacity = sum(len(free[h]) // total for h in hosts)
    count = group.replicas or len(hosts)
    if count > capacity:
        detail = ", ".join(f"{h} has {len(free[h])} free" for h in hosts)
        problems.append((path + ("replicas",) if group.replicas else path + ("hosts",), f"{count} replicas × {total} GPUs do not fit: {detail} (room for {capacity})"))
        return []
    replicas = []
    turn = 0
    for r in range(count):
        # Spread over hosts first (failure domains), skipping hosts already full.
        while len(free[hosts[turn % len(hosts)]]) < total:
            turn += 1
        h = hosts[turn % len(hosts)]
        turn += 1
        devices = tuple(free[h][:total])
        del free[h][:total]
        owners[h].append(group.name)
        replicas.append(Replica(group, r, (Node(h, 0, devices, len(devices) == gpus[h]),), gpus[h]))
    return replicas


def _label(group: WorkerGroup) -> str:
    parts = [f"TP={group.tensor_parallel_size}"]
    if group.pipeline_parallel_size > 1:
        parts.append(f"PP={group.pipeline_parallel_size}")
    if group.data_parallel_size > 1:
        parts.append(f"DP={group.data_parallel_size}")
    return "×".join(parts)


def _names(names: list[str]) -> str:
    return ", ".join(dict.fromkeys(names)) or "nobody"
