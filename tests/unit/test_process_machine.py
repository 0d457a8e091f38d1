"""The process machine, one test per edge of its table, with a fake clock (plain floats)."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_launch.errors import IllegalTransition
from dynamo_launch.model import Restart, RestartPolicy
from dynamo_launch.plan.spec import Probe, ProbeKind, ProcessSpec
from dynamo_launch.supervisor import (
    TABLE,
    Adopted,
    CancelTimer,
    ClearFailed,
    DepsReady,
    Exited,
    HostBack,
    HostLost,
    Kill,
    MachineConfig,
    MemberDown,
    Notify,
    ProbeResult,
    ProcessMachine,
    Resume,
    SetTimer,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    StartProbes,
    State,
    Stop,
    StopProbes,
    TimerFired,
    carried,
)

S = State
FAST = Restart(backoff_initial=1.0, backoff_max=8.0, reset_after=600.0, max_restarts=5, restart_window=600.0,
               stop_timeout=30.0)


def machine(**kw: object) -> ProcessMachine:
    kw.setdefault("restart", FAST)
    kw.setdefault("probe_ready", True)
    kw.setdefault("liveness", True)
    return ProcessMachine(MachineConfig(startup_timeout=600.0, start_secs=1.0, **kw), name="p")  # type: ignore[arg-type]


def kinds(actions: list) -> list[str]:
    return [a.kind for a in actions if isinstance(a, Notify)]


def starting(m: ProcessMachine, now: float = 0.0, pid: int = 100) -> list:
    m.on(Start(), now)
    m.on(DepsReady(), now)
    return m.on(Spawned(pid), now)


def ready(m: ProcessMachine, now: float = 0.0, pid: int = 100) -> ProcessMachine:
    starting(m, now, pid)
    m.on(ProbeResult("readiness", True), now)
    assert m.state is S.READY
    return m


def crash(m: ProcessMachine, now: float, code: int = 1) -> list:
    return m.on(Exited(code), now)


# --- bring-up -----------------------------------------------------------------------------------


def test_stopped_to_waiting_on_start() -> None:
    m = machine()
    assert m.on(Start(), 0.0) == [Notify("starting", "p starting")]
    assert m.state is S.WAITING and m.wanted


def test_waiting_to_starting_on_deps_ready_spawns_generation_1() -> None:
    m = machine()
    m.on(Start(), 0.0)
    assert m.on(DepsReady(), 5.0) == [Spawn(1)]
    assert (m.state, m.since, m.pid) == (S.STARTING, 5.0, None)  # STARTING begins at Spawn


def test_starting_on_spawned_arms_startup_and_readiness_probes() -> None:
    actions = starting(m := machine(), 2.0)
    assert actions[1:] == [SetTimer("startup", 602.0), StartProbes("readiness")]
    assert kinds(actions) == ["started"] and m.pid == 100


def test_starting_on_spawned_without_probe_arms_start_secs() -> None:
    actions = starting(machine(probe_ready=False), 2.0)
    assert actions[1:] == [SetTimer("startup", 602.0), SetTimer("start_secs", 3.0)]


def test_starting_to_ready_on_readiness_ok() -> None:
    m = machine()
    starting(m)
    actions = m.on(ProbeResult("readiness", True), 30.0)
    assert actions == [CancelTimer("startup"), StopProbes(), StartProbes("liveness"), Notify("ready", "p ready",
                                                                                            {"generation": 1})]
    assert (m.state, m.since) == (S.READY, 30.0)


def test_starting_to_ready_without_liveness_stops_probes() -> None:
    m = machine(liveness=False)
    starting(m)
    assert StopProbes() in m.on(ProbeResult("readiness", True), 1.0) and m.state is S.READY


def test_starting_stays_on_readiness_failure() -> None:
    m = machine()
    starting(m)
    assert m.on(ProbeResult("readiness", False, "connection refused"), 1.0) == [] and m.state is S.STARTING


def test_starting_to_running_on_start_secs() -> None:
    m = machine(probe_ready=False, liveness=False)
    starting(m)
    actions = m.on(TimerFired("start_secs"), 1.0)
    assert actions[0] == CancelTimer("startup") and kinds(actions) == ["running"]
    assert m.state is S.RUNNING and m.timers == {}


def test_starting_to_stopping_on_startup_timeout() -> None:
    m = machine()
    starting(m)
    actions = m.on(TimerFired("startup", 600.0), 600.0)
    assert Kill("TERM") in actions and SetTimer("stop_kill", 630.0) in actions and StopProbes() in actions
    assert kinds(actions) == ["unhealthy"] and m.state is S.STOPPING


def test_stopping_to_waiting_on_exit_after_startup_timeout() -> None:
    m = machine()
    starting(m)
    m.on(TimerFired("startup"), 600.0)
    actions = m.on(Exited(None, 15), 601.0)
    assert kinds(actions) == ["exited", "restarting"] and m.state is S.WAITING and m.restarts == 1


def test_starting_to_waiting_on_spawn_failed_first_restart_immediate() -> None:
    m = machine()
    m.on(Start(), 0.0)
    m.on(DepsReady(), 0.0)
    actions = m.on(SpawnFailed("no such file"), 1.0)
    assert kinds(actions) == ["spawn-failed", "restarting"] and m.state is S.WAITING


def test_starting_to_waiting_on_crash_before_ready() -> None:
    m = machine()
    starting(m)
    assert kinds(crash(m, 3.0)) == ["exited", "restarting"] and m.state is S.WAITING


# --- liveness -----------------------------------------------------------------------------------


def test_ready_stays_on_two_liveness_failures_then_success_resets_count() -> None:
    m = ready(machine())
    for ok in (False, False, True, False, False):
        assert m.on(ProbeResult("liveness", ok), 10.0) == []
    assert m.state is S.READY


def test_ready_to_stopping_after_three_liveness_failures() -> None:
    m = ready(machine())
    m.on(ProbeResult("liveness", False), 10.0)
    m.on(ProbeResult("liveness", False), 15.0)
    actions = m.on(ProbeResult("liveness", False, "HTTP 503"), 20.0)
    assert actions[1:] == [StopProbes(), Kill("TERM"), SetTimer("stop_kill", 50.0)]
    assert kinds(actions) == ["unhealthy"] and m.state is S.STOPPING


def test_running_to_stopping_after_liveness_failures() -> None:
    m = machine(probe_ready=False, failure_threshold=1)
    starting(m)
    assert StartProbes("liveness") in m.on(TimerFired("start_secs"), 1.0)
    assert Kill("TERM") in m.on(ProbeResult("liveness", False), 5.0) and m.state is S.STOPPING


def test_stopping_kill_on_stop_kill_timer() -> None:
    m = ready(machine())
    m.on(Stop("down"), 10.0)
    actions = m.on(TimerFired("stop_kill", 40.0), 40.0)
    assert actions[0] == Kill("KILL") and m.state is S.STOPPING


def test_stopping_to_waiting_on_exit_after_health_kill() -> None:
    m = ready(machine())
    for t in (10.0, 15.0, 20.0):
        m.on(ProbeResult("liveness", False), t)
    actions = m.on(Exited(None, 15), 21.0)
    assert CancelTimer("stop_kill") in actions and kinds(actions) == ["exited", "restarting"]
    assert m.state is S.WAITING and m.last_exit is not None and m.last_exit.signal == 15


# --- exits and the restart policy ----------------------------------------------------------------


def test_ready_to_waiting_on_exit_first_restart_immediate() -> None:
    m = ready(machine())
    actions = crash(m, 50.0)
    assert kinds(actions) == ["exited", "restarting"] and actions[-1].data["delay"] == 0
    assert m.state is S.WAITING and m.restarts == 1 and m.pid is None


def test_running_to_backoff_on_second_crash() -> None:
    m = ready(machine())
    crash(m, 1.0)
    m.on(DepsReady(), 1.0)
    m.on(Spawned(101), 1.0)
    actions = crash(m, 2.0)
    assert SetTimer("backoff", 3.0) in actions and m.state is S.BACKOFF


def test_backoff_to_waiting_on_timer() -> None:
    m = ready(machine())
    crash(m, 1.0)
    m.on(DepsReady(), 1.0)
    m.on(Spawned(101), 1.0)
    crash(m, 2.0)
    assert m.on(TimerFired("backoff", 3.0), 3.0) == [] and m.state is S.WAITING
    assert m.on(DepsReady(), 3.0) == [Spawn(3)]


def test_generation_increments_per_respawn() -> None:
    m = ready(machine(restart=Restart(max_restarts=10)))
    gens = []
    for t in range(3):
        crash(m, float(t))
        if m.state is S.BACKOFF:
            m.on(TimerFired("backoff"), float(t))
        gens += [a.generation for a in m.on(DepsReady(), float(t)) if isinstance(a, Spawn)]
        m.on(Spawned(200 + t), float(t))
    assert gens == [2, 3, 4] and m.generation == 4


def test_on_failure_clean_exit_to_stopped() -> None:
    m = ready(machine(restart=Restart(policy=RestartPolicy.ON_FAILURE)))
    assert kinds(crash(m, 1.0, code=0)) == ["exited", "stopped"] and m.state is S.STOPPED
    assert m.last_exit is not None and m.last_exit.code == 0


def test_on_failure_crash_to_waiting() -> None:
    m = ready(machine(restart=Restart(policy=RestartPolicy.ON_FAILURE)))
    crash(m, 1.0)
    assert m.state is S.WAITING


def test_on_failure_sigterm_not_from_us_is_a_failure() -> None:
    m = ready(machine(restart=Restart(policy=RestartPolicy.ON_FAILURE)))
    m.on(Exited(None, 15), 1.0)
    assert m.state is S.WAITING


def test_never_clean_exit_to_stopped() -> None:
    m = ready(machine(restart=Restart(policy=RestartPolicy.NEVER)))
    crash(m, 1.0, code=0)
    assert m.state is S.STOPPED


def test_never_crash_to_failed() -> None:
    m = ready(machine(restart=Restart(policy=RestartPolicy.NEVER)))
    assert kinds(crash(m, 1.0)) == ["exited", "failed"] and m.state is S.FAILED


def test_always_clean_exit_restarts() -> None:
    m = ready(machine())
    crash(m, 1.0, code=0)
    assert m.state is S.WAITING


def cycle(m: ProcessMachine, now: float, pid: int) -> list:
    """One crash and respawn (through BACKOFF when there is a delay); the crash's actions."""
    actions = crash(m, now)
    if m.state is S.BACKOFF:
        m.on(TimerFired("backoff"), now)
    if m.state is S.WAITING:
        m.on(DepsReady(), now)
        m.on(Spawned(pid), now)
    return actions


