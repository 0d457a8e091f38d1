"""NATS and etcd that the launcher starts itself are expected not to answer at first: that is
said at info, never as a warning; an external one that does not answer is a warning."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from dynamo_launch.eventbus import EventBus
from dynamo_launch.mirror import Mirror
from tests.infra import free_port


async def _bus_logs(starting: bool) -> list[dict]:
    with capture_logs() as logs:
        bus = EventBus("c", f"nats://127.0.0.1:{free_port()}", starting=starting, connect_timeout=0.2)
        bus.start()
        bus.publish({"kind": "x"})
        await asyncio.sleep(0.5)
        await bus.close(timeout=0)
    return logs


async def _mirror_logs(starting: bool) -> list[dict]:
    with capture_logs() as logs:
        mirror = Mirror("c", f"http://127.0.0.1:{free_port()}", "test", timeout=0.3, starting=starting)
        mirror.start()
        mirror.publish({"cluster": "c", "processes": [], "hosts": [], "gangs": []})
        await asyncio.sleep(1.0)
        await mirror.close()
    return logs


@pytest.mark.parametrize("logs_of", [_bus_logs, _mirror_logs], ids=["nats", "etcd"])
def test_a_server_the_launcher_starts_is_awaited_quietly_an_external_one_is_warned_about(logs_of) -> None:
    ours = asyncio.run(logs_of(True))
    assert [e for e in ours if "not answering yet" in e["event"]]
    assert not [e for e in ours if e["log_level"] == "warning" and "unreachable" in e["event"]]
    external = asyncio.run(logs_of(False))
    assert [e for e in external if e["log_level"] == "warning" and "unreachable" in e["event"]]
