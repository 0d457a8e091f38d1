"""The control socket's requests, answered by a running :class:`~dynamo_launch.daemon.service.Daemon`.

One request is a JSON object with an ``op`` and its arguments; the answer is a JSON object.
An error raised here reaches the client as one line (:class:`~dynamo_launch.control.ControlServer`).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from ..errors import BadRequest, DynamoLaunchError
from ..model import Inventory
from ..plan.diff import PlanDiff, render_diff
from ..plan.spec import Plan
from ..printable import clean
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


_MISSING: Any = object()
_ARGS = {"status": set(), "restart": {"target"}, "events": {"since"}, "logs": {"name", "lines", "offset", "max_bytes"},
         "diff": {"path"}, "reload": {"path"}, "down": set()}


def _arg(req: dict[str, Any], key: str, kind: type, default: Any = _MISSING, *, low: int = 0,
         high: int = 1 << 62) -> Any:
    """``req[key]`` of type ``kind`` (an int within ``low..high``); :class:`BadRequest` otherwise."""
    if key not in req:
        if default is _MISSING:
            raise BadRequest(f"{req['op']!r} needs {key!r}")
        return default
    value = req[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
        raise BadRequest(f"{key!r} must be an integer from {low} to {high}")
    if kind is str and (not isinstance(value, str) or not value or len(value) > 4096):
        raise BadRequest(f"{key!r} must be a non-empty string")
    return value


async def handle(daemon: Controlled, req: dict[str, Any]) -> dict[str, Any]:
    """Answer one control request (a JSON object with a string ``op``: :func:`~dynamo_launch.control.parse_request`).

    Unknown ops, unknown or mistyped arguments are :class:`BadRequest`: nothing the client sends
    reaches the daemon unchecked."""
    op = req["op"]
    if op not in _ARGS:
        raise BadRequest(f"unknown request {clean(op)[:60]!r}; known: {', '.join(sorted(_ARGS))}")
    extra = sorted(set(req) - _ARGS[op] - {"op"})
    if extra:
        raise BadRequest(f"{op!r} takes no {clean(extra[0])[:60]!r}")
    if daemon.runner is None:
        raise DynamoLaunchError("the daemon is still starting")
    if op == "status":
        return snapshot(daemon)
    if op == "restart":
        return {"restarted": daemon.runner.restart(_arg(req, "target", str))}
    if op == "events":
        return {"events": daemon.events_since(_arg(req, "since", int, 0))}
    if op == "logs":
        name = _arg(req, "name", str)
        if "offset" in req:
            return await daemon.read_log(name, offset=_arg(req, "offset", int),
                                         max_bytes=_arg(req, "max_bytes", int, 1 << 20, high=1 << 20))
        return await daemon.read_log(name, lines=_arg(req, "lines", int, 100, high=1 << 20))
    if op == "diff":
        d = daemon.diff(_arg(req, "path", str, None))[2]
        return {"text": render_diff(d), "diff": d.as_dict()}
    if op == "reload":
        previous, path = daemon.inventory_path, _arg(req, "path", str, None)
        d = daemon.start_reload(path)
        # the file every later reload (SIGHUP, `systemctl reload`) reads: the client says so when it moved
        return {"text": render_diff(d), "diff": d.as_dict(), "reloading": not d.empty,
                "inventory": os.path.abspath(path or previous), "previous": previous}
    report = await daemon.stop_and_wait()  # down
    return {"stopped": report.stopped, "unknown": report.unknown, "leftovers": report.leftovers,
            "clean": report.clean}
