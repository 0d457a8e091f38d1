"""Cross-field rules of an inventory whose every key is well-typed (pure).

Host references, unique names and addresses, GPU arithmetic (through
:mod:`dynamo_launch.placement`) and combinations that cannot work. What only the plan can
tell (the process names it derives, the ports each host's processes take) is checked on the
plan itself, once it is built: :mod:`dynamo_launch.plan.conflicts`.
"""

from __future__ import annotations

from .model import Backend, Executor, Health, Inventory, Role
from .placement import place
from .reader import Reader
from .secret_shapes import argv_secrets
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
    _check_frontend(inv, r)
    _check_etcd_tls(inv, r)
    _check_health(inv, r)
    _check_argv_secrets(inv, r)
    if any(_under(p.key, "hosts", "workers") for p in r.problems):
        return  # placement needs well-formed hosts and groups; other problems do not hide its findings
    for path, message in place(inv).problems:
        r.problem(path, message)


def _check_hosts(inv: Inventory, r: Reader) -> set[str]:
    names: dict[str, int] = {}
    addresses: dict[str, int] = {}
    for i, h in enumerate(inv.hosts):  # an empty name or address is missing: reported as such
        if h.name and h.name in names:
            r.problem(("hosts", i, "name"), f"duplicate host name {h.name!r} (also hosts[{names[h.name]}])")
        if h.name:
            names.setdefault(h.name, i)
        if h.address and h.address in addresses:
            r.problem(("hosts", i, "address"), f"duplicate address {_show(h.address)} (also hosts[{addresses[h.address]}])")
        if h.address:
            addresses.setdefault(h.address, i)
        if h.local and inv.cluster.head and h.name != inv.cluster.head:
            r.problem(("hosts", i, "local"), f"only the head ({_show(inv.cluster.head)}) can be local: the daemon runs there")
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
    def ref(path: KeyPath, name: str, *, required: bool = False) -> None:
        if not name:  # a missing required key reads as "": already reported by the loader
            if required:
                r.problem(path, "must not be empty")
        elif name not in hosts:
            r.problem(path, f"unknown host {name!r}{_known(hosts)}")

    def refs(path: KeyPath, names: tuple[str, ...]) -> None:
        seen: set[str] = set()
        for j, name in enumerate(names):
            ref(path + (j,), name, required=True)
            if name in seen:
                r.problem(path + (j,), f"host {name!r} listed twice")
            seen.add(name)

    if inv.frontend is not None and inv.frontend.host != inv.cluster.head:  # the head is checked above
        ref(("frontend", "host"), inv.frontend.host, required=True)
    for i, w in enumerate(inv.workers):
        refs(("workers", i, "hosts"), w.hosts)  # an empty list is reported by the loader
    if inv.ray is not None:
        ref(("ray", "head"), inv.ray.head)
        refs(("ray", "workers"), inv.ray.workers)
        if inv.ray.head in inv.ray.workers:
            r.problem(("ray", "workers"), f"{_show(inv.ray.head)} is the Ray head; list only the other hosts")
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
                r.problem(("processes", i, "depends_on", j), f"unknown process or group {dep!r}; known: {_list(targets)}")
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
            r.problem(("processes", index[cycle[0]], "depends_on"), f"dependency cycle: {' → '.join(map(_show, cycle))}")
            return
        if name in done or name not in deps:
            return
        for dep in deps[name]:
            visit(dep, trail + [name])
        done.add(name)

    for p in inv.processes:
        visit(p.name, [])


FRONTEND_FLAGS = {"--http-host": "frontend.bind", "--http-port": "frontend.http_port",
                  "--router-mode": "frontend.router_mode", "--migration-limit": "frontend.migration_limit"}
"""The frontend's flags the launcher renders (and probes, and checks for collisions)."""


def _check_etcd_tls(inv: Inventory, r: Reader) -> None:
    # Measured with ai-dynamo 1.6.1 (docs/security.md): its etcd client applies ETCD_AUTH_CA only
    # when no user and password are set, and then as PEM text; with a password it trusts the public
    # roots built into it alone. A private CA would leave every Dynamo process retrying forever.
    if not (inv.frontend is not None or inv.workers):
        return
    if inv.etcd.tls:
        r.problem(("etcd", "tls"), "Dynamo 1.6.1's etcd client cannot trust the cluster's own CA while it logs in "
                                   "with a password, so its processes could not connect: leave etcd without TLS "
                                   "(nats.tls works), or use an external https:// etcd whose certificate a public "
                                   "CA signed")
    elif inv.etcd.ca is not None:
        r.problem(("etcd", "ca"), "Dynamo 1.6.1's etcd client ignores a CA while it logs in with a password: its "
                                  "processes could not trust this one; an external https:// etcd for Dynamo needs a "
                                  "certificate a public CA signed (then leave ca out)")


