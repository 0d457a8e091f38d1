"""Rollouts on a running :class:`~dynamo_launch.daemon.runner.Runner`: a reload, or a restart of
a group (DESIGN §4).

This module holds only the order of things; the runner does each of them. A rollout goes step by
step (:func:`~dynamo_launch.plan.diff.steps`: ``max_unavailable`` replicas of a group at a time,
a gang as one replica): the step's processes are stopped, started again (a reload: replaced by
machines that continue the generation count), and waited for — until READY, which for a Dynamo
worker means the frontend routes to it — before the next step takes more replicas down. A step
whose processes do not come up halts the rollout: the replicas not reached keep running as they
were, and the outcome says so.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import DynamoLaunchError
from ..plan.diff import PlanDiff
from ..plan.spec import Plan, ProcessSpec, gangs_of
from ..supervisor import State
from .runner import UP_STATES, Runner

__all__ = ["Outcome", "apply", "restart", "unavailable"]

SETTLED = (*UP_STATES, State.FAILED)
"""A step is waited for until each of its processes is in one of these states."""


@dataclass
class Outcome:
    """What a rollout did: its steps in order, and why it stopped early ("" when it did not)."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    halted: str = ""
    diff: PlanDiff | None = None  # a reload's: what it set out to change

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, for the control socket's answer."""
        return {"steps": self.steps, "halted": self.halted}


def unavailable(units: Iterable[tuple[str, ...]], specs: Iterable[ProcessSpec]) -> list[str]:
    """One line for each group of Dynamo workers that a step of ``units`` takes down whole (a
    group of one replica, or ``--all-at-once``): nothing serves its model meanwhile."""
    members: dict[str, set[str]] = defaultdict(set)
    routed = set()
    for spec in specs:
        members[spec.origin or spec.name].add(spec.name)
        if spec.routing is not None:
            routed.add(spec.origin or spec.name)
    entry_of = {n: e for e, names in members.items() for n in names}
    whole = [e for unit in units for e in sorted({entry_of[n] for n in unit if n in entry_of})
             if e in routed and members[e] <= set(unit)]
    return [f"{', '.join(sorted(members[e]))}: {'the only replica' if len(members[e]) == 1 else 'every replica'} "
            "goes down at once: its model is unavailable until the new copy is ready" for e in whole]


async def _step(runner: Runner, unit: tuple[str, ...], i: int, total: int, outcome: Outcome,
                limit: float, begin: Callable[[], Any]) -> bool:
    """Run one step: ``begin()`` takes its processes down and starts them again; then wait for
    them. Records the step in ``outcome``; False when it did not come up (the rollout halts)."""
    started = time.monotonic()
    await begin()
    await runner.settle()  # the step's Stop/Start are applied: its processes are no longer READY
    ok = await runner.wait_for(lambda: all(runner.procs[n].machine.state in SETTLED for n in unit), limit)
    states = {n: runner.procs[n].machine.state.name for n in unit}
    up = ok and all(runner.procs[n].machine.state in UP_STATES for n in unit)
    outcome.steps.append({"step": i, "of": total, "processes": list(unit), "states": states, "ready": up,
                          "seconds": round(time.monotonic() - started, 2),
                          "generations": {n: runner.procs[n].machine.generation for n in unit}})
    if not up:
        late = ", ".join(f"{n} {s}" for n, s in states.items() if State[s] not in UP_STATES)
        outcome.halted = (f"step {i}/{total}: {late} {'after' if ok else 'not ready within'} {limit:.0f}s; "
                          "the steps after it were not taken")
    runner.log.info("rollout step", step=i, of=total, processes=list(unit), ready=up,
                    seconds=outcome.steps[-1]["seconds"])
    return up


def _limit(specs: Iterable[ProcessSpec], timeout: float | None) -> float:
    """How long a step of ``specs`` may take: stopped, then started and ready."""
    return timeout or max(s.startup_timeout + s.restart.stop_timeout for s in specs) + 5


async def restart(runner: Runner, units: list[tuple[str, ...]], timeout: float | None = None) -> Outcome:
    """Restart ``units`` (:func:`~dynamo_launch.plan.diff.steps` of the processes meant) one step at
    a time; a FAILED process is cleared and started. Gang members restart with their gang."""
    outcome = Outcome()
    for i, unit in enumerate(units, 1):

        async def begin(unit: tuple[str, ...] = unit) -> None:
            runner.restart_names(set(unit))

        if not await _step(runner, unit, i, len(units), outcome,
                           _limit((runner.procs[n].spec for n in unit), timeout), begin):
            break
    return outcome


async def apply(runner: Runner, plan: Plan, d: PlanDiff, timeout: float | None = None) -> tuple[Outcome, Plan]:
    """Move ``runner`` to ``plan``: stop what was removed, replace the changed processes one step
    at a time (retired, started at the next generation, waited for), start what is new.

    Returns the outcome and the plan now running: ``plan``, or — when a step did not come up —
    ``plan`` with the processes not reached still as they were (a later reload takes them)."""
    old = {n: p.spec for n, p in runner.procs.items()}
    kept_gangs = {g.name for g in plan.gangs}
    await runner.retire([n for n in d.removed if old[n].group is None or old[n].group not in kept_gangs], timeout)
    new_specs = {s.name: s for s in plan.processes}
    new_gangs = {g.name: g for g in plan.gangs}
    outcome = Outcome(diff=d)
    for i, unit in enumerate(d.units, 1):

        async def begin(unit: tuple[str, ...] = unit) -> None:
            await runner.retire(list(unit), timeout)
            runner.install([new_specs[n] for n in unit], new_gangs)
            runner.start(unit)

        try:
            ready = await _step(runner, unit, i, len(d.units), outcome,
                                _limit((new_specs[n] for n in unit), timeout), begin)
        except DynamoLaunchError as e:  # a process could not be confirmed stopped: nothing replaced
            outcome.halted = f"step {i}/{len(d.units)}: {e}"
            ready = False
        if not ready:
            return outcome, _partial(runner, plan)
    added = [n for n in d.added if n not in runner.procs]
    runner.install([new_specs[n] for n in added], new_gangs)
    runner.use_plan(plan)
    runner.start(added)
    return outcome, plan


def _partial(runner: Runner, plan: Plan) -> Plan:
    """The plan a halted reload leaves running: every process the runner supervises now, each as
    it runs (a changed one not reached is still its old self; a new one not started is absent)."""
    names = [s.name for s in plan.processes if s.name in runner.procs]
    planned = set(names)
    names += [n for n in runner.procs if n not in planned]
    specs = tuple(runner.procs[n].spec for n in names)
    partial = replace(plan, processes=specs, gangs=gangs_of(specs))
    runner.use_plan(partial)
    return partial
