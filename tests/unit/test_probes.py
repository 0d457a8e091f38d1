"""daemon/probes.py: Ray probes share node-table reads; each judges the table for its own node."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from dynamo_launch.daemon.probes import RayTables, run_probe
from dynamo_launch.errors import TransportError
from dynamo_launch.plan.spec import Probe, ProbeKind


class FakeHead:
    """A head host's link whose agent answers ``exec`` of the Ray snippet with ``table`` after ``delay``."""

    def __init__(self, table: list, delay: float = 0.05, fail: bool = False):
        self.name, self.host = "h1", SimpleNamespace(python="/venv/bin/python")
        self.table, self.delay, self.fail, self.calls = table, delay, fail, []

    async def call(self, op: str, /, timeout: float = 30.0, **kwargs):
        self.calls.append((op, kwargs["args"]["argv"][-2:]))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise TransportError("h1: unreachable")
        return {"code": 0, "stdout": json.dumps(self.table) + "\n", "stderr": ""}


def joined(address: str) -> Probe:
    return Probe(ProbeKind.RAY_NODE, host="h1", address="10.0.0.1", port=6379, member=address, timeout=3.0)


def test_concurrent_ray_probes_share_one_read_and_judge_their_own_node() -> None:
    head = FakeHead([["10.0.0.1", 10.0], ["10.0.0.2", 11.0], ["10.0.0.3", 5.0]])
    tables = RayTables(fresh=0.5)

    async def go():
        since = {"10.0.0.3": 20.0}  # h3's process restarted at 20: its node from 5 is the dead one
        return await asyncio.gather(run_probe(joined("10.0.0.2"), {"h1": head}, {"10.0.0.2": 11.0}, tables),
                                    run_probe(joined("10.0.0.3"), {"h1": head}, since, tables),
                                    run_probe(Probe(ProbeKind.RAY_NODES, host="h1", address="10.0.0.1", port=6379,
                                                    expect=3), {"h1": head}, None, tables))

    two, three, count = asyncio.run(go())
    assert len(head.calls) == 1 and tables.started == 1
    assert head.calls[0] == ("exec", ["10.0.0.1:6379", "3.0"])
    assert two == (True, "ray: 10.0.0.2 joined (3 alive)")
    assert three == (False, "ray: 10.0.0.3 not joined (2 alive, 1 left from before a restart)")
    assert count == (True, "ray: 3/3 nodes alive")


def test_a_fresh_result_is_reused_a_stale_or_failed_one_is_not() -> None:
    now = [100.0]
    head = FakeHead([["10.0.0.2", 1.0]], delay=0)
    tables = RayTables(fresh=0.5, clock=lambda: now[0])

    async def probe():
        return await run_probe(joined("10.0.0.2"), {"h1": head}, None, tables)

    async def go():
        await probe()
        now[0] += 0.4
        await probe()  # 0.4 s old: reused
        now[0] += 0.2
        await probe()  # 0.6 s old: read again
        head.fail = True
        now[0] += 1
        bad = await probe()
        head.fail = False
        good = await probe()  # the failure is not reused
        return bad, good

    bad, good = asyncio.run(go())
    assert tables.started == 4 and len(head.calls) == 4
    assert bad == (False, "h1: unreachable") and good[0]