def test_failed_after_budget_exhausted() -> None:
    m = ready(machine())
    for i in range(5):
        cycle(m, float(i), 200 + i)
    actions = crash(m, 5.0)
    assert kinds(actions) == ["exited", "failed"] and m.state is S.FAILED and m.restarts == 5
    assert "giving up" in m.reason


def test_never_give_up_never_fails() -> None:
    m = ready(machine(never_give_up=True))
    for i in range(50):
        cycle(m, float(i), 200 + i)
    assert m.state is S.STARTING and m.restarts == 50


def test_healthy_window_resets_the_streak() -> None:
    m = ready(machine())
    cycle(m, 1.0, 101)
    cycle(m, 2.0, 102)  # streak: 0, then 1 s
    m.on(ProbeResult("readiness", True), 5.0)
    actions = crash(m, 5.0 + 600.0)  # healthy for reset_after: immediate again
    assert actions[-1].data["delay"] == 0 and m.state is S.WAITING


def test_failed_to_waiting_on_clear_failed() -> None:
    m = ready(machine(restart=Restart(policy=RestartPolicy.NEVER)))
    crash(m, 1.0)
    assert m.on(ClearFailed(), 2.0) == [Notify("starting", "p starting")] and m.state is S.WAITING


def test_failed_to_waiting_on_start_with_fresh_budget() -> None:
    m = ready(machine())
    for i in range(6):
        cycle(m, float(i), 200 + i)
    assert m.state is S.FAILED
    m.on(Start(), 10.0)
    m.on(DepsReady(), 10.0)
    m.on(Spawned(300), 10.0)
    crash(m, 11.0)
    assert m.state is S.WAITING and m.backoff.attempts == 1


