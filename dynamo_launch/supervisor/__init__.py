"""Supervision (DESIGN §4): pure state machines for processes and gangs.

``ProcessMachine`` and ``GangMachine`` take events with ``on(event, now)`` and return
actions; they never sleep, do I/O or read the clock. The runner (elsewhere) carries out
each machine's actions in order, before feeding that machine its next event, and turns
what it observes back into events.
"""

from .backoff import Backoff
from .events import (Action, Adopted, CancelTimer, ClearFailed, DepsReady, Event, Exited, GangAction, GangAdopted,
                     GangEvent, HostBack, HostLost, Kill, MemberDown, MemberReady, MemberStopped,
                     Notify, ProbeResult, Resume, SetTimer, Spawn, Spawned, SpawnFailed, Start, StartMember, StartProbes, Stop,
                     StopMember, StopProbes, TimerFired)
from .gang import GANG_TABLE, GangMachine, GangState
from .process import TABLE, ExitInfo, MachineConfig, ProcessMachine, State

__all__ = [
    "GANG_TABLE",
    "TABLE",
    "Action",
    "Adopted",
    "Backoff",
    "CancelTimer",
    "ClearFailed",
    "DepsReady",
    "Event",
    "ExitInfo",
    "Exited",
    "GangAction",
    "GangAdopted",
    "GangEvent",
    "GangMachine",
    "GangState",
    "HostBack",
    "HostLost",
    "Kill",
    "MachineConfig",
    "MemberDown",
    "MemberReady",
    "MemberStopped",
    "Notify",
    "ProbeResult",
    "Resume",
    "ProcessMachine",
    "SetTimer",
    "Spawn",
    "SpawnFailed",
    "Spawned",
    "Start",
    "StartMember",
    "StartProbes",
    "State",
    "Stop",
    "StopMember",
    "StopProbes",
    "TimerFired",
]
