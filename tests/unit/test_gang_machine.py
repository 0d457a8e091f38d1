"""The gang machine: edges of its table, then whole histories through gang + member machines."""

from __future__ import annotations

import dataclasses
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_launch.errors import IllegalTransition
from dynamo_launch.model import Restart
from dynamo_launch.plan.spec import Gang
from dynamo_launch.supervisor import (
    GANG_TABLE,
    CancelTimer,
    ClearFailed,
    DepsReady,
    Exited,
    GangAdopted,
    GangMachine,
    GangState,
    HostBack,
    HostLost,
    Kill,
    MachineConfig,
    MemberDown,
    MemberReady,
    MemberStopped,
    Notify,
    ProbeResult,
    ProcessMachine,
    Resume,
    SetTimer,
    Spawn,
    Spawned,
    Start,
    StartMember,
    StartProbes,
    State,
    Stop,
    StopMember,
    TimerFired,
)

G = GangState
FAST = Restart(backoff_initial=1.0, backoff_max=8.0, reset_after=600.0, max_restarts=3, restart_window=600.0,
               stop_timeout=30.0)
MEMBERS = ("leader", "w1", "w2")


def gang(restart: Restart = FAST) -> GangMachine:
    return GangMachine("g", MEMBERS, restart)


def kinds(actions: list) -> list[str]:
    return [a.kind for a in actions if isinstance(a, Notify)]


def starts(actions: list) -> list[StartMember]:
    return [a for a in actions if isinstance(a, StartMember)]


def running(g: GangMachine, now: float = 0.0) -> GangMachine:
    g.on(Start(), now)
    for m in MEMBERS:
        g.on(MemberReady(m), now)
    assert g.state is G.RUNNING
    return g


def down(g: GangMachine, now: float, who: str = "w1") -> list:
    """A member dies and every member is then confirmed gone; the actions of the last report."""
    g.on(MemberDown("exited (code 1)", name=who), now)
    out: list = []
    for m in MEMBERS:
        out = g.on(MemberStopped(m), now)
    return out


# --- edges --------------------------------------------------------------------------------------


def test_stopped_to_starting_on_start_starts_every_member_leader_first() -> None:
    g = gang()
    actions = g.on(Start(), 0.0)
    assert starts(actions) == [StartMember("leader", 1), StartMember("w1", 1), StartMember("w2", 1)]
    assert g.state is G.STARTING and kinds(actions) == ["gang-starting"]


def test_starting_to_running_when_every_member_ready() -> None:
    g = gang()
    g.on(Start(), 0.0)
    assert g.on(MemberReady("leader"), 1.0) == [] and g.on(MemberReady("leader"), 1.0) == []
    assert g.on(MemberReady("w1"), 2.0) == [] and g.state is G.STARTING
    assert kinds(g.on(MemberReady("w2"), 3.0)) == ["gang-ready"] and (g.state, g.since) == (G.RUNNING, 3.0)


def test_running_to_stopping_on_member_down_stops_every_member() -> None:
    g = running(gang())
    actions = g.on(MemberDown("exited (code 1)", name="w1"), 5.0)
    assert kinds(actions) == ["gang-restart"] and g.state is G.STOPPING
    assert [a for a in actions if isinstance(a, StopMember)] == [StopMember("w2"), StopMember("w1"),
                                                                 StopMember("leader")]


def test_running_to_stopping_on_member_stopped_skips_it() -> None:
    g = running(gang())
    actions = g.on(MemberStopped("w2"), 5.0)
    assert [a for a in actions if isinstance(a, StopMember)] == [StopMember("w1"), StopMember("leader")]


def test_starting_to_stopping_on_member_down_during_start() -> None:
    g = gang()
    g.on(Start(), 0.0)
    g.on(MemberReady("leader"), 1.0)
    g.on(MemberDown("not ready within 600s", name="w2"), 600.0)
    assert g.state is G.STOPPING