# --- stopping -----------------------------------------------------------------------------------


def test_ready_to_stopping_on_stop() -> None:
    m = ready(machine())
    actions = m.on(Stop("down"), 10.0)
    assert actions[1:] == [StopProbes(), Kill("TERM"), SetTimer("stop_kill", 40.0)] and m.state is S.STOPPING


def test_stopping_to_stopped_on_exit() -> None:
    m = ready(machine())
    m.on(Stop("down"), 10.0)
    actions = m.on(Exited(None, 15), 11.0)
    assert kinds(actions) == ["exited", "stopped"] and m.state is S.STOPPED and m.restarts == 0


def test_stopping_to_waiting_on_exit_when_started_again() -> None:
    m = ready(machine())
    m.on(Stop("restart"), 10.0)
    assert m.on(Start(), 10.0) == []
    assert kinds(m.on(Exited(None, 15), 11.0)) == ["exited", "starting"] and m.state is S.WAITING
    assert m.on(DepsReady(), 11.0) == [Spawn(2)] and m.restarts == 0


def test_stopping_stop_during_health_kill_ends_stopped() -> None:
    m = ready(machine(failure_threshold=1))
    m.on(ProbeResult("liveness", False), 1.0)
    assert m.on(Stop("down"), 2.0) == []
    m.on(Exited(None, 15), 3.0)
    assert m.state is S.STOPPED


