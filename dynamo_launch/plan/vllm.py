"""vLLM workers through ``python -m dynamo.vllm`` (pure recipe).

Layouts (DESIGN §3): one host per replica; multi-node TP/PP with the mp
executor (``--nnodes/--node-rank/--master-addr/--master-port``, ``--headless``
off the leader); the Ray executor (Ray head + ``--block`` workers + the leader
with ``--distributed-executor-backend ray``); data parallel across hosts
(``--data-parallel-*`` in the hybrid-LB or internal-LB form, ``dp_load_balancing``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ..model import DpLoadBalancing, EnvValue, Executor, Role
from ..placement import Replica
from ..tomlpos import KeyPath
from .context import Context
from .ray import ray_processes
from .spec import Gate, ProbeKind, ProcessSpec
from .workers import leader_spec, rank_spec

__all__ = ["processes", "role_flags"]

NIXL = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"}, separators=(",", ":"))


def role_flags(ctx: Context, replica: Replica) -> list[str]:
    """Prefill/decode flags (Dynamo ≥ 1.4 spelling; older releases are refused by validation).

    ``--disaggregation-mode`` replaced ``--is-prefill-worker``, which 1.4+ rejects. BOTH sides
    of a disaggregated pair need the NIXL connector: without it on decode, vLLM logs "no
    KVConnector found. Disabling KVTransfer" and recomputes every prefill. A connector given
    in ``extra_args`` wins.
    """
    group = replica.group
    if group.role is Role.AGGREGATED:
        return []
    flags = ["--disaggregation-mode", group.role.value]
    if not any(a.split("=", 1)[0] == "--kv-transfer-config" for a in group.extra_args):
        flags += ["--kv-transfer-config", NIXL]
    return flags


def processes(ctx: Context, replica: Replica, path: KeyPath) -> list[ProcessSpec]:
    """All processes of one vLLM replica."""
    group = replica.group
    leader_host = replica.nodes[0].host
    leader_address = ctx.inv.host(leader_host).address
    base = [ctx.python(leader_host), "-m", "dynamo.vllm", "--model", group.model, "--tensor-parallel-size", str(group.tensor_parallel_size)]
    if group.pipeline_parallel_size > 1:
        base += ["--pipeline-parallel-size", str(group.pipeline_parallel_size)]
    env = [("VLLM_CACHE_ROOT", ctx.inv.cluster.vllm_cache_root)] if ctx.inv.cluster.vllm_cache_root else []

    def host_env(host: str) -> list[tuple[str, EnvValue]]:
        # NIXL's side channel on the node's own address whenever KV moves between workers; the
        # gloo/NCCL interface wherever ranks of one replica span hosts.
        disagg = group.role is not Role.AGGREGATED
        net = ctx.network_env(host, nixl=disagg) if replica.multi_node or disagg else []
        return [*env, ("VLLM_HOST_IP", ctx.inv.host(host).address), *net]

    def argv_for(host: str, tail: list[str]) -> list[str]:
        return [ctx.python(host), *base[1:], *tail]

    dp = group.data_parallel_size
    if not replica.multi_node:
        tail = (["--data-parallel-size", str(dp)] if dp > 1 else []) + [*group.extra_args, *role_flags(ctx, replica)]
        return [leader_spec(ctx, replica, path, argv_for(leader_host, tail), env=host_env(leader_host))]

    n = len(replica.nodes)
    if group.executor is Executor.RAY:
        ray = ray_processes(
            ctx, prefix=f"{replica.name}-ray", head=leader_host, workers=[x.host for x in replica.nodes[1:]],
            port=group.ray_port, origin=path, restart=group.restart, health=group.health, env=env,
            user_env=group.env, group=replica.name, vllm_host_ip=True,
        )  # fmt: skip
        all_joined = Gate(probe=ctx.probe(ProbeKind.RAY_NODES, group.health, host=leader_host, address=leader_address, port=group.ray_port, expect=n))
        tail = [*group.extra_args, *role_flags(ctx, replica), "--distributed-executor-backend", "ray"]
        leader = leader_spec(ctx, replica, path, argv_for(leader_host, tail), env=host_env(leader_host),
                             depends_on=(Gate(process=ray[0].name), all_joined))  # fmt: skip
        return [*ray, leader]

    if dp > 1:
        return _data_parallel(ctx, replica, path, argv_for, host_env)

    def mp_tail(rank: int) -> list[str]:
        return ["--distributed-executor-backend", "mp", "--nnodes", str(n), "--node-rank", str(rank),
                "--master-addr", leader_address, "--master-port", str(group.master_port)]  # fmt: skip

    procs = [
        leader_spec(ctx, replica, path, argv_for(leader_host, [*group.extra_args, *role_flags(ctx, replica), *mp_tail(0)]),
                    env=host_env(leader_host), ports=[(group.master_port, path + ("master_port",))])  # fmt: skip
    ]
    leader_port = Gate(probe=ctx.tcp(group.health, leader_address, group.master_port))
    for node in replica.nodes[1:]:
        argv = argv_for(node.host, [*group.extra_args, *role_flags(ctx, replica), *mp_tail(node.rank), "--headless"])
        procs.append(rank_spec(ctx, replica, node, path, argv, env=host_env(node.host), depends_on=(leader_port,), kind="headless"))
    return procs


def _data_parallel(ctx: Context, replica: Replica, path: KeyPath, argv_for: Callable[[str, list[str]], list[str]],
                   host_env: Callable[[str], list[tuple[str, EnvValue]]]) -> list[ProcessSpec]:  # fmt: skip
    """DP across hosts, in the form ``dp_load_balancing`` names (both checked with vLLM 0.31).

    ``hybrid``: every node runs a full Dynamo worker with ``--data-parallel-hybrid-lb
    --data-parallel-start-rank local×i`` and serves its own ranks. ``internal``: the leader runs
    the Dynamo worker with NO start rank (a start rank on a non-headless leader silently turns on
    hybrid LB, and Dynamo would then serve the leader's ranks only), node i runs ``--headless
    --data-parallel-start-rank local×i``; the leader's engine core balances all ranks.
    """
    group = replica.group
    leader_address = ctx.inv.host(replica.nodes[0].host).address
    local = replica.dp_local
    hybrid = group.dp_load_balancing is DpLoadBalancing.HYBRID
    common = [*group.extra_args, *role_flags(ctx, replica),
              "--data-parallel-size", str(group.data_parallel_size), "--data-parallel-size-local", str(local),
              "--data-parallel-address", leader_address, "--data-parallel-rpc-port", str(group.dp_rpc_port)]  # fmt: skip
    procs: list[ProcessSpec] = []
    leader_port = Gate(probe=ctx.tcp(group.health, leader_address, group.dp_rpc_port))
    for node in replica.nodes:
        host = node.host
        if hybrid:
            argv = argv_for(host, [*common, "--data-parallel-hybrid-lb", "--data-parallel-start-rank", str(local * node.rank)])
        elif node.rank == 0:
            argv = argv_for(host, common)
        else:
            argv = argv_for(host, [*common, "--data-parallel-start-rank", str(local * node.rank), "--headless"])
        if node.rank == 0:
            procs.append(leader_spec(ctx, replica, path, argv, env=host_env(host),
                                     ports=[(group.dp_rpc_port, path + ("dp_rpc_port",))]))  # fmt: skip
        elif hybrid:
            procs.append(leader_spec(ctx, replica, path, argv, env=host_env(host), depends_on=(leader_port,), node=node,
                                     kind="dp-worker"))  # fmt: skip
        else:
            procs.append(rank_spec(ctx, replica, node, path, argv, env=host_env(host), depends_on=(leader_port,),
                                   kind="headless"))  # fmt: skip
    return procs
