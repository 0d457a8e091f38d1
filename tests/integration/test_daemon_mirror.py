"""The daemon with a real etcd and a real nats-server (loopback): leadership, status from etcd,
events on NATS in order."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from dynamo_launch.daemon import Daemon
from dynamo_launch.daemon.snapshot import snapshot
from dynamo_launch.errors import AlreadyRunning
from dynamo_launch.eventbus import subscribe
from dynamo_launch.inventory import parse
from dynamo_launch.mirror import read_status
from dynamo_launch.plan import build
from tests.daemon_harness import free_port, kill_launch, local_inventory, standin_process


def inventory(tmp_path, name, state, etcd, nats):
    text = local_inventory(name, str(tmp_path / state), standin_process("web", free_port(), host="local",
                                                                       bind="127.0.0.1", max_restarts=20))
    text = text.replace('external = "nats://127.0.0.1:1"', f'external = "{nats}"')
    text = text.replace('external = "http://127.0.0.1:1"', f'external = "{etcd}"')
    path = tmp_path / f"{state}.toml"
    path.write_text(text)
    inv = parse(text, str(path))
    return build(inv), inv, str(path)


def test_leadership_status_from_etcd_and_events_on_nats(tmp_path, etcd_endpoint, nats_url):
    plan, inv, path = inventory(tmp_path, "mirrored", "a", etcd_endpoint, nats_url)
    launch_ids: set[str] = set()

    async def go():
        d = Daemon(plan, inv, path)
        await d.prepare(preflight=False)
        launch_ids.add(d.launch_id)
        serving = asyncio.create_task(d.serve(control=False))
        try:
            await d.runner.wait_for(lambda: d.runner.procs["web"].machine.state.name == "READY", 30)
            assert await d.mirror.wait_synced(10)
            # a second daemon (another head, another state dir) for the same cluster is refused
            plan2, inv2, path2 = inventory(tmp_path, "mirrored", "b", etcd_endpoint, nats_url)
            other = Daemon(plan2, inv2, path2)
            with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
                await other.prepare(preflight=False)
            await other.close()
            # status from etcd = status from the daemon
            mirrored = await read_status(etcd_endpoint, "mirrored")
            local = snapshot(d)
            assert [(p["name"], p["pid"], p["state"]) for p in mirrored["processes"]] == \
                   [(p["name"], p["pid"], p["state"]) for p in local["processes"]]
            # events of a kill and restart arrive on NATS, in order
            async with subscribe(nats_url, "mirrored") as stream:
                await asyncio.sleep(0.3)
                os.kill(d.runner.procs["web"].machine.pid, signal.SIGKILL)
                kinds: list[str] = []

                async def collect():
                    async for e in stream:
                        if e["process"] == "web":
                            kinds.append(e["kind"])
                        if kinds[-1:] == ["ready"]:
                            return

                await asyncio.wait_for(collect(), 20)
            assert kinds == ["exited", "restarting", "started", "ready"], kinds
            await d.runner.wait_for(lambda: d.mirror.synced, 5)
            again = await read_status(etcd_endpoint, "mirrored")
            assert again["processes"][0]["restarts"] == 1
        finally:
            d.request_stop()
            await asyncio.wait_for(serving, 60)

    try:
        asyncio.run(asyncio.wait_for(go(), 120))
    finally:
        for lid in launch_ids:
            kill_launch(lid)
