"""vLLM workers through ``python -m dynamo.vllm`` (pure recipe).

Layouts (DESIGN §3): one host per replica; multi-node TP/PP with the mp
executor (``--nnodes/--node-rank/--master-addr/--master-port``, ``--headless``
off the leader); the Ray executor (Ray head + ``--block`` workers + the leader
with ``--distributed-executor-backend ray``); data parallel across hosts
(``--data-parallel-*``, ``--headless`` off the leader).
"""

from __future__ import annotations

import json

from ..model import Executor, Role
from ..placement import Replica
from ..tomlpos import KeyPath
from .context import Context
from .ray import ray_processes
from .spec import Gate, ProbeKind, ProcessSpec
from .workers import leader_spec, rank_spec, version_at_least

__all__ = ["processes", "role_flags"]

NIXL = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"}, separators=(",", ":"))


def role_flags(ctx: Context, replica: Replica) -> list[str]:
    """Prefill/decode flags in the spelling of the cluster's Dynamo version.

    Dynamo < 1.0 spells prefill ``--is-prefill-worker`` (decode has no flag);
    1.0 replaced both with ``--disaggregation-mode`` and made prefill workers
    name their KV connector explicitly.
    """
    group = replica.group
    if group.role is Role.AGGREGATED:
        return []
    if not version_at_least(ctx.inv.cluster.dynamo_version, 1, 0):
        return ["--is-prefill-worker"] if group.role is Role.PREFILL else []
    flags = ["--disaggregation-mode", group.role.value]
    if group.role is Role.PREFILL and not any(a.split("=", 1)[0] == "--kv-transfer-config" for a in group.extra_args):
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

    def host_env(host: str) -> list:
        return [*env, ("VLLM_HOST_IP", ctx.inv.host(host).address)]

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
        local = replica.dp_local

        def dp_tail(rank: int) -> list[str]:
            return ["--data-parallel-size", str(dp), "--data-parallel-size-local", str(local),
                    "--data-parallel-address", leader_address, "--data-parallel-rpc-port", str(group.dp_rpc_port),
                    "--data-parallel-start-rank", str(local * rank)]  # fmt: skip

        gate_port, gate_key = group.dp_rpc_port, "dp_rpc_port"
        tails = [dp_tail(node.rank) for node in replica.nodes]
    else:
        def mp_tail(rank: int) -> list[str]:
            return ["--distributed-executor-backend", "mp", "--nnodes", str(n), "--node-rank", str(rank),
                    "--master-addr", leader_address, "--master-port", str(group.master_port)]  # fmt: skip

        gate_port, gate_key = group.master_port, "master_port"
        tails = [mp_tail(node.rank) for node in replica.nodes]

    procs = [
        leader_spec(ctx, replica, path, argv_for(leader_host, [*group.extra_args, *role_flags(ctx, replica), *tails[0]]),
                    env=host_env(leader_host), ports=[(gate_port, path + (gate_key,))])  # fmt: skip
    ]
    leader_port = Gate(probe=ctx.tcp(group.health, leader_address, gate_port))
    for node, tail in zip(replica.nodes[1:], tails[1:]):
        argv = argv_for(node.host, [*group.extra_args, *role_flags(ctx, replica), *tail, "--headless"])
        procs.append(rank_spec(ctx, replica, node, path, argv, env=host_env(node.host), depends_on=(leader_port,), kind="headless"))
    return procs
