"""The control socket's requests, answered by a running :class:`~dynamo_launch.daemon.service.Daemon`.

One request is a JSON object with an ``op`` and its arguments; the answer is a JSON object.
An error raised here reaches the client as one line (:class:`~dynamo_launch.control.ControlServer`).
"""

from __future__ import annotations

import asyncio
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

    def start_reload(self, path: str | None = None, *,
                     all_at_once: bool = False) -> tuple[PlanDiff, list[str], asyncio.Task]: ...

    def start_restart(self, target: str, *,
                      all_at_once: bool = False) -> tuple[list[tuple[str, ...]], list[str], asyncio.Task]: ...

    async def stop_and_wait(self) -> Any: ...

    def events_since(self, seq: int) -> list[dict[str, Any]]: ...

    async def read_log(self, name: str, *, lines: int | None = None, offset: int | None = None,
                       max_bytes: int = 1 << 20) -> dict[str, Any]: ...


_MISSING: Any = object()
_ARGS = {"status": set(), "restart": {"target", "wait", "all_at_once"}, "events": {"since"},
         "logs": {"name", "lines", "offset", "max_bytes"}, "diff": {"path", "all_at_once"},
         "reload": {"path", "wait", "all_at_once"}, "down": set()}


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
    if kind is bool and not isinstance(value, bool):
        raise BadRequest(f"{key!r} must be true or false")
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
        units, notes, task = daemon.start_restart(_arg(req, "target", str),
                                                  all_at_once=_arg(req, "all_at_once", bool, False))
        answer: dict[str, Any] = {"restarted": sorted(n for u in units for n in u), "steps": [list(u) for u in units],
                                  "unavailable": notes}
        if _arg(req, "wait", bool, False):
            answer["outcome"] = (await asyncio.shield(task)).as_dict()
        return answer
    if op == "events":
        return {"events": daemon.events_since(_arg(req, "since", int, 0))}
    if op == "logs":
        name = _arg(req, "name", str)
        if "offset" in req:
            return await daemon.read_log(name, offset=_arg(req, "offset", int),
                                         max_bytes=_arg(req, "max_bytes", int, 1 << 20, high=1 << 20))
        return await daemon.read_log(name, lines=_arg(req, "lines", int, 100, high=1 << 20))
    if op == "diff":
        d = daemon.diff(_arg(req, "path", str, None), all_at_once=_arg(req, "all_at_once", bool, False))[2]
        return {"text": render_diff(d), "diff": d.as_dict()}
    if op == "reload":
        previous, path = daemon.inventory_path, _arg(req, "path", str, None)
        d, notes, task = daemon.start_reload(path, all_at_once=_arg(req, "all_at_once", bool, False))
        # the file every later reload (SIGHUP, `systemctl reload`) reads: the client says so when it moved
        answer = {"text": render_diff(d), "diff": d.as_dict(), "reloading": not d.empty, "unavailable": notes,
                  "inventory": os.path.abspath(path or previous), "previous": previous}
        if _arg(req, "wait", bool, False):
            answer["outcome"] = (await asyncio.shield(task)).as_dict()
        return answer
    report = await daemon.stop_and_wait()  # down
    return {"stopped": report.stopped, "unknown": report.unknown, "leftovers": report.leftovers,
            "clean": report.clean}
