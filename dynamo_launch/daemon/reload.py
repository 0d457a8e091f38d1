"""Applying a reload to a running :class:`~dynamo_launch.daemon.runner.Runner` (DESIGN §4, issue "live reload").

Unchanged processes are not touched. Changed ones restart one unit at a time (a gang, or one
inventory entry's processes): stopped, their machines replaced by new ones that continue the
generation count, started, and waited for before the next unit, so the service stays up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import DynamoLaunchError
from ..plan.diff import PlanDiff
from ..plan.spec import Gang, Plan, ProcessSpec
from ..supervisor import GangMachine, Start, State, Stop

if TYPE_CHECKING:
    from .runner import Runner

__all__ = ["apply"]

UP_STATES = (State.READY, State.RUNNING)


async def apply(runner: "Runner", plan: Plan, d: PlanDiff, timeout: float | None = None) -> None:
    """Move to ``plan`` (a reload): stop what was removed, restart each changed unit in turn
    (stopped, then started at the next generation and waited for), start what is new.
    Unchanged processes are not touched."""
    old = {n: p.spec for n, p in runner.procs.items()}
    gone = [n for n in d.removed if old[n].group is None or old[n].group not in {g.name for g in plan.gangs}]
    await _retire(runner, gone, timeout)
    new_specs = {s.name: s for s in plan.processes}
    new_gangs = {g.name: g for g in plan.gangs}
    for unit in d.units:
        await _retire(runner, list(unit), timeout)
        _install(runner, [new_specs[n] for n in unit], new_gangs)
        _start(runner, unit)
        limit = timeout or max(new_specs[n].startup_timeout for n in unit) + 5
        if not await runner.wait_for(lambda u=unit: all(runner.procs[n].machine.state in (*UP_STATES, State.FAILED)
                                                      for n in u), limit):
            runner._log.warning("reload: a restarted unit is not ready; going on", processes=list(unit))
    added = [n for n in d.added if n not in runner.procs]
    _install(runner, [new_specs[n] for n in added], new_gangs)
    for n in d.unchanged:
        runner.procs[n].spec = new_specs[n]
    runner.plan = plan
    _start(runner, added)

async def _retire(runner: "Runner", names: list[str], timeout: float | None) -> None:
    """Stop ``names`` (with every member of their gangs) and forget their machines."""
    names = [n for n in names if n in runner.procs]
    gangs = {runner.procs[n].spec.group for n in names} - {None}
    everyone = set(names) | {m for g in gangs for m in runner.gangs[g].members}  # type: ignore[index]
    for g in gangs:
        runner.post(("gang", g), Stop("reload"))  # type: ignore[arg-type]
    for n in everyone:
        if runner.procs[n].spec.group is None:
            runner.post(("proc", n), Stop("reload"))
    if everyone:
        limit = timeout or max(runner.procs[n].spec.restart.stop_timeout for n in everyone) + 15
        await runner.wait_for(lambda: all(runner.procs[n].machine.state in (State.STOPPED, State.UNKNOWN)
                                        for n in everyone), limit)
    stuck = sorted(n for n in everyone if runner.procs[n].machine.state is not State.STOPPED)
    if stuck:  # a copy may still run (host unreachable): replacing it could make two
        raise DynamoLaunchError(f"reload halted: {', '.join(stuck)} could not be confirmed stopped "
                                "(host unreachable?); nothing more was changed")
    for n in everyone:
        p = runner.procs.pop(n)
        for h in p.timers.values():
            h.cancel()
        for task in (p.probe_task, p.gate_task):
            if task is not None:
                task.cancel()
        runner._generations[n] = p.machine.generation
    for g in gangs:
        runner._generations["gang " + g] = runner.gangs.pop(g).generation  # type: ignore[arg-type]
        for h in runner._gang_timers.pop(g, {}).values():  # type: ignore[arg-type]
            h.cancel()

def _install(runner: "Runner", specs: list[ProcessSpec], gangs: dict[str, Gang]) -> None:
    """New machines for ``specs`` (and their gangs), each continuing its old generation count."""
    from .runner import Proc  # the runner imports this module

    for spec in specs:
        p = Proc(spec)
        if spec.name in runner._generations:
            p.machine.generation = runner._generations[spec.name] + 1
        runner.procs[spec.name] = p
        if spec.group and spec.group not in runner.gangs:
            m = GangMachine.from_gang(gangs[spec.group])
            if "gang " + spec.group in runner._generations:
                m.generation = runner._generations["gang " + spec.group] + 1
            runner.gangs[spec.group] = m

def _start(runner: "Runner", names) -> None:
    for g in sorted({runner.procs[n].spec.group for n in names} - {None}):  # type: ignore[type-var]
        runner.post(("gang", g), Start())
    for n in names:
        if runner.procs[n].spec.group is None:
            runner.post(("proc", n), Start())
