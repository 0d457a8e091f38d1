"""Transports: how the daemon runs things on a host (local subprocesses or one SSH connection).

::

    t = make_transport(plan_host)            # LocalTransport if host.local else SshTransport
    await t.connect()
    r = await t.run(["nvidia-smi", "-L"], timeout=10)      # Completed(code, stdout, stderr)
    agent = AgentClient(t, state_dir, plan_host.python)
    await agent.start()                                     # hello
    await agent.call("spawn", name=..., argv=[...], ...)
    async for event in agent.events(): ...

Errors are :class:`~dynamo_launch.errors.TransportError` subclasses (and
:class:`~dynamo_launch.errors.AgentError` for the agent's ``ok: false``); asyncssh's own
exceptions never leave this package.
"""

from __future__ import annotations

from typing import Any

from ..plan.spec import PlanHost
from .agent_client import AgentClient, agent_source
from .base import Channel, Completed, Transport, remote_command
from .local import LocalTransport

__all__ = [
    "AgentClient",
    "Channel",
    "Completed",
    "LocalTransport",
    "SshTransport",
    "Transport",
    "agent_source",
    "make_transport",
    "remote_command",
]


def make_transport(host: PlanHost, **opts: Any) -> Transport:
    """The transport for ``host``: local when ``host.local``, else SSH (``opts`` go to it)."""
    if host.local:
        return LocalTransport(host)
    from .ssh import SshTransport

    return SshTransport(host, **opts)


def __getattr__(name: str) -> Any:
    # SshTransport on first use: asyncssh and cryptography are a third of what `up` imports, and a
    # cluster on the local host alone (the demo) never needs them.
    if name == "SshTransport":
        from .ssh import SshTransport

        return SshTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