def test_stopping_waits_for_every_member_before_starting() -> None:
    g = running(gang())
    g.on(MemberDown("x", name="w1"), 5.0)
    assert g.on(MemberStopped("w1"), 6.0) == [] and g.on(MemberStopped("leader"), 7.0) == []
    assert g.on(MemberDown("late", name="w2"), 8.0) == [] and g.state is G.STOPPING  # down again: still there
    assert starts(g.on(MemberStopped("w2"), 9.0)) == [StartMember(m, 2) for m in MEMBERS]


def test_stopping_to_starting_next_generation_first_restart_immediate() -> None:
    g = running(gang())
    actions = down(g, 5.0)
    assert kinds(actions) == ["gang-restarting", "gang-starting"] and actions[0].data["delay"] == 0
    assert g.state is G.STARTING and g.generation == 2 and g.restarts == 1


def test_stopping_to_backoff_on_second_restart() -> None:
    g = running(gang())
    down(g, 5.0)
    actions = down(g, 6.0)
    assert SetTimer("backoff", 7.0) in actions and starts(actions) == [] and g.state is G.BACKOFF


def test_backoff_to_starting_on_timer() -> None:
    g = running(gang())
    down(g, 5.0)
    down(g, 6.0)
    assert starts(g.on(TimerFired("backoff", 7.0), 7.0)) == [StartMember(m, 3) for m in MEMBERS]


def test_stopping_to_failed_after_budget_exhausted() -> None:
    g = running(gang())
    for t in range(3):
        down(g, float(t))
        if g.state is G.BACKOFF:
            g.on(TimerFired("backoff"), float(t))
    actions = down(g, 4.0)
    assert kinds(actions) == ["gang-failed"] and g.state is G.FAILED and starts(actions) == []


def test_failed_to_starting_on_clear_failed() -> None:
    g = gang(Restart(max_restarts=0))
    running(g)
    down(g, 1.0)
    assert g.state is G.FAILED
    assert starts(g.on(ClearFailed(), 2.0)) == [StartMember(m, 2) for m in MEMBERS]


def test_running_to_stopping_on_stop_then_stopped_when_all_gone() -> None:
    g = running(gang())
    assert kinds(g.on(Stop("down"), 1.0)) == ["gang-stopping"] and g.state is G.STOPPING
    for m in MEMBERS:
        actions = g.on(MemberStopped(m), 2.0)
    assert kinds(actions) == ["gang-stopped"] and g.state is G.STOPPED and g.restarts == 0


def test_stopping_stop_during_gang_restart_ends_stopped() -> None:
    g = running(gang())
    g.on(MemberDown("x", name="w1"), 1.0)
    g.on(Stop("down"), 1.5)
    for m in MEMBERS:
        g.on(MemberStopped(m), 2.0)
    assert g.state is G.STOPPED


def test_stopping_start_after_stop_starts_again_once_all_gone() -> None:
    g = running(gang())
    g.on(Stop("restart"), 1.0)
    assert g.on(Start(), 1.0) == []
    for m in MEMBERS:
        actions = g.on(MemberStopped(m), 2.0)
    assert starts(actions) == [StartMember(m, 2) for m in MEMBERS] and g.restarts == 0


def test_backoff_to_stopped_on_stop() -> None:
    g = running(gang())
    down(g, 1.0)
    down(g, 2.0)
    assert g.on(Stop(), 2.5)[0] == CancelTimer("backoff") and g.state is G.STOPPED
    assert g.on(TimerFired("backoff"), 3.0) == []  # stale


def test_stopped_to_starting_on_adopted() -> None:
    g = gang()
    assert kinds(g.on(GangAdopted(4), 0.0)) == ["gang-adopted"] and g.state is G.STARTING
    running_actions = [g.on(MemberReady(m), 1.0) for m in MEMBERS]
    assert g.state is G.RUNNING and not any(starts(a) for a in running_actions)
    assert starts(down(g, 5.0)) == [StartMember(m, 5) for m in MEMBERS]


