"""Ray head and workers, for a bare Ray cluster or a vLLM Ray-executor gang (pure).

The reference guides run ``ray start --head --port=6379`` and
``ray start --address=HEAD:6379 --block``. Under supervision the head must stay
in the foreground too, so both get ``--block``; ``--node-ip-address`` pins the
address Ray advertises (hosts often have several), and usage stats are off
because cluster nodes should not phone home.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..model import EnvValue, Health, Restart
from ..tomlpos import KeyPath
from .context import Context
from .spec import Gate, ProbeKind, ProcessSpec

__all__ = ["ray_processes"]


def ray_processes(
    ctx: Context,
    *,
    prefix: str,
    head: str,
    workers: Iterable[str],
    port: int,
    origin: KeyPath,
    restart: Restart,
    health: Health,
    start_args: Iterable[str] = (),
    head_args: Iterable[str] = (),
    worker_args: Iterable[str] = (),
    env: Iterable[tuple[str, EnvValue]] = (),
    user_env: Iterable[tuple[str, EnvValue]] = (),
    group: str | None = None,
    vllm_host_ip: bool = False,
) -> list[ProcessSpec]:
    """``<prefix>-head`` on ``head`` and ``<prefix>-<i>`` on each worker host.

    ``start_args`` go to every ``ray start``, then ``head_args`` to the head's and ``worker_args``
    to the workers' (flags like ``--dashboard-host`` or ``--include-dashboard`` are head-only).
    """
    head_address = ctx.inv.host(head).address
    start_args, head_args, worker_args = tuple(start_args), tuple(head_args), tuple(worker_args)
    procs = []

    def host_env(host: str) -> list[tuple[str, EnvValue]]:
        # On TERM a Ray node drains for up to 30 s by default: the daemon already stops it in
        # dependency order and every stop (down, gang restart, reload) would wait that out and
        # end in KILL. The inventory's env can still set it.
        extra: list[tuple[str, EnvValue]] = [("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")]
        if vllm_host_ip:
            extra.append(("VLLM_HOST_IP", ctx.inv.host(host).address))
        # Ranks run as Ray workers and inherit the raylet's env: bind gloo/NCCL to the cluster NIC
        # (a vLLM Ray-executor gang, or a bare cluster's own workloads such as `vllm serve`).
        extra += ctx.network_env(host)
        return [*extra, *env]

    head_probe = ctx.tcp(health, head_address, port)
    procs.append(
        ctx.spec(
            name=f"{prefix}-head",
            host=head,
            kind="ray-head",
            argv=[ctx.tool(head, "ray"), "start", "--head", f"--port={port}", f"--node-ip-address={head_address}",
                  "--disable-usage-stats", *start_args, *head_args, "--block"],
            origin=origin,
            restart=restart,
            health=health,
            readiness=head_probe,
            liveness=head_probe,
            env=host_env(head),
            user_env=user_env,
            group=group,
            ports=[(port, origin + ("port" if group is None else "ray_port",))],
        )
    )
    for i, host in enumerate(workers, start=1):
        address = ctx.inv.host(host).address
        joined = ctx.probe(ProbeKind.RAY_NODE, health, host=head, address=head_address, port=port, member=address)
        procs.append(
            ctx.spec(
                name=f"{prefix}-{i}",
                host=host,
                kind="ray-worker",
                argv=[ctx.tool(host, "ray"), "start", f"--address={head_address}:{port}", f"--node-ip-address={address}",
                      "--disable-usage-stats", *start_args, *worker_args, "--block"],
                origin=origin,
                restart=restart,
                health=health,
                readiness=joined,
                env=host_env(host),
                user_env=user_env,
                depends_on=(Gate(process=f"{prefix}-head"),),
                group=group,
            )
        )
    return procs
