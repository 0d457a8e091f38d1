"""The gang state machine (DESIGN §4): members of a multi-node replica live and die together.

Pure, like the process machine: ``on(event, now) -> actions`` through :data:`GANG_TABLE`.
Any member down ⇒ stop every member (each member's own machine does TERM, then KILL after
its deadline) ⇒ wait until *every* member is confirmed gone ⇒ start all again, leader
first, at generation + 1, after the gang's backoff. The gang's :class:`Backoff` and
budget apply to the gang as a unit; FAILED when spent.

The gang's ``generation`` is the single source of truth: every ``StartMember`` carries it,
and ``StartMember`` is only ever emitted when every member is known to be gone.

What the runner does for it:

- ``StartMember(name, gen)`` → feed ``Start(generation=gen)`` to the member's machine;
  ``StopMember(name)`` → feed ``Stop("gang")``. Members start in the order given (leader
  first); the dependency gates make workers wait for the leader.
- A member machine's ``MemberDown(reason)`` action → ``replace(action, name=member)`` here.
- A member machine that *enters* READY or RUNNING → ``MemberReady(name)``; one that enters
  STOPPED → ``MemberStopped(name)``. Repeats and either order with MemberDown are harmless.
"""

from __future__ import annotations

import enum

from ..model import Restart
from ..plan.spec import Gang
from .backoff import Backoff
from .events import (
    CancelTimer,
    ClearFailed,
    GangAction,
    GangAdopted,
    GangEvent,
    MemberDown,
    MemberReady,
    MemberStopped,
    Notify,
    Resume,
    SetTimer,
    Start,
    StartMember,
    Stop,
    StopMember,
    handler_for,
)

__all__ = ["GANG_TABLE", "GangMachine", "GangState"]


class GangState(str, enum.Enum):
    """Where a gang is."""

    STOPPED = "stopped"  # every member gone, not wanted
    STARTING = "starting"  # members started, not all ready
    RUNNING = "running"  # every member ready (or running)
    STOPPING = "stopping"  # stopping every member; waiting until all are confirmed gone
    BACKOFF = "backoff"  # all gone; waiting out the delay before starting them all again
    FAILED = "failed"  # the gang's restart budget is spent


G = GangState
# Reports that carry no news once members are gone or going: a member that is down
# again, or still finishing the start it had begun, changes nothing.
_QUIET: dict[object, str] = {MemberDown: "ignore", MemberStopped: "note_stopped"}

GANG_TABLE: dict[GangState, dict[object, str]] = {
    G.STOPPED: {**_QUIET, Start: "start", Stop: "ignore", GangAdopted: "adopt", Resume: "resume"},
    G.STARTING: {MemberReady: "member_ready", MemberDown: "member_down", MemberStopped: "member_down",
                 Start: "ignore", Stop: "stop"},
    G.RUNNING: {MemberReady: "ignore", MemberDown: "member_down", MemberStopped: "member_down",
                Start: "ignore", Stop: "stop"},
    G.STOPPING: {**_QUIET, MemberStopped: "member_stopped", MemberReady: "ignore", Start: "start_after_stop",
                 Stop: "stop"},
    G.BACKOFF: {**_QUIET, "backoff": "launch", Start: "ignore", Stop: "stop_now"},
    G.FAILED: {**_QUIET, Start: "start", ClearFailed: "start", Stop: "stop_now"},
}
"""state → (event type, or a TimerFired's kind) → handler (``GangMachine._on_<handler>``)."""


