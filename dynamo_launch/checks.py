"""Cross-field validation of an inventory whose every key is well-typed (pure).

Host references, unique names and addresses, GPU arithmetic (through
:mod:`dynamo_launch.placement`), combinations that cannot work, and port
collisions per host (from the plan itself, so the ports checked are exactly
the ports launched).
"""

from __future__ import annotations

from .model import Backend, Executor, Inventory, Role
from .placement import place
from .reader import Reader
from .tomlpos import KeyPath, format_path

__all__ = ["OWNED_FLAGS", "RESERVED_NAMES", "validate"]

RESERVED_NAMES = frozenset({"nats", "etcd", "frontend", "ray-head"})
"""Process names the planner uses itself."""

OWNED_FLAGS = {
    "--tensor-parallel-size": "tensor_parallel_size",
    "--tp": "tensor_parallel_size",
    "--tp-size": "tensor_parallel_size",
    "--pipeline-parallel-size": "pipeline_parallel_size",
    "--pp": "pipeline_parallel_size",
    "--pp-size": "pipeline_parallel_size",
    "--data-parallel-size": "data_parallel_size",
    "--dp": "data_parallel_size",
    "--dp-size": "data_parallel_size",
    "--data-parallel-size-local": "data_parallel_size",
    "--data-parallel-address": "hosts",
    "--data-parallel-rpc-port": "dp_rpc_port",
    "--data-parallel-start-rank": "hosts",
    "--nnodes": "hosts",
    "--node-rank": "hosts",
    "--master-addr": "hosts",
    "--master-port": "master_port",
    "--dist-init-addr": "hosts and master_port",
    "--distributed-executor-backend": "executor",
    "--model": "model",
    "--model-path": "model",
    "--is-prefill-worker": "role",
    "--is-decode-worker": "role",
    "--disaggregation-mode": "role",
}
"""Flags the planner renders from inventory keys; giving them in extra_args is an error."""


def validate(inv: Inventory, r: Reader) -> None:
    """Record every cross-field problem of ``inv`` on ``r``."""
    hosts = _check_hosts(inv, r)
    _check_names(inv, r)
    _check_refs(inv, r, hosts)
    _check_workers(inv, r)
    if r.problems:
        return
    placement = place(inv)
    for path, message in placement.problems:
        r.problem(path, message)
    if r.problems:
        return
    _check_ports(inv, r)


def _check_hosts(inv: Inventory, r: Reader) -> set[str]:
    names: dict[str, int] = {}
    addresses: dict[str, int] = {}
    for i, h in enumerate(inv.hosts):
        if h.name in names:
            r.problem(("hosts", i, "name"), f"duplicate host name {h.name!r} (also hosts[{names[h.name]}])")
        names.setdefault(h.name, i)
        if h.address in addresses:
            r.problem(("hosts", i, "address"), f"duplicate address {h.address} (also hosts[{addresses[h.address]}])")
        addresses.setdefault(h.address, i)
        if h.local and h.name != inv.cluster.head:
            r.problem(("hosts", i, "local"), f"only the head ({inv.cluster.head}) can be local: the daemon runs there")
    if inv.cluster.head and inv.cluster.head not in names:
        r.problem(("cluster", "head"), f"unknown host {inv.cluster.head!r}{_known(names)}")
    return set(names)


def _check_names(inv: Inventory, r: Reader) -> None:
    seen: dict[str, str] = {}
    items: list[tuple[KeyPath, str]] = [(("workers", i, "name"), w.name) for i, w in enumerate(inv.workers)]
    items += [(("processes", i, "name"), p.name) for i, p in enumerate(inv.processes)]
    for path, name in items:
        if name in RESERVED_NAMES or name.startswith("ray-"):
            r.problem(path, f"{name!r} is reserved for the launcher's own processes")
        elif name in seen:
            r.problem(path, f"duplicate name {name!r} (also {seen[name]})")
        seen.setdefault(name, format_path(path[:2]))


