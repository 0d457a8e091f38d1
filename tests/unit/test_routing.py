"""Dynamo routing as the launcher reads and changes it: a worker's instance from its /metrics, the
frontend's routing table from its /health, and removing a dead instance from discovery — the last
against a real etcd holding registrations shaped as Dynamo 1.6.1 writes them."""

from __future__ import annotations

import asyncio
import json

import pytest

from dynamo_launch.etcd import EtcdClient
from dynamo_launch.routing import instance_hex, remove_instance, routes_to, worker_instance
from tests.infra import etcd_endpoint, etcd_server  # noqa: F401  (fixtures)

# As Dynamo 1.6.1's mocker serves it on its system port (abridged).
METRICS = """# HELP dynamo_component_inflight_requests Number of requests in flight
# TYPE dynamo_component_inflight_requests gauge
dynamo_component_inflight_requests{dynamo_component="backend",dynamo_endpoint="generate",dynamo_namespace="dynamo",worker_id="6a6ca2493c20df22"} 0
dynamo_component_request_bytes_total{dynamo_component="backend",dynamo_endpoint="worker_kv_query_source_1e90f70b6323b",dynamo_namespace="dynamo",worker_id="6a6ca2493c20df22"} 472
dynamo_frontend_whatever{worker_id="1234"} 1
"""


def test_a_worker_names_its_instance_in_its_metrics():
    assert worker_instance(METRICS) == (0x6a6ca2493c20df22, "")
    assert instance_hex(0x6a6ca2493c20df22) == "6a6ca2493c20df22"


@pytest.mark.parametrize("text, why", [
    ("# nothing registered yet\nprocess_cpu_seconds_total 1.5\n", "names no worker_id yet"),
    (METRICS + 'dynamo_component_x{worker_id="abc"} 1\n', "names 2 worker ids (6a6ca2493c20df22, abc)"),
    ('x{worker_id="6a6ca2493c20df22"} 1\n', "names no worker_id yet"),  # not a Dynamo component series
])
def test_no_instance_is_taken_when_the_metrics_do_not_name_exactly_one(text: str, why: str):
    instance, detail = worker_instance(text)
    assert instance is None and why in detail


def _health(*ids: int) -> str:
    return json.dumps({"status": "healthy", "instances": [
        {"component": "backend", "endpoint": "generate", "namespace": "dynamo", "instance_id": i,
         "transport": {"tcp": f"10.0.0.2:41593/{i:x}/dynamo/backend/generate"}} for i in ids]})


def test_the_frontend_routes_to_the_instances_its_health_lists():
    assert routes_to(_health(7, 0x6a6ca2493c20df22), 0x6a6ca2493c20df22) == (
        True, "the frontend routes to instance 6a6ca2493c20df22")
    ok, detail = routes_to(_health(7), 8)
    assert not ok and "waiting for the frontend to route to instance 8" in detail
    assert routes_to("<html>", 8)[0] is False and routes_to('{"instances": 3}', 8)[0] is False


# --- removal, against a real etcd -------------------------------------------------------------------

def _register(lease: int, address: str, *, instance: int | None = None) -> list[tuple[str, str]]:
    """Keys of one worker as Dynamo writes them: endpoints, model card, event channel, one lease."""
    instance = lease if instance is None else instance
    value = json.dumps({"type": "Endpoint", "component": "backend", "endpoint": "generate", "namespace": "dynamo",
                        "instance_id": instance,
                        "transport": {"tcp": f"{address}:41593/{lease:x}/dynamo/backend/generate"}})
    return [(f"v1/instances/dynamo/backend/generate/{lease:x}", value),
            (f"v1/mdc/dynamo/backend/generate/{lease:x}", '{"type": "Model"}'),
            (f"v1/event_channels/namespace/dynamo/component/backend/topic/kv-events/{lease:x}", "{}")]


async def _scenario(endpoint: str, address: str, *, instance_of_key: int | None = None, other_key: bool = False):
    client = EtcdClient(endpoint)
    try:
        lease = await client.grant_lease(30)
        keys = [("unrelated/config", "x")] if other_key else _register(lease, "10.0.0.2", instance=instance_of_key)
        for key, value in keys:
            await client.put(key, value, lease=lease)
        removed, detail = await remove_instance(client, lease, address=address)
        left = [kv.key for kv in await client.get_prefix("v1/")] + [kv.key for kv in await client.get_prefix("unrelated/")]
        await client.revoke_lease(lease)
        return removed, detail.replace(f"{lease:x}", "ID"), left
    finally:
        await client.close()


def test_a_dead_worker_s_registration_is_removed_at_once(etcd_endpoint: str):  # noqa: F811
    removed, detail, left = asyncio.run(_scenario(etcd_endpoint, "10.0.0.2"))
    assert removed and detail == "instance ID removed from Dynamo's discovery (3 keys)"
    assert left == []


@pytest.mark.parametrize("kw, why", [
    ({"address": "10.0.0.3"}, "its registration is served from 10.0.0.2, not 10.0.0.3: left alone"),
    ({"address": "10.0.0.2", "instance_of_key": 5}, "its registration names another instance: left alone"),
    ({"address": "10.0.0.2", "other_key": True}, "its lease holds no instance key of that id: left alone"),
])
def test_a_lease_that_is_not_that_worker_s_registration_is_left_alone(etcd_endpoint: str, kw: dict,  # noqa: F811
                                                                      why: str):
    removed, detail, left = asyncio.run(_scenario(etcd_endpoint, **kw))
    assert not removed and detail == f"instance ID: {why}"
    assert left  # nothing was deleted


def test_a_lease_already_gone_and_an_unreachable_etcd_are_reported_not_raised(etcd_endpoint: str):  # noqa: F811
    async def gone() -> tuple[bool, str]:
        client = EtcdClient(etcd_endpoint)
        try:
            lease = await client.grant_lease(30)
            await client.revoke_lease(lease)
            return await remove_instance(client, lease, address="10.0.0.2")
        finally:
            await client.close()

    removed, detail = asyncio.run(gone())
    assert not removed and detail.endswith("its lease is already gone")

    async def unreachable() -> tuple[bool, str]:
        client = EtcdClient("http://127.0.0.1:9", timeout=1.0)
        try:
            return await remove_instance(client, 0x6a6c, address="10.0.0.2")
        finally:
            await client.close()

    removed, detail = asyncio.run(unreachable())
    assert not removed and detail.startswith("instance 6a6c: etcd: ")