class GangMachine:
    """One gang. ``members`` in start order, leader first."""

    def __init__(self, name: str, members: tuple[str, ...], restart: Restart, *, generation: int = 1):
        if not members:
            raise ValueError(f"gang {name} has no members")
        self.name, self.members, self.restart = name, tuple(members), restart
        self.backoff = Backoff(restart)
        self.state, self.since, self.reason = GangState.STOPPED, 0.0, ""
        self.generation = generation  # of the members now running (or last run)
        self.restarts = 0  # gang restarts decided by the policy
        self._fresh = True  # nothing started yet: the first start uses `generation` as is
        self._gone: set[str] = set(members)  # members confirmed gone
        self._ready: set[str] = set()
        self._then = "stop"  # what STOPPING leads to: "stop", "start" (operator) or "restart"
        self._timers: dict[str, float] = {}

    @classmethod
    def from_gang(cls, gang: Gang, generation: int = 1) -> GangMachine:
        """The machine of a planned gang."""
        return cls(gang.name, gang.members, gang.restart, generation=generation)

    @property
    def gone(self) -> frozenset[str]:
        """Members confirmed gone."""
        return frozenset(self._gone)

    @property
    def timers(self) -> dict[str, float]:
        """Armed timers, kind → when (a copy)."""
        return dict(self._timers)

    def on(self, event: GangEvent, now: float) -> list[GangAction]:
        """Apply ``event`` at ``now``; raises IllegalTransition (state unchanged) if not accepted."""
        name = getattr(event, "name", None)
        handler = handler_for(GANG_TABLE, self.state, self._timers, event, f"gang {self.name}",
                              valid=name is None or name in self.members)
        return [] if handler is None else getattr(self, "_on_" + handler)(event, now)

    # --- handlers (named in GANG_TABLE) ---------------------------------------------------------

    def _on_ignore(self, ev: GangEvent, now: float) -> list[GangAction]:
        return []

    def _on_note_stopped(self, ev: MemberStopped, now: float) -> list[GangAction]:
        self._gone.add(ev.name)
        return []

    def _on_start(self, ev: Start | ClearFailed, now: float) -> list[GangAction]:
        self.backoff.reset()  # a fresh wish from the daemon or the operator
        return self._on_launch(ev, now)

    def _on_resume(self, ev: Resume, now: float) -> list[GangAction]:
        self.restarts = ev.restarts
        self.backoff.carry_over(ev.streak, ev.recent)
        if ev.failed:
            self._to(G.FAILED, now, ev.reason)
            return [Notify("gang-failed", f"gang {self.name} is still failed ({ev.reason}): "
                                          f"`dynamo-launch restart {self.name}` clears it")]
        if ev.backoff_until is not None and ev.backoff_until > now:
            self._to(G.BACKOFF, now, ev.reason)
            self._timers["backoff"] = ev.backoff_until
            wait = ev.backoff_until - now
            return [SetTimer("backoff", ev.backoff_until),
                    Notify("gang-restarting", f"gang {self.name} restarting in {wait:.3g}s", {"delay": wait})]
        return self._on_launch(ev, now)

    def _on_adopt(self, ev: GangAdopted, now: float) -> list[GangAction]:
        # The members' own machines are adopting their processes; wait for them to be ready.
        self.generation, self._fresh = max(self.generation, ev.generation), False
        self._gone.clear()
        self._ready.clear()
        self._to(G.STARTING, now, "adopted")
        return [Notify("gang-adopted", f"gang {self.name} adopted at generation {self.generation}",
                       {"generation": self.generation})]

    def _on_member_ready(self, ev: MemberReady, now: float) -> list[GangAction]:
        self._ready.add(ev.name)
        if len(self._ready) < len(self.members):
            return []
        self._to(G.RUNNING, now, "all members ready")
        self.backoff.on_healthy(now)
        return [Notify("gang-ready", f"gang {self.name} ready", {"generation": self.generation})]

    def _on_member_down(self, ev: MemberDown | MemberStopped, now: float) -> list[GangAction]:
        if isinstance(ev, MemberStopped):
            self._gone.add(ev.name)
        why = f"{ev.name} down: {ev.reason}" if isinstance(ev, MemberDown) else f"{ev.name} stopped"
        self.backoff.on_unhealthy(now)
        note = Notify("gang-restart", f"gang {self.name}: {why}; stopping every member",
                      {"member": ev.name, "reason": why, "generation": self.generation})
        return [note, *self._stop_all(now, "restart", why)]

    def _on_stop(self, ev: Stop, now: float) -> list[GangAction]:
        why = f"stop: {ev.reason}" if ev.reason else "stop"
        if self.state is G.STOPPING:
            self._then, self.reason = "stop", why  # already going down: now it ends in STOPPED
            return []
        return [Notify("gang-stopping", f"gang {self.name} stopping ({why})"), *self._stop_all(now, "stop", why)]

    def _on_start_after_stop(self, ev: Start, now: float) -> list[GangAction]:
        if self._then == "stop":  # a gang restart in progress starts again anyway
            self._then = "start"
        return []

    def _on_member_stopped(self, ev: MemberStopped, now: float) -> list[GangAction]:
        self._gone.add(ev.name)
        if len(self._gone) < len(self.members):
            return []
        if self._then == "stop":
            self._to(G.STOPPED, now, self.reason)
            return [Notify("gang-stopped", f"gang {self.name} stopped")]
        if self._then == "start":
            return self._on_start(ev, now)
        delay = self.backoff.next_restart(now)
        if delay is None:
            r = self.restart
            self._to(G.FAILED, now, f"{self.reason}; {r.max_restarts} restarts in {r.restart_window:g}s: giving up")
            return [Notify("gang-failed", f"gang {self.name} failed: {self.reason}")]
        self.restarts += 1
        note = Notify("gang-restarting", f"gang {self.name} restarting in {delay:g}s",
                      {"delay": delay, "attempt": self.backoff.attempts, "generation": self.generation + 1})
        if delay == 0:
            return [note, *self._on_launch(ev, now)]
        self._to(G.BACKOFF, now, self.reason)
        self._timers["backoff"] = now + delay
        return [note, SetTimer("backoff", now + delay)]

    def _on_stop_now(self, ev: Stop, now: float) -> list[GangAction]:
        out: list[GangAction] = [CancelTimer(k) for k in sorted(self._timers)]  # type: ignore[arg-type]
        self._timers.clear()
        self._to(G.STOPPED, now, f"stop: {ev.reason}" if ev.reason else "stop")
        return [*out, Notify("gang-stopped", f"gang {self.name} stopped")]

    def _on_launch(self, ev: object, now: float) -> list[GangAction]:
        """Start every member (leader first) at the next generation; all must be gone."""
        assert self._gone == set(self.members), "a member may still run: never start a new generation"
        if not self._fresh:
            self.generation += 1
        self._fresh = False
        self._gone.clear()
        self._ready.clear()
        self._to(G.STARTING, now, f"starting generation {self.generation}")
        return [Notify("gang-starting", f"gang {self.name} starting generation {self.generation}",
                       {"generation": self.generation}),
                *(StartMember(m, self.generation) for m in self.members)]

    # --- shared steps ---------------------------------------------------------------------------

    def _stop_all(self, now: float, then: str, why: str) -> list[GangAction]:
        """Enter STOPPING: stop every member not yet gone (workers first, leader last)."""
        self._to(G.STOPPING, now, why)
        self._then = then
        self._ready.clear()
        out: list[GangAction] = [StopMember(m) for m in reversed(self.members) if m not in self._gone]
        if len(self._gone) == len(self.members):  # e.g. a one-member gang whose member stopped
            out += self._on_member_stopped(MemberStopped(self.members[0]), now)
        return out

    def _to(self, state: GangState, now: float, reason: str) -> None:
        if state is not self.state:
            self.state, self.since = state, now
        self.reason = reason
