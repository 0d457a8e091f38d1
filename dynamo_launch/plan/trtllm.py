"""TensorRT-LLM workers through ``python -m dynamo.trtllm`` (pure recipe).

Multi-node: the leader wraps the worker in ``mpirun -H a:g,b:g -np N`` and MPI
starts the ranks on the other hosts over SSH itself, so those hosts run no
supervised process of their own; ``OMPI_MCA_orte_keep_fqdn_hostnames=1`` and
the discovery variables are exported to every rank with ``-x``. Preflight
checks the leader's SSH reach to the ranks.
"""

from __future__ import annotations

from ..model import Role
from ..placement import Replica
from ..tomlpos import KeyPath
from .context import Context
from .spec import ProcessSpec
from .workers import system_env, leader_spec

__all__ = ["processes"]

LAUNCHER = "trtllm-llmapi-launch"


def processes(ctx: Context, replica: Replica, path: KeyPath) -> list[ProcessSpec]:
    """The one process of a TRT-LLM replica (``mpirun`` on the leader when multi-node)."""
    group = replica.group
    leader_host = replica.nodes[0].host
    python = ctx.python(leader_host)
    worker = [python, "-m", "dynamo.trtllm", "--model", group.model, "--tensor-parallel-size", str(group.tensor_parallel_size)]
    if group.pipeline_parallel_size > 1:
        worker += ["--pipeline-parallel-size", str(group.pipeline_parallel_size)]
    worker += list(group.extra_args)
    if group.role is not Role.AGGREGATED:
        worker += ["--disaggregation-mode", group.role.value]
    if not replica.multi_node:
        return [leader_spec(ctx, replica, path, worker)]

    hosts = ",".join(f"{ctx.inv.host(n.host).address}:{replica.gpus_per_node}" for n in replica.nodes)
    ssh = ctx.inv.host(leader_host).ssh
    mpirun = ["mpirun"]
    if ssh.user == "root":
        mpirun.append("--allow-run-as-root")
    mpirun += ["-H", hosts, "-np", str(group.world_size)]
    if ssh.port != 22:
        mpirun += ["--mca", "plm_rsh_args", f"-p {ssh.port}"]
    names = ["OMPI_MCA_orte_keep_fqdn_hostnames", "NATS_SERVER", "ETCD_ENDPOINTS",
             *(k for k, _ in system_env("", 0))]
    names += [k for k, _ in (*ctx.inv.env, *group.env) if k not in names]
    for name in names:
        mpirun += ["-x", name]
    spec = leader_spec(
        ctx, replica, path, [*mpirun, LAUNCHER, *worker], env=[("OMPI_MCA_orte_keep_fqdn_hostnames", "1")], kind="mpirun"
    )
    return [spec]