def test_healthy_window_resets_the_gang_streak() -> None:
    g = running(gang())
    down(g, 1.0)
    down(g, 2.0)
    g.on(TimerFired("backoff"), 3.0)
    for m in MEMBERS:
        g.on(MemberReady(m), 3.0)
    actions = down(g, 3.0 + 600.0)
    assert actions[0].data["delay"] == 0


def test_unknown_member_is_illegal() -> None:
    g = running(gang())
    with pytest.raises(IllegalTransition):
        g.on(MemberDown("x", name="nobody"), 1.0)
    assert g.state is G.RUNNING


def test_member_ready_while_all_are_gone_is_illegal() -> None:
    g = running(gang())
    down(g, 1.0)
    down(g, 2.0)
    with pytest.raises(IllegalTransition):
        g.on(MemberReady("leader"), 2.5)
    assert g.state is G.BACKOFF


def test_every_gang_table_handler_exists() -> None:
    for row in GANG_TABLE.values():
        for handler in row.values():
            assert callable(getattr(GangMachine, "_on_" + handler))


def test_from_gang() -> None:
    g = GangMachine.from_gang(Gang("rep0", ("a", "b"), FAST), generation=3)
    assert (g.name, g.members, g.generation) == ("rep0", ("a", "b"), 3)


# --- histories through both machines (a tiny pure runner) ----------------------------------------


class Driver:
    """Routes actions between a gang and its members' machines, honcho-style, with a fake clock.

    Machines' events go through one FIFO queue: a machine's actions are all carried out
    before anything they cause is fed back (the runner's contract). Processes obey TERM
    unless ``stubborn``; readiness passes at once; workers wait for the leader.
    """

    def __init__(self, restart: Restart = FAST, stubborn: frozenset[str] = frozenset()):
        self.gang = GangMachine("g", MEMBERS, restart)
        cfg = MachineConfig(restart=restart, probe_ready=True, in_gang=True, stop_timeout=restart.stop_timeout)
        self.members = {n: ProcessMachine(cfg, name=n) for n in MEMBERS}
        self.alive: dict[str, tuple[int, int]] = {}  # member → (pid, generation) of its live process
        self.timers: dict[tuple[str, str], float] = {}
        self.queue: deque[tuple[str, object]] = deque()
        self.history: list[str] = []
        self.now, self.next_pid, self.stubborn = 0.0, 100, stubborn

    def send(self, target: str, event: object) -> None:
        self.queue.append((target, event))
        self.run()

    def run(self) -> None:
        while self.queue:
            who, ev = self.queue.popleft()
            if who == "gang":
                for a in self.gang.on(ev, self.now):  # type: ignore[arg-type]
                    self.gang_action(a)
            else:
                self.member_event(who, ev)
            self.gates()

    def member_event(self, name: str, ev: object) -> None:
        m = self.members[name]
        before = m.state
        for a in m.on(ev, self.now):  # type: ignore[arg-type]
            self.member_action(name, a)
        if m.state is not before and m.state in (State.READY, State.RUNNING):
            self.queue.append(("gang", MemberReady(name)))
        elif m.state is not before and m.state is State.STOPPED:
            self.queue.append(("gang", MemberStopped(name)))

    def gang_action(self, a: object) -> None:
        if isinstance(a, StartMember):
            assert not self.alive, f"{a} while {self.alive} still run"  # nothing of any generation survives
            self.history.append(f"start {a.name} g{a.generation}")
            self.queue.append((a.name, Start(generation=a.generation)))
        elif isinstance(a, StopMember):
            self.queue.append((a.name, Stop("gang")))
        elif isinstance(a, SetTimer):
            self.timers[("gang", a.kind)] = a.at
        elif isinstance(a, CancelTimer):
            self.timers.pop(("gang", a.kind), None)
        elif isinstance(a, Notify):
            self.history.append(a.kind)

    def member_action(self, name: str, a: object) -> None:
        if isinstance(a, Spawn):
            assert name not in self.alive, f"second copy of {name}"
            self.next_pid += 1
            self.alive[name] = (self.next_pid, a.generation)
            self.history.append(f"spawn {name} g{a.generation}")
            self.queue.append((name, Spawned(self.next_pid)))
        elif isinstance(a, StartProbes) and a.kind == "readiness":
            self.queue.append((name, ProbeResult("readiness", True)))
        elif isinstance(a, Kill):
            self.history.append(f"kill {name} {a.signal}")
            if a.signal == "KILL" or name not in self.stubborn:
                self.exit(name, None, 9 if a.signal == "KILL" else 15)
        elif isinstance(a, MemberDown):
            self.queue.append(("gang", dataclasses.replace(a, name=name)))
        elif isinstance(a, SetTimer):
            self.timers[(name, a.kind)] = a.at
        elif isinstance(a, CancelTimer):
            self.timers.pop((name, a.kind), None)

    def exit(self, name: str, code: int | None, signal: int | None = None) -> None:
        pid, _ = self.alive.pop(name)
        self.history.append(f"exit {name}")
        self.queue.append((name, Exited(code, signal, pid=pid)))

    def gates(self) -> None:
        """The runner's dependency gates: the leader first, workers once the leader is ready."""
        leader_ready = self.members["leader"].state is State.READY
        for n, m in self.members.items():
            if m.state is State.WAITING and (n == "leader" or leader_ready):
                self.queue.append((n, DepsReady()))

    def crash(self, name: str, code: int = 1) -> None:
        self.exit(name, code)
        self.run()

    def advance(self, to: float) -> None:
        """Move the clock, firing due timers in time order."""
        while due := sorted((at, key) for key, at in self.timers.items() if at <= to):
            at, (who, kind) = due[0]
            del self.timers[(who, kind)]
            self.now = at
            self.send(who, TimerFired(kind, at))  # type: ignore[arg-type]
        self.now = to


