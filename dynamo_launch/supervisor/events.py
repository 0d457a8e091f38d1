"""Events into and actions out of the supervision state machines (pure values).

A machine's only interface is ``on(event, now) -> list[Action]``: the runner turns
what it observes (a spawn result, an exit, a probe result, a fired timer, an operator
command) into an *event*, and carries out every *action* the machine returns
(spawn, kill, arm or cancel a timer, start or stop probes, log a lifecycle event).

:class:`MemberDown` is both: a gang member's machine returns it as an action (with
``name`` empty) and the runner hands it to the gang machine as an event, after
filling ``name`` with ``dataclasses.replace(action, name=member)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import IllegalTransition

__all__ = [
    "carried",
    "Action",
    "Adopted",
    "CancelTimer",
    "ClearFailed",
    "DepsReady",
    "Event",
    "Exited",
    "GangAction",
    "GangAdopted",
    "GangEvent",
    "handler_for",
    "HostBack",
    "HostLost",
    "Kill",
    "MemberDown",
    "MemberReady",
    "MemberStopped",
    "Notify",
    "ProbeResult",
    "Resume",
    "ProbeSet",
    "SetTimer",
    "Spawn",
    "SpawnFailed",
    "Spawned",
    "Start",
    "StartMember",
    "StartProbes",
    "Stop",
    "StopMember",
    "StopProbes",
    "TimerFired",
    "TimerKind",
]

TimerKind = Literal["start_secs", "startup", "backoff", "stop_kill"]
"""Timers a machine arms: a process alive this long counts as RUNNING (no real probe);
the startup deadline; the end of a backoff delay; the TERM → KILL escalation."""

ProbeSet = Literal["readiness", "liveness"]
"""Which probe set a result or a StartProbes action is about."""


# --- events shared by both machines -----------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """The daemon or operator wants it running (bring-up, or the second half of a restart).

    ``generation`` is set by the gang for its members: the spawn then uses exactly it.
    """

    generation: int | None = None


@dataclass(frozen=True)
class Resume:
    """Start where a previous daemon left off (instead of :class:`Start` after a daemon restart):
    the restart count, streak and budget carry over; ``failed`` stays FAILED (until the operator's
    ClearFailed); a ``backoff_until`` still ahead is waited out first. Times are on the
    machine's clock."""

    restarts: int = 0
    streak: int = 0
    recent: tuple[float, ...] = ()  # when each restart in the budget's window was granted
    failed: bool = False
    reason: str = ""
    backoff_until: float | None = None


def carried(machine: Any) -> dict[str, Any]:
    """What :class:`Resume` needs to carry a process or gang machine on after a daemon restart
    (its state, restarts, streak and budget; times on the machine's clock)."""
    streak, recent = machine.backoff.carried()
    return {"state": machine.state.name, "reason": machine.reason, "restarts": machine.restarts, "streak": streak,
            "recent": list(recent), "backoff_until": machine.timers.get("backoff")}


@dataclass(frozen=True)
class Stop:
    """End in STOPPED with no restart (``down``, a gang stop, a reload, an operator restart)."""

    reason: str = ""


@dataclass(frozen=True)
class TimerFired:
    """A timer armed by ``SetTimer(kind, at)`` fired; ``at`` (if given) must match to count."""

    kind: TimerKind
    at: float | None = None


@dataclass(frozen=True)
class ClearFailed:
    """The operator's ``restart NAME`` on a FAILED process or gang: fresh budget, start again."""


# --- process events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepsReady:
    """Every start gate of the process passes (sent while it is WAITING)."""


@dataclass(frozen=True)
class Spawned:
    """The spawn succeeded: the process runs with this pid."""

    pid: int


@dataclass(frozen=True)
class SpawnFailed:
    """The spawn definitely did not start a process (if unsure, send HostLost instead)."""

    reason: str


@dataclass(frozen=True)
class Exited:
    """The process ended with an exit ``code`` or by ``signal`` (both None: unknown).

    ``pid``, when given, must be the machine's pid; a report about another pid is stale.
    """

    code: int | None
    signal: int | None = None
    pid: int | None = None


