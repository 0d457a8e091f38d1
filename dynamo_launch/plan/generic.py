"""Processes given by their full ``command`` (custom engines, stand-ins) (pure recipe)."""

from __future__ import annotations

from ..model import GenericProcess
from ..tomlpos import KeyPath
from .context import Context
from .spec import Gate, ProbeKind, ProcessSpec

__all__ = ["processes"]


def processes(ctx: Context, index: int, proc: GenericProcess, targets: dict[str, list[str]]) -> list[ProcessSpec]:
    """One process per host; ``targets`` maps a depends_on name to the process names it stands for."""
    path: KeyPath = ("processes", index)
    health = proc.health
    gates = tuple(Gate(process=name) for dep in proc.depends_on for name in targets.get(dep, ()))
    if proc.dynamo:
        gates = (*ctx.infra_gates(), *gates)
    out = []
    for host in proc.hosts:
        address = ctx.inv.host(host).address
        if health.check == "http":
            readiness = liveness = ctx.http(health, address, health.port or 0, health.path)
        elif health.check == "tcp":
            readiness = liveness = ctx.tcp(health, address, health.port or 0)
        elif health.check == "command":
            readiness = liveness = ctx.probe(ProbeKind.COMMAND, health, host=host, command=health.command)
        else:
            readiness, liveness = ctx.alive(health), None
        ports = [(health.port, path + ("health", "port"))] if health.port and health.check in ("http", "tcp") else []
        # A Dynamo component probed on its system-status port: if it registers an instance, the
        # daemon learns it there and takes it out of discovery when the process goes. Its
        # readiness does not wait for the frontend: what it registers is not known here.
        routing = ctx.routing(address, health.port, wait=False) if proc.dynamo and health.check == "http" \
            and health.port else None
        out.append(
            ctx.spec(
                name=proc.name if len(proc.hosts) == 1 else f"{proc.name}-{host}",
                host=host,
                kind="process",
                argv=proc.command,
                origin=path,
                restart=proc.restart,
                health=health,
                readiness=readiness,
                liveness=liveness,
                env=ctx.dynamo_env() if proc.dynamo else (),
                user_env=proc.env,
                cwd=proc.cwd,
                depends_on=gates,
                group=proc.gang,
                ports=ports,
                routing=routing,
            )
        )
    return out
