"""Running one health probe (DESIGN §1 "health"): from the head, or on a host through its agent.

TCP and HTTP probes run from the daemon; command and Ray probes run on the probed host through
its agent's ``exec`` (with the host's python, so Ray's client matches the cluster's version).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import DynamoLaunchError
from ..health import http_get, judge_ray_nodes, ray_nodes_argv, tcp_connect
from ..plan.spec import Probe, ProbeKind
from .links import HostLink

__all__ = ["run_probe"]


async def run_probe(probe: Probe, links: Mapping[str, HostLink],
                    since: Mapping[str, float] | None = None) -> tuple[bool, str]:
    """``(ok, detail)`` of one probe. Never raises for an unhealthy target or an unreachable host.

    ``since`` (Ray probes): address → start of the process running that host's Ray node now;
    see :func:`~dynamo_launch.health.judge_ray_nodes`.
    """
    try:
        if probe.kind is ProbeKind.TCP:
            r = await tcp_connect(probe.address, int(probe.port or 0), probe.timeout)
            return r.ok, r.detail
        if probe.kind is ProbeKind.HTTP:
            r = await http_get(probe.url, probe.timeout)
            return r.ok, r.detail
        link = links[probe.host]
        if probe.kind is ProbeKind.COMMAND:
            argv = list(probe.command)
        elif probe.kind is ProbeKind.RAY_NODES:
            argv = ray_nodes_argv(link.host.python, probe.address, int(probe.port or 0), probe.timeout)
        elif probe.kind is ProbeKind.RAY_NODE:
            address, _, port = probe.url.rpartition(":")
            argv = ray_nodes_argv(link.host.python, address, int(port), probe.timeout)
        else:
            return True, "process alive"
        out = await link.call("exec", timeout=probe.timeout + 10, args={"argv": argv, "timeout": probe.timeout})
        if probe.kind is ProbeKind.COMMAND:
            return out.get("code") == 0, f"{' '.join(probe.command)[:60]}: exit {out.get('code')}"
        if out.get("code") != 0:
            return False, f"ray status: exit {out.get('code')}"
        member = probe.address if probe.kind is ProbeKind.RAY_NODE else ""
        return judge_ray_nodes(str(out.get("stdout", "")), expect=probe.expect, member=member, since=since)
    except DynamoLaunchError as e:
        return False, str(e)