def test_starting_stop_before_spawned_kills_once_spawned() -> None:
    m = machine()
    m.on(Start(), 0.0)
    m.on(DepsReady(), 0.0)
    assert Kill("TERM") not in m.on(Stop("down"), 1.0) and m.state is S.STOPPING
    assert m.on(Spawned(100), 2.0) == [Kill("TERM"), SetTimer("stop_kill", 32.0)]


def test_stopping_to_stopped_on_spawn_failed_after_stop() -> None:
    m = machine()
    m.on(Start(), 0.0)
    m.on(DepsReady(), 0.0)
    m.on(Stop("down"), 1.0)
    m.on(SpawnFailed("refused"), 2.0)
    assert m.state is S.STOPPED


def test_waiting_to_stopped_on_stop() -> None:
    m = machine()
    m.on(Start(), 0.0)
    assert kinds(m.on(Stop("down"), 1.0)) == ["stopped"] and m.state is S.STOPPED


def test_backoff_to_stopped_on_stop_cancels_timer() -> None:
    m = ready(machine())
    cycle(m, 1.0, 101)
    crash(m, 2.0)
    assert m.on(Stop("down"), 2.5)[0] == CancelTimer("backoff") and m.state is S.STOPPED
    assert m.on(TimerFired("backoff"), 3.0) == []  # stale


def test_failed_to_stopped_on_stop() -> None:
    m = ready(machine(restart=Restart(policy=RestartPolicy.NEVER)))
    crash(m, 1.0)
    m.on(Stop(), 2.0)
    assert m.state is S.STOPPED


# --- host unreachable ---------------------------------------------------------------------------


def test_ready_to_unknown_on_host_lost() -> None:
    m = ready(machine())
    actions = m.on(HostLost(), 10.0)
    assert actions[0] == StopProbes() and kinds(actions) == ["unknown"] and m.state is S.UNKNOWN and m.pid == 100


