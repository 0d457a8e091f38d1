"""Dynamo's routing, as far as the launcher reaches into it: which discovery instance a worker is,
whether the frontend routes to it, and taking a dead one out of discovery at once.

A Dynamo worker registers its endpoints (``v1/instances/<ns>/<component>/<endpoint>/<id>``), its
model card (``v1/mdc/…/<id>``) and its event channels in etcd, every key under one lease whose
id, in hex, is the worker's instance id. Its own system-status ``/metrics`` carries that id as the
``worker_id`` label; the frontend's ``/health`` lists the instances it routes to. Dynamo drops a
dead worker only when its lease runs out (about 25 s measured with 1.6.1), and meanwhile keeps
routing requests to it, so the daemon revokes that lease itself the moment it knows the worker
is gone (measured: out of the frontend's list 0.14 s after the kill).

::

    instance, why = worker_instance(metrics_text)          # 0x6a6c… or None, and why not
    ok, why = routes_to(frontend_health_json, instance)    # does the frontend list it?
    removed, why = await remove_instance(etcd, instance, address="10.0.0.2")
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import DynamoLaunchError

__all__ = ["INSTANCES", "instance_hex", "remove_instance", "routes_to", "worker_instance"]

INSTANCES = "v1/instances/"
"""Where Dynamo's discovery keeps each served endpoint of each instance (1.x)."""

_WORKER_ID = re.compile(r'^dynamo_component_[A-Za-z0-9_:]*\{[^}]*\bworker_id="([0-9a-f]{1,16})"', re.MULTILINE)


def instance_hex(instance: int) -> str:
    """How Dynamo writes an instance id in keys and labels: lowercase hex, no prefix."""
    return f"{instance:x}"


def worker_instance(metrics: str) -> tuple[int | None, str]:
    """The instance id a worker's system-status ``/metrics`` text names, or None and why not.

    Every ``dynamo_component_*`` series of a worker carries its instance as ``worker_id``; more
    than one distinct id is ambiguous, and then none is taken.
    """
    ids = set(_WORKER_ID.findall(metrics))
    if len(ids) == 1:
        return int(ids.pop(), 16), ""
    if not ids:
        return None, "its /metrics names no worker_id yet"
    return None, f"its /metrics names {len(ids)} worker ids ({', '.join(sorted(ids))})"


def routes_to(health: str, instance: int) -> tuple[bool, str]:
    """Does the frontend ``/health`` document ``health`` list ``instance``? ``(listed, detail)``."""
    try:
        doc = json.loads(health)
        listed = {int(i["instance_id"]) for i in doc.get("instances") or () if isinstance(i, dict)}
    except (ValueError, TypeError, KeyError, AttributeError):
        return False, "the frontend's /health is not the JSON expected"
    if instance in listed:
        return True, f"the frontend routes to instance {instance_hex(instance)}"
    return False, f"waiting for the frontend to route to instance {instance_hex(instance)}"


async def remove_instance(client: Any, instance: int, *, address: str) -> tuple[bool, str]:
    """Revoke the etcd lease of Dynamo instance ``instance`` (a worker that runs at ``address``),
    which deletes its registration: routers stop choosing it as soon as they see the deletion.

    ``client`` is an :class:`~dynamo_launch.etcd.EtcdClient`. Nothing is revoked unless the lease
    still holds an instance key named for that id whose value names that id and a transport on
    ``address``: a lease that is not that worker's registration is left alone. Returns
    ``(removed, detail)``; never raises for etcd's failures.
    """
    ident = instance_hex(instance)
    try:
        keys = await client.lease_keys(instance)
        if keys is None:
            return False, f"instance {ident}: its lease is already gone"
        mine = [k for k in keys if k.startswith(INSTANCES) and k.rsplit("/", 1)[-1] == ident]
        if not mine:
            return False, f"instance {ident}: its lease holds no instance key of that id: left alone"
        kv = await client.get(mine[0])
        if kv is None:
            return False, f"instance {ident}: its registration vanished meanwhile"
        if kv.lease != instance:
            return False, f"instance {ident}: its registration is held by another lease: left alone"
        why = _not_ours(kv.value, instance, address)
        if why:
            return False, f"instance {ident}: {why}: left alone"
        await client.revoke_lease(instance)
    except DynamoLaunchError as e:
        return False, f"instance {ident}: etcd: {e}"
    return True, f"instance {ident} removed from Dynamo's discovery ({len(keys)} keys)"


def _not_ours(value: bytes, instance: int, address: str) -> str:
    """Why the registration ``value`` is not instance ``instance`` at ``address`` ("" when it is)."""
    try:
        doc = json.loads(value)
        if int(doc.get("instance_id")) != instance:
            return "its registration names another instance"
        transport = doc.get("transport") or {}
        tcp = str(transport.get("tcp") or "")  # "10.0.0.2:41593/<id>/…"; a NATS subject names no host
    except (ValueError, TypeError, AttributeError):
        return "its registration is not the JSON expected"
    host = tcp.split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    if host and host != address:
        return f"its registration is served from {host}, not {address}"
    return ""
