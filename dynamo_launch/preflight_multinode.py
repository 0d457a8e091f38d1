"""Preflight for replicas that span hosts, and for the engine each host runs (pure judging).

Multi-node init fails in ways that cost an hour of model loading to discover: gloo/NCCL bind
whatever the hostname resolves to (``127.0.1.1`` on stock Debian/Ubuntu) and hang; a
``network_interface`` that does not exist, or does not carry the host's address, sends ranks
down the wrong wire; an engine of another version than the plan was rendered (and verified)
for reads the flags differently. Each host's facts (``preflight.FACTS``) carry its interfaces
with their addresses and what its hostname resolves to; this module turns them into checks.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .model import Backend, Inventory
from .placement import place
from .plan.spec import Plan
from .versions import ENGINE_PINS

__all__ = ["engine_checks", "network_checks"]

_ENGINE_PACKAGE = {Backend.VLLM: "vllm", Backend.SGLANG: "sglang", Backend.TRTLLM: "tensorrt-llm"}


def _multi_node_hosts(inv: Inventory) -> set[str]:
    """Hosts of worker replicas that span hosts (TRT-LLM's included: MPI reaches them itself).

    Generic processes' gangs are the operator's own commands: nothing is assumed about them.
    """
    placement = place(inv)
    return {n.host for replicas in placement.replicas.values() for r in replicas if r.multi_node for n in r.nodes}


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def network_checks(inv: Inventory, plan: Plan, host: str, fact: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(name, status, detail)`` checks of ``host``'s network for the multi-node ranks it runs."""
    if host not in _multi_node_hosts(inv):
        return []
    out: list[tuple[str, str, str]] = []
    address = inv.host(host).address
    ifname = inv.network_interface(host)
    interfaces = fact.get("interfaces")
    resolved = fact.get("hostname_addresses") or []
    hostname = fact.get("hostname", "")
    if ifname is None:
        if any(_loopback(a) for a in resolved):
            out.append(("network", "fail", f"hostname {hostname!r} resolves to {', '.join(resolved)}: gloo/NCCL would "
                                           f"bind loopback and multi-node init hangs; set cluster.network_interface "
                                           f"(or this host's network_interface) to the interface with {address}"))
        else:
            out.append(("network", "warn", "no network_interface: gloo/NCCL pick one by resolving the hostname "
                                           f"({', '.join(resolved) or 'unresolved'}); set cluster.network_interface"))
        return out
    if interfaces is None:
        out.append(("network", "warn", f"could not list interfaces to check {ifname!r}"))
    elif ifname not in interfaces:
        out.append(("network", "fail", f"network_interface {ifname!r} does not exist here (has: "
                                       f"{', '.join(sorted(interfaces))})"))
    elif interfaces[ifname] is not None and _is_ip(address) and address not in interfaces[ifname]:
        where = [name for name, addrs in interfaces.items() if addrs and address in addrs]
        hint = f"; {address} is on {', '.join(where)}" if where else f"; no interface has {address}"
        out.append(("network", "fail", f"{ifname} does not carry this host's address {address} (it has "
                                       f"{', '.join(interfaces[ifname]) or 'none'}){hint}"))
    else:
        out.append(("network", "ok", f"{ifname} carries {address}"))
    return out


def engine_checks(inv: Inventory, host: str, fact: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The engines ``host``'s worker groups need are installed, at the versions Dynamo pins."""
    packages = fact.get("packages", {})
    version = inv.cluster.dynamo_version
    pins = ENGINE_PINS.get(version, {})
    out: list[tuple[str, str, str]] = []
    groups = [g for g in inv.workers if host in g.hosts]
    backends = {g.backend for g in groups}
    if not backends:
        return out
    # A PYTHONPATH in the env the workers get may bring the engine from elsewhere (a site
    # install, a stand-in): installed metadata is then not the whole story, so only warn.
    env_names = {k for k, _ in (*inv.env, *inv.host(host).env, *(kv for g in groups for kv in g.env))}
    missing = "warn" if "PYTHONPATH" in env_names else "fail"
    dynamo = packages.get("ai-dynamo")
    if dynamo is None:
        out.append(("engine ai-dynamo", "fail", "not installed for the inventory's python"))
    elif dynamo != version:
        out.append(("engine ai-dynamo", "fail", f"{dynamo} installed, but the plan is rendered and verified for "
                                                f"cluster.dynamo_version = {version!r}"))
    modules = fact.get("modules") or {}
    for backend in sorted(backends, key=lambda b: b.value):
        module = f"dynamo.{backend.value}"
        if modules and not modules.get(module):
            out.append((f"engine {module}", missing, f"`python -m {module}` would fail: no such module for the "
                                                     f"inventory's python"))
        name = _ENGINE_PACKAGE.get(backend)
        if name is None:
            continue
        have, want = packages.get(name), pins.get(name)
        if have is None:
            hint = "; PYTHONPATH in their env may provide it" if missing == "warn" else ""
            out.append((f"engine {name}", missing, f"not installed for the inventory's python ({backend.value} workers){hint}"))
        elif want and have != want:
            out.append((f"engine {name}", "warn", f"{have} installed; ai-dynamo {version} pins {want} (the version "
                                                  f"its flags were verified with)"))
        else:
            out.append((f"engine {name}", "ok", have))
    return out


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return False