def test_starting_to_unknown_on_host_lost_cancels_timers() -> None:
    m = machine()
    starting(m)
    assert m.on(HostLost(), 1.0)[:2] == [CancelTimer("startup"), StopProbes()] and m.timers == {}


def test_unknown_to_starting_on_host_back_alive_reprobes() -> None:
    m = ready(machine())
    m.on(HostLost(), 10.0)
    actions = m.on(HostBack(alive=True), 20.0)
    assert kinds(actions) == ["back"] and actions[1:] == [SetTimer("startup", 620.0), StartProbes("readiness")]
    assert m.state is S.STARTING and m.pid == 100 and m.generation == 1


def test_unknown_to_waiting_on_host_back_dead() -> None:
    m = ready(machine())
    m.on(HostLost(), 10.0)
    actions = m.on(HostBack(alive=False), 20.0)
    assert kinds(actions) == ["back", "exited", "restarting"] and m.state is S.WAITING
    assert m.last_exit is not None and (m.last_exit.code, m.last_exit.signal) == (None, None)


def test_unknown_to_waiting_on_host_back_dead_shows_the_exit_the_node_recorded() -> None:
    m = ready(machine())
    m.on(HostLost(), 10.0)
    m.on(HostBack(alive=False, code=None, signal=9), 20.0)
    assert m.last_exit is not None and (m.last_exit.code, m.last_exit.signal) == (None, 9)
    assert m.state is S.WAITING and m.restarts == 1 and "signal 9" in m.reason


def test_unknown_host_back_when_the_start_never_reached_the_host_counts_no_restart() -> None:
    m = machine()
    m.on(Start(), 0.0)
    m.on(DepsReady(), 0.0)  # Spawn sent; the host is lost before it answers
    m.on(HostLost(), 1.0)
    actions = m.on(HostBack(alive=False, spawned=False), 5.0)
    assert kinds(actions) == ["back"] and m.state is S.WAITING and m.restarts == 0 and m.last_exit is None
    assert any(isinstance(a, Spawn) for a in m.on(DepsReady(), 5.0))  # started again, at once


def test_unknown_host_back_unreached_start_of_a_stopped_process_stays_stopped() -> None:
    m = machine()
    m.on(Start(), 0.0)
    m.on(DepsReady(), 0.0)
    m.on(HostLost(), 1.0)
    m.on(Stop("down"), 2.0)
    assert kinds(m.on(HostBack(alive=False, spawned=False), 5.0)) == ["stopped"] and m.state is S.STOPPED


def test_host_back_dead_with_the_exit_its_node_recorded() -> None:
    """Issue 16: a process killed while its host was unreachable shows how it ended, not "unknown"."""
    m = ready(machine())
    m.on(HostLost(), 10.0)
    actions = m.on(HostBack(alive=False, code=None, signal=9), 20.0)
    assert kinds(actions) == ["back", "exited", "restarting"]
    assert [a.message for a in actions if getattr(a, "kind", None) == "exited"] == ["p exited (signal 9)"]
    assert m.last_exit is not None and (m.last_exit.code, m.last_exit.signal) == (None, 9)


def test_unknown_never_spawns() -> None:
    m = ready(machine())
    m.on(HostLost(), 10.0)
    for ev in (Start(), DepsReady(), ProbeResult("readiness", True), HostLost(), SpawnFailed("x"), TimerFired("backoff")):
        assert not any(isinstance(a, Spawn) for a in m.on(ev, 11.0))
        assert m.state is S.UNKNOWN


def test_unknown_to_waiting_on_exit_report() -> None:
    m = ready(machine())
    m.on(HostLost(), 10.0)
    m.on(Exited(3), 20.0)
    assert m.state is S.WAITING