def test_history_kill_one_member_restarts_the_whole_gang_at_generation_2() -> None:
    d = Driver()
    d.send("gang", Start())
    assert d.history == ["gang-starting", "start leader g1", "start w1 g1", "start w2 g1", "spawn leader g1",
                         "spawn w1 g1", "spawn w2 g1", "gang-ready"]
    d.history.clear()
    d.now = 100.0
    d.crash("w1")
    assert d.history == ["exit w1", "gang-restart", "kill w2 TERM", "exit w2", "kill leader TERM", "exit leader",
                         "gang-restarting", "gang-starting", "start leader g2", "start w1 g2", "start w2 g2",
                         "spawn leader g2", "spawn w1 g2", "spawn w2 g2", "gang-ready"]
    assert {gen for _, gen in d.alive.values()} == {2} and d.gang.generation == 2
    assert all(m.generation == 2 and m.state is State.READY for m in d.members.values())


def test_history_stubborn_member_is_killed_before_anything_restarts() -> None:
    d = Driver(stubborn=frozenset({"w2"}))
    d.send("gang", Start())
    d.history.clear()
    d.now = 100.0
    d.crash("leader")
    assert d.gang.state is G.STOPPING and "w2" in d.alive and "start leader g2" not in d.history
    d.advance(129.0)
    assert d.gang.state is G.STOPPING
    d.advance(130.0)  # stop_timeout: KILL, then the restart
    assert d.history.index("kill w2 KILL") < d.history.index("exit w2") < d.history.index("start leader g2")
    assert d.gang.state is G.RUNNING and d.gang.generation == 2


def test_history_member_on_lost_host_holds_the_restart_until_it_is_known_gone() -> None:
    d = Driver()
    d.send("gang", Start())
    d.send("w2", HostLost())
    d.crash("w1")
    assert d.gang.state is G.STOPPING and d.members["w2"].state is State.UNKNOWN  # may still hold its GPUs
    assert d.gang.gone == {"w1", "leader"}
    d.alive.pop("w2")  # it died while its host was unreachable
    d.send("w2", HostBack(alive=False))
    assert d.gang.state is G.RUNNING and d.gang.generation == 2


