"""One link per host: its transport, its node agent, and the loss/reconnect cycle.

A link turns everything that can go wrong with a host into two signals for the runner:
``on_lost(host)`` when the agent's channel ends (keepalive failure, partition, sshd gone,
agent crash) and ``on_back(host, records)`` once a new agent answers again, with the
agent's process records so the runner can reconcile. Agent events (exits) go to
``on_event(host, event)``. Reconnecting never starts anything: it only reports.

A heartbeat (an agent ``ping`` every second) finds a silent host in a few seconds instead of
SSH keepalive's window; :meth:`HostLink.confirm` asks the same question just before the runner
acts on a host (a stop, a kill). A host that does not answer is *suspected*: its connection is
aborted — whatever was queued for it is discarded, never delivered late when the link heals —
and it is lost until a new agent answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ..errors import DynamoLaunchError, TransportError
from ..plan.spec import PlanHost
from ..retry import RetryDelay
from ..transport import AgentClient, Transport

__all__ = ["HostLink"]

log = structlog.get_logger("dynamo_launch.links")

OnEvent = Callable[[str, dict[str, Any]], None]
OnLost = Callable[[str, str], None]
OnBack = Callable[[str, list[dict[str, Any]]], Awaitable[None]]

HEARTBEAT_INTERVAL = 1.0  # seconds between pings (at most the SSH keepalive interval)
HEARTBEAT_TIMEOUT = 2.0  # a ping unanswered this long is missed
HEARTBEAT_MISSES = 2  # missed in a row: the host is suspected lost
CONFIRM_TIMEOUT = 3.0  # before acting on a host: the ping must come back within this


class HostLink:
    """The daemon's hold on one host. ``up`` is True while its agent answers."""

    def __init__(self, host: PlanHost, transport: Transport, state_dir: str, *, on_event: OnEvent,
                 on_lost: OnLost, on_back: OnBack, retry_max: float = 5.0):
        self.host = host
        self.name = host.name
        self.transport = transport
        self.state_dir = state_dir
        self.agent: AgentClient | None = None
        self.up = False
        self.boot_id = ""
        self.last_error = ""
        self._on_event, self._on_lost, self._on_back = on_event, on_lost, on_back
        self._retry_max = retry_max
        self._pump: asyncio.Task | None = None
        self._heartbeat: asyncio.Task | None = None
        self._reconnect: asyncio.Task | None = None
        self._closing = False
        self._untrusted: set[str] = set()  # reasons already warned about
        self._log = log.bind(host=host.name)

    async def open(self, timeout: float = 60.0) -> None:
        """Connect and start the agent now; raises the transport's error if that fails."""
        await self.transport.connect()
        self.transport.lost.clear()
        agent = AgentClient(self.transport, self.state_dir, self.host.python)
        hello = await agent.start(timeout=timeout)
        self.agent, self.boot_id, self.up, self.last_error = agent, str(hello.get("boot_id", "")), True, ""
        self._pump = asyncio.create_task(self._pump_events(agent), name=f"agent-events-{self.name}")
        self._heartbeat = asyncio.create_task(self._beat(agent), name=f"heartbeat-{self.name}")

    def start_lost(self, why: str) -> None:
        """For a host that did not answer at start: lost from the outset, reconnecting in the
        background; ``on_back`` comes once its agent answers."""
        self.up, self.last_error = False, why
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.create_task(self._reconnect_loop(), name=f"reconnect-{self.name}")

    async def call(self, op: str, /, timeout: float = 30.0, **kwargs: Any) -> Any:
        """A request to the agent; :class:`TransportError` when the host is not up."""
        if not self.up or self.agent is None:
            raise TransportError(f"{self.transport.describe()}: unreachable ({self.last_error or 'not connected'})",
                                 host=self.name)
        return await self.agent.call(op, timeout=timeout, **kwargs)

    async def confirm(self, timeout: float = CONFIRM_TIMEOUT) -> bool:
        """True when the host's agent answers a ping within ``timeout`` now: the link is known to
        be up. Otherwise the host is suspected lost (:meth:`suspect`) and False is returned."""
        if not self.up or self.agent is None:
            return False
        agent = self.agent
        try:
            await agent.call("ping", timeout=timeout)
            return True
        except TransportError as e:
            await self.suspect(f"no answer to a ping within {timeout:g}s ({e})", agent)
            return False

    async def suspect(self, why: str, agent: AgentClient | None = None) -> None:
        """Treat the host as lost now (its processes become UNKNOWN): abort its connection so that
        nothing queued for it is delivered late, and reconnect. ``agent``: only if it is still
        the current one (a newer connection is not judged by an older one's silence)."""
        if not self.up or (agent is not None and agent is not self.agent):
            return
        self._lost(why)
        with contextlib.suppress(Exception):
            await self.transport.abort()

    async def records(self) -> list[dict[str, Any]]:
        """The agent's process records (``list``), each with ``alive``.

        A file in ``run/`` that the agent does not trust (not ours, not 0600, a symlink, another
        name inside) is left out, with a warning (once per file and reason): its pid is never
        adopted, stopped or killed."""
        records = []
        for r in await self.call("list", timeout=30.0):
            if isinstance(r, dict) and not r.get("untrusted"):
                records.append(r)
                continue
            why = str(r.get("untrusted")) if isinstance(r, dict) else f"not a record: {r!r:.100}"
            if why not in self._untrusted:
                self._untrusted.add(why)
                self._log.warning("ignoring a process record the launcher did not write", reason=why)
        return records

    async def close(self) -> None:
        """Stop the agent and the connection; the processes on the host keep running."""
        self._closing = True
        for task in (self._reconnect, self._pump, self._heartbeat):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.agent is not None:
            with contextlib.suppress(DynamoLaunchError):
                await self.agent.close()
        with contextlib.suppress(Exception):
            await self.transport.close()
        self.up = False

    async def _pump_events(self, agent: AgentClient) -> None:
        why = "agent channel ended"
        try:
            async for event in agent.events():
                self._on_event(self.name, event)
        except TransportError as e:
            why = str(e)
        if self._closing:
            return
        self._lost(why)

    async def _beat(self, agent: AgentClient) -> None:
        interval = min(HEARTBEAT_INTERVAL, self.host.ssh.keepalive_interval)
        missed = 0
        while self.up and self.agent is agent and not self._closing:
            await asyncio.sleep(interval)
            try:
                await agent.call("ping", timeout=max(HEARTBEAT_TIMEOUT, 2 * interval))
                missed = 0
            except TransportError as e:
                missed += 1
                if missed >= HEARTBEAT_MISSES:
                    await self.suspect(f"no answer to {missed} pings in a row ({e})", agent)
                    return

    def _lost(self, why: str) -> None:
        if not self.up:
            return
        self.up, self.last_error = False, why
        self._log.warning("host lost", reason=why)
        self._on_lost(self.name, why)
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.create_task(self._reconnect_loop(), name=f"reconnect-{self.name}")

    async def _reconnect_loop(self) -> None:
        delay = RetryDelay(0.5, self._retry_max)
        old = self.agent
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        while not self._closing:
            with contextlib.suppress(Exception):
                await self.transport.close()  # a fresh connection: the old one may be half dead
            try:
                await self.open(timeout=30.0)
                records = await self.records()
            except (DynamoLaunchError, OSError) as e:
                self.up, self.last_error = False, str(e)
                if self.agent is not None:
                    with contextlib.suppress(Exception):
                        await self.agent.close()
                wait = delay.next()
                self._log.info("host still unreachable", retry_in=round(wait, 2), reason=str(e))
                await asyncio.sleep(wait)
                continue
            self._log.info("host back")
            await self._on_back(self.name, records)
            return
