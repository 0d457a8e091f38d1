"""SGLang workers through ``python -m dynamo.sglang`` (pure recipe).

Multi-node: every node runs the same command with
``--dist-init-addr LEADER:PORT --nnodes N --node-rank i``; node 0 serves the
Dynamo endpoints, the others wait for the leader's dist-init port.
"""

from __future__ import annotations

from ..model import Role
from ..placement import Replica
from ..tomlpos import KeyPath
from .context import Context
from .spec import Gate, ProcessSpec
from .workers import leader_spec, rank_spec

__all__ = ["processes"]


def processes(ctx: Context, replica: Replica, path: KeyPath) -> list[ProcessSpec]:
    """All processes of one SGLang replica."""
    group = replica.group
    leader_host = replica.nodes[0].host
    leader_address = ctx.inv.host(leader_host).address
    base = ["-m", "dynamo.sglang", "--model-path", group.model, "--tp-size", str(group.tensor_parallel_size)]
    if group.pipeline_parallel_size > 1:
        base += ["--pp-size", str(group.pipeline_parallel_size)]
    if group.data_parallel_size > 1:
        base += ["--dp-size", str(group.data_parallel_size)]
    role = [] if group.role is Role.AGGREGATED else ["--disaggregation-mode", group.role.value]

    def argv(host: str, rank: int) -> list[str]:
        dist = []
        if replica.multi_node:
            dist = ["--dist-init-addr", f"{leader_address}:{group.master_port}", "--nnodes", str(len(replica.nodes)), "--node-rank", str(rank)]
        return [ctx.python(host), *base, *group.extra_args, *role, *dist]

    def env(host: str) -> list:
        # torch.distributed (gloo/NCCL) across hosts: bind the cluster interface, not 127.0.1.1.
        return ctx.network_env(host) if replica.multi_node else []

    procs = [
        leader_spec(ctx, replica, path, argv(leader_host, 0), env=env(leader_host),
                    ports=[(group.master_port, path + ("master_port",))] if replica.multi_node else [])  # fmt: skip
    ]
    gate = Gate(probe=ctx.tcp(group.health, leader_address, group.master_port))
    for node in replica.nodes[1:]:
        procs.append(rank_spec(ctx, replica, node, path, argv(node.host, node.rank), env=env(node.host), depends_on=(gate,)))
    return procs