def _check_frontend(inv: Inventory, r: Reader) -> None:
    if inv.frontend is None:
        return
    for j, arg in enumerate(inv.frontend.extra_args):
        flag = arg.split("=", 1)[0]
        if flag in FRONTEND_FLAGS:
            r.problem(("frontend", "extra_args", j), f"{flag} is rendered by the launcher; set {FRONTEND_FLAGS[flag]} instead")


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
        if w.backend is Backend.TRTLLM and w.data_parallel_size > 1:
            r.problem(path + ("data_parallel_size",), "data_parallel_size is not supported for trtllm; use replicas")
        elif w.executor is Executor.RAY and w.data_parallel_size > 1:
            r.problem(path + ("data_parallel_size",), "data_parallel_size does not work with executor = 'ray' (one engine over a Ray cluster); use executor = 'mp'")


_PROBED = {
    "nats": ("auto",),
    "etcd": ("auto",),
    "frontend": ("auto",),
    "ray": ("auto",),
    "workers": ("auto", "process"),
}
_HOW = {
    "nats": "NATS is probed on its monitor port (/healthz?js-enabled-only=true)",
    "etcd": "etcd is probed at /health on its client port",
    "frontend": "the frontend is probed by HTTP GET on http_port at health.path",
    "ray": "Ray is probed on its port and by the head's count of joined nodes",
    "workers": "a worker is probed at /health on its Dynamo system port ('process': alive is enough)",
}


def _check_health(inv: Inventory, r: Reader) -> None:
    """Probe settings the recipes would ignore: only [[processes]] choose their probe freely."""
    sections: list[tuple[KeyPath, str, Health]] = [(("nats",), "nats", inv.nats.health), (("etcd",), "etcd", inv.etcd.health)]
    if inv.frontend is not None:
        sections.append((("frontend",), "frontend", inv.frontend.health))
    if inv.ray is not None:
        sections.append((("ray",), "ray", inv.ray.health))
    sections += [(("workers", i), "workers", w.health) for i, w in enumerate(inv.workers)]
    for path, kind, health in sections:
        path = path + ("health",)
        if health.check not in _PROBED[kind]:
            allowed = " or ".join(repr(c) for c in _PROBED[kind])
            r.problem(path + ("check",), f"check = {health.check!r} is not used here: {_HOW[kind]}; use {allowed}")
        for key, unused in (("port", health.port is not None), ("command", bool(health.command)),
                            ("path", kind != "frontend" and health.path != Health.path)):  # fmt: skip
            if unused and health.check in _PROBED[kind]:
                r.problem(path + (key,), f"is not used here: {_HOW[kind]}")


def _check_argv_secrets(inv: Inventory, r: Reader) -> None:
    """Every argv the inventory writes: a secret there would sit in /proc/PID/cmdline on its node."""
    lists: list[tuple[KeyPath, tuple[str, ...]]] = []
    healths: list[tuple[KeyPath, Health]] = [(("nats",), inv.nats.health), (("etcd",), inv.etcd.health)]
    if inv.frontend is not None:
        lists.append((("frontend", "extra_args"), inv.frontend.extra_args))
        healths.append((("frontend",), inv.frontend.health))
    for i, w in enumerate(inv.workers):
        lists.append((("workers", i, "extra_args"), w.extra_args))
        healths.append((("workers", i), w.health))
    if inv.ray is not None:
        lists += [(("ray", key), getattr(inv.ray, key)) for key in ("extra_args", "head_args", "worker_args")]
        healths.append((("ray",), inv.ray.health))
    for i, p in enumerate(inv.processes):
        lists.append((("processes", i, "command"), p.command))
        healths.append((("processes", i), p.health))
    lists += [(path + ("health", "command"), h.command) for path, h in healths]
    for path, argv in lists:
        for j, message in argv_secrets(argv):
            r.problem(path + (j,), message)


def _under(key: str, *sections: str) -> bool:
    """True when the formatted key path ``key`` lies in one of the top-level ``sections``."""
    return any(key == s or key.startswith((s + "[", s + ".")) for s in sections)


def _known(names: set[str] | dict[str, int]) -> str:
    return f"; hosts are {_list(names)}" if names else "; no hosts are defined"


def _list(names: set[str] | dict[str, int]) -> str:
    return ", ".join(_show(n) for n in sorted(names))


def _show(name: str) -> str:
    """A name as written when it is plain, else quoted with escapes: a message stays one line."""
    return name if name.isprintable() and name.strip() == name and name else repr(name)