def test_unknown_stop_then_host_back_alive_kills() -> None:
    m = ready(machine())
    m.on(HostLost(), 10.0)
    assert m.on(Stop("down"), 11.0) == [] and m.state is S.UNKNOWN
    actions = m.on(HostBack(alive=True), 20.0)
    assert Kill("TERM") in actions and m.state is S.STOPPING
    m.on(Exited(None, 15), 21.0)
    assert m.state is S.STOPPED


def test_unknown_stop_then_host_back_dead_to_stopped() -> None:
    m = ready(machine())
    m.on(HostLost(), 10.0)
    m.on(Stop("down"), 11.0)
    assert kinds(m.on(HostBack(alive=False), 20.0)) == ["back", "exited", "stopped"] and m.state is S.STOPPED


def test_unknown_records_pid_spawned_during_outage() -> None:
    m = machine()
    m.on(Start(), 0.0)
    m.on(DepsReady(), 0.0)
    m.on(HostLost(), 1.0)
    assert m.on(SpawnFailed("channel closed"), 1.0) == [] and m.state is S.UNKNOWN  # maybe it started anyway
    assert m.on(Spawned(77), 2.0) == [] and m.pid == 77


def test_unknown_host_back_alive_without_pid_is_illegal() -> None:
    m = machine()
    m.on(Start(), 0.0)
    m.on(DepsReady(), 0.0)
    m.on(HostLost(), 1.0)
    with pytest.raises(IllegalTransition):
        m.on(HostBack(alive=True), 2.0)
    m.on(HostBack(alive=True, pid=55), 2.0)
    assert m.state is S.STARTING and m.pid == 55


# --- adoption, gangs ---------------------------------------------------------------------------


def test_stopped_to_starting_on_adopted() -> None:
    m = machine()
    actions = m.on(Adopted(pid=42, generation=7), 0.0)
    assert kinds(actions) == ["adopted"] and StartProbes("readiness") in actions
    assert (m.state, m.pid, m.generation, m.restarts) == (S.STARTING, 42, 7, 0)
    m.on(ProbeResult("readiness", True), 1.0)
    crash(m, 2.0)
    assert m.on(DepsReady(), 2.0) == [Spawn(8)]


def test_in_gang_exit_emits_member_down_and_stops() -> None:
    m = ready(machine(in_gang=True))
    actions = crash(m, 5.0)
    assert actions[-1] == MemberDown("exited (code 1)") and m.state is S.STOPPED and m.restarts == 0


def test_in_gang_liveness_failure_emits_member_down_with_the_kill() -> None:
    m = ready(machine(in_gang=True, failure_threshold=1))
    actions = m.on(ProbeResult("liveness", False), 5.0)
    assert MemberDown("liveness failed 1 times") in actions and Kill("TERM") in actions
    assert not any(isinstance(a, MemberDown) for a in m.on(Exited(None, 15), 6.0))
    assert m.state is S.STOPPED


def test_in_gang_start_uses_the_gang_generation() -> None:
    m = ready(machine(in_gang=True))
    crash(m, 1.0)
    m.on(Start(generation=5), 2.0)
    assert m.on(DepsReady(), 2.0) == [Spawn(5)] and m.generation == 5


# --- table hygiene -------------------------------------------------------------------------------


def test_illegal_event_raises_and_leaves_state_unchanged() -> None:
    m = ready(machine())
    before = copy.deepcopy(vars(m))
    with pytest.raises(IllegalTransition, match="READY"):
        m.on(Adopted(1, 1), 3.0)
    with pytest.raises(IllegalTransition):
        m.on(Spawned(999), 3.0)  # a second copy
    assert vars(m).keys() == before.keys() and m.state is S.READY and m.pid == 100


def test_generation_never_goes_back() -> None:
    m = machine()
    m.on(Adopted(1, 4), 0.0)
    m.on(Stop(), 0.0)
    with pytest.raises(IllegalTransition):
        m.on(Start(generation=3), 1.0)


