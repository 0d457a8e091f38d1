"""The per-process supervision state machine (DESIGN §4), pure: ``on(event, now) -> actions``.

Everything that decides a transition is the table :data:`TABLE` below: state → event →
handler. An event missing from it raises :class:`IllegalTransition` and changes
nothing. Reports that can legitimately arrive late (a probe result or an exit report
after the process is gone, a level signal like ``DepsReady``) are listed as explicit
``ignore`` entries. A ``TimerFired`` for a timer that is not armed (cancelled, or
re-armed at another time) is stale and ignored before the table is consulted.

Decisions, in one place:

- STARTING begins at ``Spawn``, not at ``Spawned``: from the moment we ask, a copy may
  exist. A ``Stop`` before ``Spawned`` kills it as soon as its pid is known.
- A restart always goes through WAITING (even with delay 0), so dependency gates are
  checked again: the runner sends ``DepsReady`` when they pass.
- "Clean" under ``on-failure`` is exit code 0. A TERM/KILL *we* sent is never judged
  by the policy: a Stop ends in STOPPED, a health kill is a failure by decision.
- ``never``: a clean exit ends in STOPPED, a failure in FAILED (visible in status).
- After ``HostBack(alive=True)`` or ``Adopted`` the process goes back to STARTING and
  must pass readiness again (or ``start_secs``): safe, and the same path as a spawn.
- The machine counts consecutive liveness failures (``failure_threshold``); a success
  resets the count.
- ``Start`` resets the backoff (a fresh wish); an operator restart is ``Stop`` then
  ``Start`` (a ``Start`` during STOPPING means "start again once stopped").
  ``ClearFailed`` is ``Start`` for a FAILED process.
- Gang members (``in_gang``) never restart themselves: they emit ``MemberDown`` and end
  in STOPPED; the gang machine then sends Stop/Start with the gang's generation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from ..model import Health, Restart, RestartPolicy
from ..plan.spec import ProbeKind, ProcessSpec
from .backoff import Backoff
from .events import (
    Action,
    Adopted,
    CancelTimer,
    ClearFailed,
    DepsReady,
    Event,
    Exited,
    HostBack,
    HostLost,
    IllegalTransition,
    Kill,
    MemberDown,
    Notify,
    ProbeResult,
    Resume,
    SetTimer,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    StartProbes,
    Stop,
    StopProbes,
    TimerFired,
    TimerKind,
    handler_for,
)

__all__ = ["ExitInfo", "MachineConfig", "ProcessMachine", "State", "TABLE"]


class State(str, enum.Enum):
    """Where a supervised process is (supervisord's states, plus WAITING and UNKNOWN)."""

    STOPPED = "stopped"  # not wanted, or ended cleanly
    WAITING = "waiting"  # wanted; its dependencies are not ready yet
    STARTING = "starting"  # spawn asked for; not ready yet
    READY = "ready"  # a real readiness probe passed
    RUNNING = "running"  # no real probe: alive for start_secs
    STOPPING = "stopping"  # TERM sent, KILL after stop_timeout
    BACKOFF = "backoff"  # waiting out the delay before a restart
    FAILED = "failed"  # restart budget spent (or a failure under `never`)
    UNKNOWN = "unknown"  # host unreachable: it may still run; never start another copy


S = State
# Late reports and level signals: accepted and ignored wherever they carry no news.
_LATE: dict[object, str] = {ProbeResult: "ignore", DepsReady: "ignore", HostBack: "ignore"}
_IDLE = {**_LATE, Exited: "ignore", HostLost: "ignore"}  # no process: an exit report is stale
_LIVE = {**_LATE, Exited: "exited", HostLost: "host_lost", Stop: "stop", Start: "ignore"}

TABLE: dict[State, dict[object, str]] = {
    S.STOPPED: {**_IDLE, Start: "start", Stop: "ignore", Adopted: "adopt", Resume: "resume"},
    S.WAITING: {**_IDLE, DepsReady: "spawn", Start: "ignore", Stop: "stop_now"},
    S.STARTING: {**_LIVE, Spawned: "spawned", SpawnFailed: "spawn_failed", ProbeResult: "readiness",
                 "start_secs": "running", "startup": "startup_timeout"},
    S.READY: {**_LIVE, ProbeResult: "liveness"},
    S.RUNNING: {**_LIVE, ProbeResult: "liveness"},
    S.STOPPING: {**_LATE, Exited: "exited", HostLost: "host_lost", Spawned: "spawned_kill",
                 SpawnFailed: "spawn_failed", Stop: "stop", Start: "start_after_stop", "stop_kill": "escalate"},
    S.BACKOFF: {**_IDLE, "backoff": "backoff_over", Start: "ignore", Stop: "stop_now"},
    S.FAILED: {**_IDLE, Start: "start", ClearFailed: "start", Stop: "stop_now"},
    S.UNKNOWN: {**_LATE, HostBack: "host_back", Exited: "exited", HostLost: "ignore", Spawned: "note_pid",
                SpawnFailed: "ignore", Start: "want", Stop: "want"},
}
"""state → (event type, or a TimerFired's kind) → handler (``ProcessMachine._on_<handler>``)."""


@dataclass(frozen=True)
class MachineConfig:
    """What a process machine needs from the plan."""

    restart: Restart = Restart()
    start_secs: float = Health.start_secs
    startup_timeout: float = Health.startup_timeout
    probe_ready: bool = False  # a real readiness probe (http/tcp/command/ray), not just "alive"
    liveness: bool = False
    failure_threshold: int = Health.failure_threshold  # consecutive liveness failures before the kill
    never_give_up: bool = False
    in_gang: bool = False
    stop_timeout: float = Restart.stop_timeout

    @classmethod
    def from_spec(cls, spec: ProcessSpec) -> MachineConfig:
        """The configuration of ``spec``'s machine."""
        return cls(
            restart=spec.restart,
            start_secs=spec.start_secs,
            startup_timeout=spec.startup_timeout,
            probe_ready=spec.readiness.kind is not ProbeKind.PROCESS,
            liveness=spec.liveness is not None,
            failure_threshold=spec.liveness.failure_threshold if spec.liveness else Health.failure_threshold,
            never_give_up=spec.never_give_up,
            in_gang=spec.group is not None,
            stop_timeout=spec.restart.stop_timeout,
        )


@dataclass(frozen=True)
class ExitInfo:
    """How the last process ended (``code`` and ``signal`` both None: unknown)."""

    code: int | None
    signal: int | None
    at: float


class ProcessMachine:
    """One supervised process. Feed events with :meth:`on`; carry out the returned actions."""

    def __init__(self, config: MachineConfig, *, name: str = "", generation: int = 1):
        self.config, self.name = config, name
        self.backoff = Backoff(config.restart, config.never_give_up)
        self.state, self.since, self.reason = State.STOPPED, 0.0, ""
        self.generation = generation  # of the current (or last) copy; the next respawn is +1
        self.restarts = 0  # restarts decided by the policy (operator starts not counted)
        self.pid: int | None = None
        self.last_exit: ExitInfo | None = None
        self.wanted = False  # the daemon wants it running (Start) rather than stopped (Stop)
        self._fresh = True  # no copy spawned yet: the first Spawn uses `generation` as is
        self._start_gen: int | None = None  # the gang's generation for the next Spawn
        self._then: Literal["stop", "start", "restart"] = "stop"  # what STOPPING leads to
        self._timers: dict[str, float] = {}
        self._probing: str | None = None
        self._fails = 0

    @classmethod
    def from_spec(cls, spec: ProcessSpec) -> ProcessMachine:
        """A machine for ``spec`` (named after it, at its planned generation)."""
        return cls(MachineConfig.from_spec(spec), name=spec.name, generation=spec.generation)

    @property
    def timers(self) -> dict[str, float]:
        """Armed timers, kind → when (a copy)."""
        return dict(self._timers)

    def on(self, event: Event, now: float) -> list[Action]:
        """Apply ``event`` at time ``now``; raises IllegalTransition (state unchanged) if not accepted."""
        handler = handler_for(TABLE, self.state, self._timers, event, self.name or "process")
        return [] if handler is None else getattr(self, "_on_" + handler)(event, now)

    # --- handlers (named in TABLE) --------------------------------------------------------------

    def _on_ignore(self, ev: Event, now: float) -> list[Action]:
        return []

    def _on_start(self, ev: Start | ClearFailed, now: float) -> list[Action]:
        self._check_gen(ev)
        self.backoff.reset()
        self.wanted, self._start_gen = True, getattr(ev, "generation", None)
        self._to(S.WAITING, now, "start requested")
        return [Notify("starting", f"{self.name} starting")]

    def _on_resume(self, ev: Resume, now: float) -> list[Action]:
        self.restarts = ev.restarts
        if ev.failed:
            self.backoff.carry_over(ev.streak, ev.recent)
            self._to(S.FAILED, now, ev.reason)
            return [Notify("failed", f"{self.name} is still failed ({ev.reason}): "
                                     f"`dynamo-launch restart {self.name}` clears it")]
        out = self._on_start(Start(), now)
        self.backoff.carry_over(ev.streak, ev.recent)
        if ev.backoff_until is None or ev.backoff_until <= now:
            return out
        self._to(S.BACKOFF, now, ev.reason)
        wait = ev.backoff_until - now
        return [self._set("backoff", ev.backoff_until),
                Notify("restarting", f"{self.name} {ev.reason}: restarting in {wait:.3g}s", {"delay": wait})]

    def _on_want(self, ev: Start | Stop, now: float) -> list[Action]:
        # Host unreachable: only remember the wish; HostBack acts on it.
        self._check_gen(ev)
        self.wanted = isinstance(ev, Start)
        self._start_gen = ev.generation if isinstance(ev, Start) else None
        return []

    def _on_spawn(self, ev: DepsReady, now: float) -> list[Action]:
        if self._start_gen is not None:
            self.generation = self._start_gen
        elif not self._fresh:
            self.generation += 1
        self._fresh, self._start_gen, self._fails = False, None, 0
        self._to(S.STARTING, now, "spawning")
        return [Spawn(self.generation)]

    def _on_spawned(self, ev: Spawned, now: float) -> list[Action]:
        self._check_no_pid(ev)
        self.pid = ev.pid
        data = {"pid": ev.pid, "generation": self.generation}
        return [Notify("started", f"{self.name} started, pid {ev.pid}", data), *self._await_ready(now)]

    def _on_spawned_kill(self, ev: Spawned, now: float) -> list[Action]:
        self._check_no_pid(ev)  # Stop came while the spawn was in flight: kill it now
        self.pid = ev.pid
        return [Kill("TERM"), self._set("stop_kill", now + self.config.stop_timeout)]

    def _on_note_pid(self, ev: Spawned, now: float) -> list[Action]:
        self._check_no_pid(ev)
        self.pid = ev.pid
        return []

    def _on_spawn_failed(self, ev: SpawnFailed, now: float) -> list[Action]:
        self._check_no_pid(ev)
        out: list[Action] = [Notify("spawn-failed", f"{self.name} could not start: {ev.reason}", {"reason": ev.reason})]
        if self.state is S.STOPPING:
            return out + self._settle(now)
        return out + self._policy(False, f"spawn failed: {ev.reason}", now)

    def _on_readiness(self, ev: ProbeResult, now: float) -> list[Action]:
        if ev.kind != "readiness" or not ev.ok or not self.config.probe_ready:
            return []  # not ready yet (the startup deadline decides), or a stale result
        out = self._cancel_all()
        self._to(S.READY, now, "readiness probe passed")
        return [*out, *self._liveness_or_none(), Notify("ready", f"{self.name} ready", {"generation": self.generation})]

    def _on_running(self, ev: TimerFired, now: float) -> list[Action]:
        out = self._cancel_all()
        self._to(S.RUNNING, now, f"alive for {self.config.start_secs:g}s")
        data = {"generation": self.generation}
        return [*out, *self._liveness_or_none(), Notify("running", f"{self.name} running", data)]

    def _on_liveness(self, ev: ProbeResult, now: float) -> list[Action]:
        if ev.kind != "liveness":
            return []  # a readiness result that was in flight when we became ready
        self._fails = 0 if ev.ok else self._fails + 1
        if self._fails < self.config.failure_threshold:
            return []
        why = f"liveness failed {self._fails} times" + (f": {ev.detail}" if ev.detail else "")
        self.backoff.on_unhealthy(now)
        return [Notify("unhealthy", f"{self.name} {why}", {"detail": ev.detail}), *self._kill(now, "restart", why)]

    def _on_startup_timeout(self, ev: TimerFired, now: float) -> list[Action]:
        why = f"not ready within {self.config.startup_timeout:g}s"
        return [Notify("unhealthy", f"{self.name} {why}"), *self._kill(now, "restart", why)]

    def _on_stop(self, ev: Stop, now: float) -> list[Action]:
        self.wanted, self._then, self._start_gen = False, "stop", None
        why = f"stop: {ev.reason}" if ev.reason else "stop"
        if self.state is S.STOPPING:
            self.reason = why  # already on its way down; now it ends in STOPPED
            return []
        return [Notify("stopping", f"{self.name} stopping ({why})"), *self._kill(now, "stop", why)]

    def _on_start_after_stop(self, ev: Start, now: float) -> list[Action]:
        self._check_gen(ev)
        if self._then != "restart":  # a health kill restarts anyway, by policy
            self.wanted, self._then, self._start_gen = True, "start", ev.generation
        return []

    def _on_escalate(self, ev: TimerFired, now: float) -> list[Action]:
        return [Kill("KILL"), Notify("stopping", f"{self.name} ignored TERM for {self.config.stop_timeout:g}s: KILL")]

    def _on_stop_now(self, ev: Stop, now: float) -> list[Action]:
        self.wanted, self._start_gen = False, None
        out = self._cancel_all()
        self._to(S.STOPPED, now, f"stop: {ev.reason}" if ev.reason else "stop")
        return [*out, Notify("stopped", f"{self.name} stopped")]

    def _on_backoff_over(self, ev: TimerFired, now: float) -> list[Action]:
        self._to(S.WAITING, now, "backoff over")
        return []

    def _on_exited(self, ev: Exited, now: float) -> list[Action]:
        if ev.pid is not None and ev.pid != self.pid:
            return []  # about another (older) copy
        return self._gone(ev.code, ev.signal, now)

    def _on_host_lost(self, ev: HostLost, now: float) -> list[Action]:
        # `wanted` survives: it says what to do once the host answers again.
        self.backoff.on_unhealthy(now)
        out = self._cancel_all()
        self._to(S.UNKNOWN, now, "host unreachable")
        return [*out, Notify("unknown", f"{self.name}: host unreachable, state unknown")]

    def _on_host_back(self, ev: HostBack, now: float) -> list[Action]:
        if not ev.alive and not ev.spawned and self.pid is None and not self.config.in_gang:
            # The start never reached the host: nothing ran, so nothing died or is restarted.
            # (A gang member's restart is its gang's decision, generation and all.)
            if not self.wanted:
                self._to(S.STOPPED, now, "host back; its start had not reached it")
                return [Notify("stopped", f"{self.name} stopped")]
            self._to(S.WAITING, now, "host back; its start had not reached it: starting again")
            return [Notify("back", f"{self.name}: host back, the start had not reached it: starting again")]
        if not ev.alive:
            return [Notify("back", f"{self.name}: host back, process gone"), *self._gone(ev.code, ev.signal, now)]
        if ev.pid is None and self.pid is None:
            raise IllegalTransition(self.name or "process", self.state.name, ev)  # alive, but which pid?
        self.pid = ev.pid if ev.pid is not None else self.pid
        back = Notify("back", f"{self.name}: host back, process alive", {"pid": self.pid})
        if not self.wanted:
            return [back, *self._kill(now, "stop", "stop requested while host was unreachable")]
        self._fails = 0
        self._to(S.STARTING, now, "host back: re-probing")
        return [back, *self._await_ready(now)]

    def _on_adopt(self, ev: Adopted, now: float) -> list[Action]:
        if ev.generation < self.generation:
            raise IllegalTransition(self.name or "process", self.state.name, ev)
        self.pid, self.generation, self._fresh, self.wanted, self._fails = ev.pid, ev.generation, False, True, 0
        self._to(S.STARTING, now, "adopted: re-probing")
        data = {"pid": ev.pid, "generation": ev.generation}
        return [Notify("adopted", f"{self.name} adopted, pid {ev.pid}", data), *self._await_ready(now)]

    # --- shared steps ---------------------------------------------------------------------------

    def _gone(self, code: int | None, signal: int | None, now: float) -> list[Action]:
        """The process is confirmed gone: decide what follows."""
        self.pid, self.last_exit = None, ExitInfo(code, signal, now)
        how = f"code {code}" if code is not None else (f"signal {signal}" if signal is not None else "unknown status")
        data = {"code": code, "signal": signal, "generation": self.generation}
        out: list[Action] = [*self._cancel_all(), Notify("exited", f"{self.name} exited ({how})", data)]
        if self.state is S.STOPPING:
            return out + self._settle(now)
        if not self.wanted:  # a Stop came while the host was unreachable
            self._to(S.STOPPED, now, f"exited ({how})")
            return out + [Notify("stopped", f"{self.name} stopped")]
        return out + self._policy(code == 0, f"exited ({how})", now)

    def _settle(self, now: float) -> list[Action]:
        """STOPPING is over (the process is gone): stop, start again, or restart by policy."""
        if self._then == "stop":
            self._to(S.STOPPED, now, self.reason)
            return [Notify("stopped", f"{self.name} stopped")]
        if self._then == "start":
            self.backoff.reset()
            self._to(S.WAITING, now, "restart requested")
            return [Notify("starting", f"{self.name} starting")]
        if self.config.in_gang:  # MemberDown went out with the kill
            self._to(S.STOPPED, now, self.reason)
            return []
        return self._policy(False, self.reason, now)

    def _policy(self, clean: bool, why: str, now: float) -> list[Action]:
        """An unexpected end (or a health kill): restart, stop or fail per the restart policy."""
        if self.config.in_gang:  # the gang decides, for all its members at once
            self._to(S.STOPPED, now, why)
            return [MemberDown(why)]
        policy = self.config.restart.policy
        if policy is RestartPolicy.NEVER or (policy is RestartPolicy.ON_FAILURE and clean):
            if clean:
                self._to(S.STOPPED, now, why)
                return [Notify("stopped", f"{self.name} {why}")]
            self._to(S.FAILED, now, why)
            return [Notify("failed", f"{self.name} failed: {why} (restart policy never)")]
        delay = self.backoff.next_restart(now)
        if delay is None:
            r = self.config.restart
            self._to(S.FAILED, now, f"{why}; {r.max_restarts} restarts in {r.restart_window:g}s: giving up")
            return [Notify("failed", f"{self.name} failed: {self.reason}")]
        self.restarts += 1
        note = Notify("restarting", f"{self.name} {why}: restarting in {delay:g}s",
                      {"delay": delay, "attempt": self.backoff.attempts})
        if delay == 0:
            self._to(S.WAITING, now, why)
            return [note]
        self._to(S.BACKOFF, now, why)
        return [self._set("backoff", now + delay), note]

    def _kill(self, now: float, then: Literal["stop", "restart"], why: str) -> list[Action]:
        """Enter STOPPING: TERM now, KILL at the deadline (once the pid is known)."""
        out = self._cancel_all()
        self._to(S.STOPPING, now, why)
        self._then = then
        if then == "restart" and self.config.in_gang:
            out.append(MemberDown(why))  # tell the gang now, so it stops the others in parallel
        if self.pid is not None:
            out += [Kill("TERM"), self._set("stop_kill", now + self.config.stop_timeout)]
        return out

    def _await_ready(self, now: float) -> list[Action]:
        """Arm the startup deadline and the readiness probes, or the start_secs timer."""
        out: list[Action] = [self._set("startup", now + self.config.startup_timeout)]
        if self.config.probe_ready:
            self._probing = "readiness"
            return out + [StartProbes("readiness")]
        return out + [self._set("start_secs", now + self.config.start_secs)]

    def _liveness_or_none(self) -> list[Action]:
        if self.config.liveness:
            self._probing = "liveness"
            return [StartProbes("liveness")]
        return self._stop_probes()

    def _to(self, state: State, now: float, reason: str) -> None:
        if state is not self.state:
            self.state, self.since = state, now
        self.reason = reason
        if state in (S.READY, S.RUNNING):
            self.backoff.on_healthy(now)

    def _set(self, kind: TimerKind, at: float) -> SetTimer:
        self._timers[kind] = at
        return SetTimer(kind, at)

    def _cancel_all(self) -> list[Action]:
        out: list[Action] = [CancelTimer(k) for k in sorted(self._timers)]  # type: ignore[arg-type]
        self._timers.clear()
        return out + self._stop_probes()

    def _stop_probes(self) -> list[Action]:
        was, self._probing = self._probing, None
        return [StopProbes()] if was else []

    def _check_gen(self, ev: Event) -> None:
        gen = getattr(ev, "generation", None)
        if gen is not None and gen < self.generation + (not self._fresh):  # never reuse or go back
            raise IllegalTransition(self.name or "process", self.state.name, ev)

    def _check_no_pid(self, ev: Event) -> None:
        if self.pid is not None:  # a second copy reported: never accept it
            raise IllegalTransition(self.name or "process", self.state.name, ev)