def test_history_budget_applies_to_the_gang_as_a_unit() -> None:
    d = Driver(restart=dataclasses.replace(FAST, max_restarts=2))
    d.send("gang", Start())
    for i, who in enumerate(("w1", "w2", "leader")):  # a different member each time
        d.now = 100.0 * (i + 1)
        d.crash(who)
        d.advance(d.now + 10.0)
    assert d.gang.state is G.FAILED and d.gang.restarts == 2 and not d.alive
    assert all(m.state is State.STOPPED and m.restarts == 0 for m in d.members.values())
    d.send("gang", ClearFailed())
    assert d.gang.state is G.RUNNING and d.gang.generation == 4


# --- property: random gang histories -------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3 * 85 - 1), min_size=40, max_size=80))
def test_random_histories_start_members_only_when_all_are_gone(steps: list[int]) -> None:
    g = gang(dataclasses.replace(FAST, max_restarts=2))
    reported_gone, now, last_gen = set(MEMBERS), 0.0, 0
    for step in steps:
        pick, name = divmod(step, len(MEMBERS))
        member = MEMBERS[name]
        now += float(pick % 3)
        choices: list = [Start(), Stop("x"), ClearFailed(), MemberReady(member), MemberDown("x", name=member),
                         MemberStopped(member), GangAdopted(g.generation + 1)]
        legal = [e for e in choices if type(e) in GANG_TABLE[g.state]]
        legal += [TimerFired(k, at) for k, at in g.timers.items()]  # type: ignore[arg-type]
        onward = {G.STOPPED: Start(), G.STARTING: MemberReady(member), G.RUNNING: MemberDown("x", name=member),
                  G.STOPPING: MemberStopped(member), G.FAILED: ClearFailed()}.get(g.state, legal[-1])
        # Half the steps move the gang on (a whole restart takes several), most others are legal noise.
        event = onward if pick < 42 else legal[pick % len(legal)] if pick < 72 else choices[pick % len(choices)]
        before = repr(vars(g)) + repr(vars(g.backoff))
        try:
            actions = g.on(event, now)
        except IllegalTransition:
            assert repr(vars(g)) + repr(vars(g.backoff)) == before
            continue
        if isinstance(event, MemberStopped):
            reported_gone.add(event.name)
        batch = starts(actions)
        if batch:
            assert reported_gone == set(MEMBERS)
            assert [s.name for s in batch] == list(MEMBERS) and {s.generation for s in batch} == {g.generation}
            assert g.generation > last_gen
            last_gen, reported_gone = g.generation, set()
        if isinstance(event, GangAdopted):
            reported_gone = set()


def test_gang_stopped_to_failed_on_resume_failed() -> None:
    m = gang()
    actions = m.on(Resume(restarts=3, streak=3, recent=(1.0, 2.0, 3.0), failed=True, reason="w1 down"), 10.0)
    assert kinds(actions) == ["gang-failed"] and m.state is G.FAILED and m.restarts == 3
    assert not any(isinstance(a, StartMember) for a in actions)


def test_gang_stopped_to_backoff_on_resume_then_starts_every_member() -> None:
    m = gang()
    actions = m.on(Resume(restarts=1, streak=2, recent=(1.0,), reason="w1 down", backoff_until=14.0), 10.0)
    assert SetTimer("backoff", 14.0) in actions and m.state is G.BACKOFF
    started = m.on(TimerFired("backoff", 14.0), 14.0)
    assert [a.name for a in started if isinstance(a, StartMember)] == list(MEMBERS) and m.state is G.STARTING


def test_gang_resume_with_no_backoff_left_starts_at_once_keeping_the_budget() -> None:
    m = gang()
    actions = m.on(Resume(restarts=2, streak=2, recent=(1.0, 2.0)), 10.0)
    assert [a.name for a in actions if isinstance(a, StartMember)] == list(MEMBERS)
    assert m.backoff.carried() == (2, (1.0, 2.0)) and m.restarts == 2
