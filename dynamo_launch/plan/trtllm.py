"""TensorRT-LLM workers through ``python -m dynamo.trtllm`` (pure recipe).

Multi-node: the leader wraps the worker in ``mpirun -H a:g,b:g -np N`` and MPI
starts the ranks on the other hosts over SSH itself, so those hosts run no
supervised process of their own; ``OMPI_MCA_orte_keep_fqdn_hostnames=1`` and
the discovery variables are exported to every rank with ``-x``. Preflight
checks the leader's SSH reach to the ranks. ``trtllm-llmapi-launch`` is called by its
absolute path next to the inventory's python, and ``PATH``/``LD_LIBRARY_PATH`` are exported,
as the Dynamo operator does: a rank's non-interactive SSH shell has neither the venv nor CUDA.
"""

from __future__ import annotations

from ..model import Role
from ..placement import Replica
from ..tomlpos import KeyPath
from .context import Context
from .spec import ProcessSpec
from .workers import leader_spec, system_env

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
    # The Dynamo operator's form: --oversubscribe (slots = GPUs, not cores), the ob1 PML (no
    # UCX/IB transport assumed for MPI's own messages; NCCL carries the tensors).
    mpirun = ["mpirun", "--oversubscribe", "--mca", "pml", "ob1"]
    if ssh.user == "root":
        mpirun.append("--allow-run-as-root")
    mpirun += ["-H", hosts, "-np", str(group.world_size)]
    if ssh.port != 22:
        mpirun += ["--mca", "plm_rsh_args", f"-p {ssh.port}"]
    ifname = ctx.inv.network_interface(leader_host)
    if ifname:  # MPI's own TCP traffic on the cluster network too
        mpirun += ["--mca", "btl_tcp_if_include", ifname, "--mca", "oob_tcp_if_include", ifname]
    # Remote ranks start from a bare non-interactive SSH shell: PATH and LD_LIBRARY_PATH (the
    # venv, CUDA, MPI) must travel with -x, and every variable the worker gets here too.
    leader_env = [("OMPI_MCA_orte_keep_fqdn_hostnames", "1"), *ctx.network_env(leader_host)]
    names = ["PATH", "LD_LIBRARY_PATH", "OMPI_MCA_orte_keep_fqdn_hostnames", "NATS_SERVER", "ETCD_ENDPOINTS",
             *(k for k, _ in system_env("", 0)), *(k for k, _ in leader_env)]  # fmt: skip
    names += [k for k, _ in (*ctx.inv.env, *ctx.inv.host(leader_host).env, *group.env, *ctx.inv.nats_auth,
                                          *ctx.inv.etcd_auth)]
    for name in dict.fromkeys(names):
        mpirun += ["-x", name]
    # By absolute path: mpirun execs it on every rank with the remote shell's PATH.
    launcher = ctx.tool(leader_host, LAUNCHER)
    spec = leader_spec(ctx, replica, path, [*mpirun, launcher, *worker], env=leader_env, kind="mpirun")
    return [spec]