def test_stale_exit_report_for_another_pid_is_ignored() -> None:
    m = ready(machine())
    assert m.on(Exited(1, pid=7), 1.0) == [] and m.state is S.READY


def test_late_probe_after_exit_is_ignored() -> None:
    m = ready(machine(restart=Restart(policy=RestartPolicy.NEVER)))
    crash(m, 1.0, code=0)
    assert m.on(ProbeResult("liveness", False), 2.0) == [] and m.state is S.STOPPED


def test_timer_fired_at_another_time_is_stale() -> None:
    m = machine()
    starting(m)
    assert m.on(TimerFired("startup", at=1.0), 1.0) == [] and m.state is S.STARTING


def test_every_table_handler_exists() -> None:
    for row in TABLE.values():
        for handler in row.values():
            assert callable(getattr(ProcessMachine, "_on_" + handler))


def test_config_from_spec() -> None:
    http = Probe(ProbeKind.HTTP, url="http://h:8000/health", failure_threshold=4)
    spec = ProcessSpec(name="w", host="h", address="10.0.0.1", kind="worker", argv=("x",), env=(), cwd="/",
                       log_file="/l", readiness=http, liveness=http, restart=Restart(stop_timeout=12.0), group="g",
                       generation=3, startup_timeout=900.0)
    m = ProcessMachine.from_spec(spec)
    c = m.config
    assert (c.probe_ready, c.liveness, c.failure_threshold, c.in_gang, c.stop_timeout) == (True, True, 4, True, 12.0)
    assert (c.startup_timeout, m.name, m.generation) == (900.0, "w", 3)
    plain = MachineConfig.from_spec(spec.__class__(**{**vars(spec), "readiness": Probe(ProbeKind.PROCESS),
                                                      "liveness": None, "group": None}))
    assert (plain.probe_ready, plain.liveness, plain.in_gang) == (False, False, False)


# --- property: random histories ------------------------------------------------------------------


def snapshot(m: ProcessMachine) -> str:
    return repr(vars(m)) + repr(vars(m.backoff))  # cheaper than a deepcopy, and as exact


# One integer per step (cheap to generate): which event, how much time passes, generation offset.
STEPS = st.lists(st.integers(0, 64 * 4 * 3 - 1), min_size=20, max_size=80)
DT = (0.0, 1.0, 30.0, 700.0)
CONFIGS = st.builds(
    MachineConfig,
    restart=st.builds(Restart, policy=st.sampled_from(list(RestartPolicy)), max_restarts=st.integers(0, 4),
                      restart_window=st.just(100.0), reset_after=st.just(50.0)),
    probe_ready=st.booleans(), liveness=st.booleans(), failure_threshold=st.just(2), never_give_up=st.booleans(),
    in_gang=st.booleans())


@settings(max_examples=200, deadline=None)
@given(CONFIGS, STEPS)
def test_random_histories_keep_one_copy_and_never_spawn_from_unknown(config: MachineConfig, steps: list[int]) -> None:
    m = ProcessMachine(config, name="p")
    now, pid, live, last_spawn = 0.0, 1000, False, 0
    for step in steps:
        rest, pick = divmod(step, 64)
        dg, dt = divmod(rest, 4)
        pid, now, gen = pid + 1, now + DT[dt], m.generation + dg
        choices = [Start(), Start(generation=gen), Stop("x"), DepsReady(), Spawned(pid), SpawnFailed("x"), Exited(1),
                   Exited(0), Exited(None, 9), Exited(1, pid=1), ProbeResult("readiness", True), ProbeResult("readiness", False),
                   ProbeResult("liveness", True), ProbeResult("liveness", False), HostLost(), HostBack(True), HostBack(True, pid),
                   HostBack(False), Adopted(pid, gen), ClearFailed(), TimerFired("backoff"), TimerFired("stop_kill")]
        legal = [e for e in choices if type(e) in TABLE[m.state]]
        legal += [TimerFired(k, at) for k, at in m.timers.items()]  # type: ignore[arg-type]
        # Mostly events the state accepts (to get somewhere), sometimes anything (to hit illegal ones).
        event = legal[pick % len(legal)] if pick < 56 else choices[pick % len(choices)]
        before, state_before, gen_before = snapshot(m), m.state, m.generation
        try:
            actions = m.on(event, now)
        except IllegalTransition:
            assert snapshot(m) == before
            continue
        spawns = [a for a in actions if isinstance(a, Spawn)]
        if state_before is S.UNKNOWN or m.state is S.UNKNOWN:
            assert not spawns
        for s in spawns:
            assert not live, f"second copy spawned after {event!r}"
            assert s.generation > last_spawn
            live, last_spawn = True, s.generation
        assert m.generation >= gen_before
        if any(isinstance(a, Kill) for a in actions):
            assert m.pid is not None
        if m.state is S.UNKNOWN:
            assert m.timers == {}
        # What the world says about our copy, for the next events.
        if isinstance(event, (Exited, SpawnFailed)) and getattr(event, "pid", None) is None:
            live = False
        elif isinstance(event, HostBack) and state_before is S.UNKNOWN:
            live = event.alive
        elif isinstance(event, Adopted):
            live = True