@dataclass(frozen=True)
class ProbeResult:
    """One probe result."""

    kind: ProbeSet
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class HostLost:
    """The host stopped answering: its processes are UNKNOWN, not dead."""


@dataclass(frozen=True)
class HostBack:
    """The host answers again; ``alive`` says whether our recorded process still runs
    (pid, start time, boot id and launch id all match). ``pid`` fills in a pid the
    machine never heard of (the host was lost between Spawn and Spawned). When the process
    is gone, ``code``/``signal`` are the exit its node recorded meanwhile (None: unknown), and
    ``spawned`` is False when the copy the machine was starting never reached the host (no
    record of its generation there): that is no death, and no restart is counted for it."""

    alive: bool
    pid: int | None = None
    code: int | None = None
    signal: int | None = None
    spawned: bool = True


@dataclass(frozen=True)
class Adopted:
    """After a daemon restart, the recorded process was found alive: supervise it again."""

    pid: int
    generation: int


# --- gang events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberReady:
    """A member's machine reached READY or RUNNING."""

    name: str


@dataclass(frozen=True)
class MemberDown:
    """A member exited or failed its probes (an action of the member, an event of the gang)."""

    reason: str
    name: str = ""


@dataclass(frozen=True)
class MemberStopped:
    """A member's machine is STOPPED: its process is confirmed gone."""

    name: str


@dataclass(frozen=True)
class GangAdopted:
    """After a daemon restart the gang's members are being adopted at this generation."""

    generation: int


# --- actions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    """Start the process (record it first) as this generation."""

    generation: int


@dataclass(frozen=True)
class Kill:
    """Send the signal to the process group of the machine's current pid."""

    signal: Literal["TERM", "KILL"]


@dataclass(frozen=True)
class SetTimer:
    """Arm (or re-arm: one timer per kind) a timer that fires ``TimerFired(kind, at)`` at ``at``."""

    kind: TimerKind
    at: float


@dataclass(frozen=True)
class CancelTimer:
    """Disarm the timer of this kind."""

    kind: TimerKind


@dataclass(frozen=True)
class StartProbes:
    """Run this probe set from now on (it replaces whatever set ran before)."""

    kind: ProbeSet


@dataclass(frozen=True)
class StopProbes:
    """Stop probing the process."""


@dataclass(frozen=True)
class Notify:
    """A lifecycle event for the event log and NATS (``kind``: see the machines)."""

    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict, hash=False)  # compared, never hashed


@dataclass(frozen=True)
class StopMember:
    """Feed ``Stop`` to this member's machine."""

    name: str


@dataclass(frozen=True)
class StartMember:
    """Feed ``Start(generation=generation)`` to this member's machine."""

    name: str
    generation: int


def handler_for(table: dict, state: Any, timers: dict[str, float], event: object, machine: str,
                valid: bool = True) -> str | None:
    """The handler name ``table`` gives ``event`` in ``state``; None for a stale timer.

    A ``TimerFired`` counts only while that timer is armed (at that time, when ``at`` is
    given) and disarms it. An event the state does not accept, or one the caller found
    invalid, raises :class:`IllegalTransition` and changes nothing.
    """
    if isinstance(event, TimerFired):
        armed = timers.get(event.kind)
        if armed is None or event.at not in (None, armed):
            return None  # cancelled or re-armed since
        key: object = event.kind
    else:
        key = type(event)
    handler = table[state].get(key)
    if handler is None or not valid:
        raise IllegalTransition(machine, state.name, event)
    if isinstance(event, TimerFired):
        del timers[event.kind]
    return handler


Event = (
    Start | Stop | TimerFired | ClearFailed | DepsReady | Spawned | SpawnFailed | Exited | ProbeResult | HostLost | HostBack
    | Resume
    | Adopted
)
"""What a process machine accepts."""

GangEvent = Start | Stop | TimerFired | ClearFailed | MemberReady | MemberDown | MemberStopped | GangAdopted | Resume
"""What a gang machine accepts."""

Action = Spawn | Kill | SetTimer | CancelTimer | StartProbes | StopProbes | Notify | MemberDown
"""What a process machine asks for."""

GangAction = StopMember | StartMember | SetTimer | CancelTimer | Notify
"""What a gang machine asks for."""
