"""Applying a reload to a running :class:`~dynamo_launch.daemon.runner.Runner` (DESIGN §4).

This module holds only the order of things; the runner does each of them. Unchanged processes
are not touched. Changed ones restart one unit at a time (a gang, or one inventory entry's
processes): retired, replaced by machines that continue the generation count, started, and
waited for before the next unit, so the service stays up.
"""

from __future__ import annotations

from ..plan.diff import PlanDiff
from ..plan.spec import Plan
from ..supervisor import State
from .runner import Runner

__all__ = ["apply"]

SETTLED = (State.READY, State.RUNNING, State.FAILED)
"""A restarted unit is waited for until each of its processes is in one of these states."""


async def apply(runner: Runner, plan: Plan, d: PlanDiff, timeout: float | None = None) -> None:
    """Move ``runner`` to ``plan``: stop what was removed, restart each changed unit in turn
    (retired, then started at the next generation and waited for), start what is new."""
    old = {n: p.spec for n, p in runner.procs.items()}
    kept_gangs = {g.name for g in plan.gangs}
    await runner.retire([n for n in d.removed if old[n].group is None or old[n].group not in kept_gangs], timeout)
    new_specs = {s.name: s for s in plan.processes}
    new_gangs = {g.name: g for g in plan.gangs}
    for unit in d.units:
        await runner.retire(list(unit), timeout)
        runner.install([new_specs[n] for n in unit], new_gangs)
        runner.start(unit)
        limit = timeout or max(new_specs[n].startup_timeout for n in unit) + 5
        if not await runner.wait_for(lambda u=unit: all(runner.procs[n].machine.state in SETTLED for n in u), limit):
            runner.log.warning("reload: a restarted unit is not ready; going on", processes=list(unit))
    added = [n for n in d.added if n not in runner.procs]
    runner.install([new_specs[n] for n in added], new_gangs)
    runner.use_plan(plan)
    runner.start(added)
