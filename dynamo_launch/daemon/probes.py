"""Running one health probe (DESIGN §1 "health"): from the head, or on a host through its agent.

TCP and HTTP probes run from the daemon; command and Ray probes run on the probed host through
its agent's ``exec`` (with the host's python, so Ray's client matches the cluster's version).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import DynamoLaunchError
from ..health import http_get, judge_ray_nodes, ray_nodes_argv, tcp_connect
from ..plan.spec import Probe, ProbeKind
from .links import HostLink

__all__ = ["RayTables", "run_probe"]


class RayTables:
    """Reads of Ray clusters' node tables, shared by the probes that want one at about the same time.

    A read starts a python on the head that loads Ray's GCS client: ~0.7 s of CPU there. Every
    worker waiting to join, and a gang leader's gate, would each start one, back to back, on the
    host that is busiest starting Ray. A read in flight is awaited by every probe of the same
    cluster, and a result younger than ``fresh`` seconds is reused; each probe still judges it for
    its own node. A failed read is never reused.
    """

    def __init__(self, fresh: float = 0.5, clock: Callable[[], float] = time.monotonic):
        self.fresh, self._clock = fresh, clock
        self._reads: dict[tuple[str, str, int], tuple[asyncio.Future, list[float]]] = {}
        self.started = 0  # reads actually run (for tests and metrics)

    async def read(self, link: HostLink, address: str, port: int, timeout: float) -> dict[str, Any]:
        """The agent's ``exec`` answer for :func:`ray_nodes_argv` of ``address:port`` on ``link``."""
        key = (link.name, address, port)
        hit = self._reads.get(key)
        if hit is not None:
            task, finished = hit
            if not task.done() or (not task.cancelled() and task.exception() is None
                                   and self._clock() - finished[0] < self.fresh):
                return await asyncio.shield(task)
        argv = ray_nodes_argv(link.host.python, address, port, timeout)
        task = asyncio.ensure_future(link.call("exec", timeout=timeout + 10, args={"argv": argv, "timeout": timeout}))
        finished = [0.0]
        task.add_done_callback(lambda _t: finished.__setitem__(0, self._clock()))
        self._reads[key] = (task, finished)
        self.started += 1
        return await asyncio.shield(task)


async def run_probe(probe: Probe, links: Mapping[str, HostLink], since: Mapping[str, float] | None = None,
                    ray_tables: RayTables | None = None) -> tuple[bool, str]:
    """``(ok, detail)`` of one probe. Never raises for an unhealthy target or an unreachable host.

    ``since`` (Ray probes): address → start of the process running that host's Ray node now;
    see :func:`~dynamo_launch.health.judge_ray_nodes`. ``ray_tables`` shares node-table reads.
    """
    try:
        if probe.kind is ProbeKind.TCP:
            r = await tcp_connect(probe.address, int(probe.port or 0), probe.timeout)
            return r.ok, r.detail
        if probe.kind is ProbeKind.HTTP:
            r = await http_get(probe.url, probe.timeout, ca=probe.ca)
            return r.ok, r.detail
        link = links[probe.host]
        if probe.kind is ProbeKind.COMMAND:
            out = await link.call("exec", timeout=probe.timeout + 10,
                                  args={"argv": list(probe.command), "timeout": probe.timeout})
            return out.get("code") == 0, f"{' '.join(probe.command)[:60]}: exit {out.get('code')}"
        if probe.kind not in (ProbeKind.RAY_NODES, ProbeKind.RAY_NODE):
            return True, "process alive"
        out = await (ray_tables or RayTables()).read(link, probe.address, int(probe.port or 0), probe.timeout)
        if out.get("code") != 0:
            return False, f"ray status: exit {out.get('code')}"
        return judge_ray_nodes(str(out.get("stdout", "")), expect=probe.expect, member=probe.member, since=since)
    except DynamoLaunchError as e:
        return False, str(e)