def _check_refs(inv: Inventory, r: Reader, hosts: set[str]) -> None:
    def ref(path: KeyPath, name: str) -> None:
        if name and name not in hosts:
            r.problem(path, f"unknown host {name!r}{_known(hosts)}")

    def refs(path: KeyPath, names: tuple[str, ...]) -> None:
        seen: set[str] = set()
        for j, name in enumerate(names):
            ref(path + (j,), name)
            if name in seen:
                r.problem(path + (j,), f"host {name!r} listed twice")
            seen.add(name)

    if inv.frontend is not None:
        ref(("frontend", "host"), inv.frontend.host)
    for i, w in enumerate(inv.workers):
        refs(("workers", i, "hosts"), w.hosts)
        if not w.hosts:
            r.problem(("workers", i, "hosts"), "must name at least one host")
    if inv.ray is not None:
        ref(("ray", "head"), inv.ray.head)
        refs(("ray", "workers"), inv.ray.workers)
        if inv.ray.head in inv.ray.workers:
            r.problem(("ray", "workers"), f"{inv.ray.head} is the Ray head; list only the other hosts")
    targets = {"nats", "etcd"} | {w.name for w in inv.workers} | {p.name for p in inv.processes}
    if inv.frontend is not None:
        targets.add("frontend")
    if inv.ray is not None:
        targets.add("ray")
    for i, p in enumerate(inv.processes):
        if len(p.hosts) == 1:
            ref(("processes", i, "host"), p.hosts[0])
        else:
            refs(("processes", i, "hosts"), p.hosts)
        for j, dep in enumerate(p.depends_on):
            if dep == p.name:
                r.problem(("processes", i, "depends_on", j), "a process cannot depend on itself")
            elif dep not in targets:
                r.problem(("processes", i, "depends_on", j), f"unknown process or group {dep!r}; known: {', '.join(sorted(targets))}")
        if p.gang and p.gang in targets:
            r.problem(("processes", i, "gang"), f"gang name {p.gang!r} is already a process or group name")
    _check_cycles(inv, r)


def _check_cycles(inv: Inventory, r: Reader) -> None:
    """Only generic processes choose their dependencies, so only they can form a cycle."""
    deps = {p.name: [d for d in p.depends_on if d != p.name] for p in inv.processes}
    index = {p.name: i for i, p in enumerate(inv.processes)}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycle = trail[trail.index(name) :] + [name]
            r.problem(("processes", index[cycle[0]], "depends_on"), f"dependency cycle: {' → '.join(cycle)}")
            return
        if name in done or name not in deps:
            return
        for dep in deps[name]:
            visit(dep, trail + [name])
        done.add(name)

    for p in inv.processes:
        visit(p.name, [])


def _check_workers(inv: Inventory, r: Reader) -> None:
    roles = {w.role for w in inv.workers}
    for i, w in enumerate(inv.workers):
        path: KeyPath = ("workers", i)
        for j, arg in enumerate(w.extra_args):
            flag = arg.split("=", 1)[0]
            if flag == "--headless":
                if w.executor is Executor.RAY:
                    r.problem(path + ("extra_args", j), "--headless cannot work with executor = 'ray': with Ray only the leader runs vLLM and the other hosts run `ray start --block`")
                else:
                    r.problem(path + ("extra_args", j), "--headless is added by the launcher on the non-leader hosts of a multi-node group; remove it")
            elif flag in OWNED_FLAGS:
                r.problem(path + ("extra_args", j), f"{flag} is rendered by the launcher; set {OWNED_FLAGS[flag]} instead")
        if w.executor is Executor.RAY and w.backend is not Backend.VLLM:
            r.problem(path + ("executor",), f"executor = 'ray' is a vLLM option; {w.backend.value} spans hosts its own way")
        if w.backend is Backend.MOCKER and w.world_size > 1:
            r.problem(path + ("tensor_parallel_size",), "the mocker is a CPU engine: tensor/pipeline parallel sizes must be 1")
        if w.role is Role.PREFILL and Role.DECODE not in roles:
            r.problem(path + ("role",), "a prefill group needs a decode group to hand its KV cache to (role = 'decode')")
        if w.role is not Role.AGGREGATED and w.backend is Backend.TRTLLM and w.data_parallel_size > 1:
            r.problem(path + ("data_parallel_size",), "data_parallel_size is not supported for trtllm; use replicas")


def _check_ports(inv: Inventory, r: Reader) -> None:
    from .plan.build import build  # late import: the planner imports this module's constants

    plan = build(inv)
    used: dict[tuple[str, int], tuple[str, KeyPath]] = {}
    for proc in plan.processes:
        for port, origin in proc.ports:
            key = (proc.host, port)
            if key in used and used[key][0] != proc.name:
                other, other_origin = used[key]
                r.problem(origin, f"port {port} on {proc.host} is also used by {other} ({format_path(other_origin)})")
            used.setdefault(key, (proc.name, origin))


def _known(names: set[str] | dict[str, int]) -> str:
    return f"; hosts are {', '.join(sorted(names))}" if names else "; no hosts are defined"
