"""The control socket's requests, answered by a running :class:`~dynamo_launch.daemon.service.Daemon`.

One request is a JSON object with an ``op`` and its arguments; the answer is a JSON object.
An error raised here reaches the client as one line (:class:`~dynamo_launch.control.ControlServer`).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from ..errors import DynamoLaunchError
from ..model import Inventory
from ..plan.diff import PlanDiff, render_diff
from ..plan.spec import Plan
from .snapshot import Supervised, snapshot

__all__ = ["Controlled", "handle"]


class Controlled(Supervised, Protocol):
    """What answers control requests (the daemon)."""

    def diff(self, path: str | None = None) -> tuple[Plan, Inventory, PlanDiff]: ...

    def start_reload(self, path: str | None = None) -> PlanDiff: ...

    async def stop_and_wait(self) -> Any: ...

    def events_since(self, seq: int) -> list[dict[str, Any]]: ...

    async def read_log(self, name: str, *, lines: int | None = None, offset: int | None = None,
                       max_bytes: int = 1 << 20) -> dict[str, Any]: ...


async def handle(daemon: Controlled, req: dict[str, Any]) -> dict[str, Any]:
    """Answer one control request."""
    if daemon.runner is None:
        raise DynamoLaunchError("the daemon is still starting")
    op = req.get("op")
    if op == "status":
        return snapshot(daemon)
    if op == "restart":
        return {"restarted": daemon.runner.restart(str(req["target"]))}
    if op == "events":
        return {"events": daemon.events_since(int(req.get("since", 0)))}
    if op == "logs":
        if "offset" in req:
            return await daemon.read_log(str(req["name"]), offset=int(req["offset"]),
                                         max_bytes=int(req.get("max_bytes", 1 << 20)))
        return await daemon.read_log(str(req["name"]), lines=int(req.get("lines", 100)))
    if op == "diff":
        d = daemon.diff(req.get("path"))[2]
        return {"text": render_diff(d), "diff": d.as_dict()}
    if op == "reload":
        previous = daemon.inventory_path
        d = daemon.start_reload(req.get("path"))
        # the file every later reload (SIGHUP, `systemctl reload`) reads: the client says so when it moved
        return {"text": render_diff(d), "diff": d.as_dict(), "reloading": not d.empty,
                "inventory": os.path.abspath(req.get("path") or previous), "previous": previous}
    if op == "down":
        report = await daemon.stop_and_wait()
        return {"stopped": report.stopped, "unknown": report.unknown, "leftovers": report.leftovers,
                "clean": report.clean}
    raise DynamoLaunchError(f"unknown request {op!r}")