# --- resuming after a daemon restart ----------------------------------------------------------------


def test_stopped_to_failed_on_resume_failed_and_clear_failed_starts_afresh() -> None:
    m = machine()
    actions = m.on(Resume(restarts=5, streak=5, recent=(1.0, 2.0), failed=True, reason="exited (code 1)"), 10.0)
    assert kinds(actions) == ["failed"] and m.state is S.FAILED and m.restarts == 5 and not m.wanted
    assert m.on(DepsReady(), 11.0) == [] and m.state is S.FAILED  # nothing starts by itself
    m.on(ClearFailed(), 12.0)
    assert m.state is S.WAITING and m.backoff.carried() == (0, ())


def test_stopped_to_backoff_on_resume_waits_out_the_rest_of_the_delay() -> None:
    m = machine()
    actions = m.on(Resume(restarts=2, streak=2, recent=(1.0, 5.0), reason="exited (code 1)", backoff_until=25.0), 10.0)
    assert SetTimer("backoff", 25.0) in actions and kinds(actions) == ["restarting"]
    assert m.state is S.BACKOFF and m.restarts == 2 and m.backoff.carried() == (2, (1.0, 5.0))
    m.on(TimerFired("backoff", 25.0), 25.0)
    assert m.state is S.WAITING


def test_resume_keeps_the_budget_a_restart_still_counts_against() -> None:
    m = machine()  # FAST: at most 5 restarts in 600 s
    m.on(Resume(restarts=5, streak=5, recent=(1.0, 2.0, 3.0, 4.0, 5.0)), 10.0)
    assert m.state is S.WAITING and m.wanted  # a backoff already over: start now, budget kept
    m.on(DepsReady(), 10.0)
    m.on(Spawned(7), 10.0)
    m.on(Exited(1, pid=7), 11.0)
    assert m.state is S.FAILED and m.restarts == 5  # the sixth restart in the window is refused


def test_supervision_round_trips_through_resume() -> None:
    m = machine()
    starting(m)
    m.on(Exited(1, pid=100), 1.0)  # immediate restart
    m.on(DepsReady(), 1.0)
    m.on(Spawned(101), 1.0)
    m.on(Exited(1, pid=101), 2.0)  # backoff 1 s
    saved = carried(m)
    assert saved["state"] == "BACKOFF" and saved["restarts"] == 2 and saved["backoff_until"] == 3.0
    again = machine()
    again.on(Resume(restarts=saved["restarts"], streak=saved["streak"], recent=tuple(saved["recent"]),
                    reason=saved["reason"], backoff_until=saved["backoff_until"]), 2.5)
    assert again.state is S.BACKOFF and again.timers == {"backoff": 3.0} and again.backoff.carried() == m.backoff.carried()
