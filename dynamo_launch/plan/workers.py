"""The shape every backend shares: a leader that serves Dynamo endpoints, and ranks (pure).

Backends (:mod:`.vllm`, :mod:`.sglang`, :mod:`.trtllm`, :mod:`.mocker`) decide
argv; this module decides names, env, gates, probes, GPUs and gang membership.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..model import EnvValue, Role
from ..placement import Node, Replica
from ..tomlpos import KeyPath
from .context import Context
from .spec import Gate, Probe, ProcessSpec

__all__ = ["leader_spec", "rank_name", "rank_spec", "version_at_least"]


def rank_name(replica: Replica, node: Node) -> str:
    """``decode-0`` for the leader, ``decode-0-rank1`` for node rank 1."""
    return replica.name if node.rank == 0 else f"{replica.name}-rank{node.rank}"


def _gpu_env(node: Node) -> list[tuple[str, EnvValue]]:
    # Only slice when the replica shares its host: a full host is left as the driver sees it.
    return [] if node.all_gpus or not node.gpus else [("CUDA_VISIBLE_DEVICES", ",".join(map(str, node.gpus)))]


def leader_spec(
    ctx: Context,
    replica: Replica,
    path: KeyPath,
    argv: Iterable[str],
    *,
    env: Iterable[tuple[str, EnvValue]] = (),
    depends_on: Iterable[Gate] = (),
    kind: str | None = None,
    ports: Iterable[tuple[int, KeyPath]] = (),
    node: Node | None = None,
) -> ProcessSpec:
    """A process that registers with Dynamo: the replica's leader, or ``node``'s worker.

    Ready on its system-status ``/health``; alive on ``/live`` (the Dynamo operator's split:
    liveness runs only once ready, so a worker that turns not-ready under load is not killed
    for it). Once ``/health`` answers it is READY only when the frontend routes to it
    (:class:`~dynamo_launch.plan.spec.Routing`). ``node`` is for layouts where every node serves (vLLM DP with hybrid LB); such a
    worker is named like a rank and is not the gang's leader.
    """
    group = replica.group
    node = node or replica.nodes[0]
    is_leader = node.rank == 0
    health = group.health
    port = ctx.system_port(node.host)
    address = ctx.inv.host(node.host).address
    readiness = ctx.http(health, address, port, "/health")
    liveness: Probe | None = ctx.http(health, address, port, "/live")
    routing = ctx.routing(address, port)
    if health.check == "process":
        readiness, liveness, routing = ctx.alive(health), None, None
    return ctx.spec(
        name=rank_name(replica, node),
        host=node.host,
        kind=kind or ("worker" if group.role is Role.AGGREGATED else group.role.value),
        argv=argv,
        origin=path,
        restart=group.restart,
        health=health,
        readiness=readiness,
        liveness=liveness,
        env=[*ctx.dynamo_env(), *env, *system_env(address, port), *_gpu_env(node)],
        user_env=group.env,
        depends_on=(*ctx.infra_gates(), *depends_on),
        group=replica.name if replica.multi_node else None,
        leader=replica.multi_node and is_leader,
        gpus=node.gpus,
        ports=[(port, ("cluster", "system_port")), *ports],
        routing=routing,
        max_unavailable=group.max_unavailable,
    )


def system_env(address: str, port: int) -> list[tuple[str, str]]:
    """A worker's system-status server and the addresses it advertises (Dynamo runtime).

    ``DYN_SYSTEM_PORT`` alone turns the server on (Dynamo 1.x deprecates ``DYN_SYSTEM_ENABLED``
    and warns about it, so it is not set); without ``DYN_HEALTH_CHECK_ENABLED`` its ``/health``
    answers 503 for ever. The ``*_HOST`` variables make the worker advertise the node's cluster
    address rather than its default-route one, which other hosts (the frontend fetching model
    files, the router) may not reach.
    """
    return [("DYN_SYSTEM_PORT", str(port)), ("DYN_SYSTEM_HOST", address),
            ("DYN_HEALTH_CHECK_ENABLED", "true"), ("DYN_TCP_RPC_HOST", address), ("DYN_EVENT_PLANE_HOST", address)]


def rank_spec(
    ctx: Context,
    replica: Replica,
    node: Node,
    path: KeyPath,
    argv: Iterable[str],
    *,
    env: Iterable[tuple[str, EnvValue]] = (),
    depends_on: Iterable[Gate] = (),
    kind: str = "rank",
) -> ProcessSpec:
    """A non-leader node of a gang: no Dynamo endpoints, ready when it stays up."""
    group = replica.group
    return ctx.spec(
        name=rank_name(replica, node),
        host=node.host,
        kind=kind,
        argv=argv,
        origin=path,
        restart=group.restart,
        health=group.health,
        readiness=ctx.alive(group.health),
        env=[*ctx.dynamo_env(), *env, *_gpu_env(node)],
        user_env=group.env,
        depends_on=tuple(depends_on),
        group=replica.name,
        gpus=node.gpus,
        max_unavailable=group.max_unavailable,
    )


def version_at_least(version: str, major: int, minor: int = 0) -> bool:
    """Compare a ``1.6.1``-style version to ``major.minor``."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return (parts[0], parts[1]) >= (major, minor)
