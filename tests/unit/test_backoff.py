"""Backoff: delays 0, 1, 2, 4 … capped, the healthy reset window, the sliding budget."""

from __future__ import annotations

from dynamo_launch.model import Restart
from dynamo_launch.supervisor.backoff import Backoff

R = Restart(backoff_initial=1.0, backoff_max=8.0, reset_after=600.0, max_restarts=5, restart_window=600.0)


def test_first_restart_is_immediate_then_doubles_up_to_the_cap() -> None:
    b = Backoff(Restart(backoff_initial=1.0, backoff_max=8.0, max_restarts=100))
    assert [b.next_restart(float(t)) for t in range(7)] == [0, 1, 2, 4, 8, 8, 8]
    assert b.attempts == 7


def test_default_sequence_caps_at_five_minutes() -> None:
    b = Backoff(Restart(), never_give_up=True)
    delays = [b.next_restart(float(t)) for t in range(12)]
    assert delays[:4] == [0, 1, 2, 4] and delays[-1] == 300 and max(delays) == 300


def test_streak_resets_after_healthy_for_reset_after() -> None:
    b = Backoff(R)
    assert [b.next_restart(0.0), b.next_restart(1.0), b.next_restart(2.0)] == [0, 1, 2]
    b.on_healthy(10.0)
    assert b.next_restart(10.0 + 600.0) == 0  # healthy for the whole window: streak over
    assert b.attempts == 1


def test_streak_continues_when_healthy_too_briefly() -> None:
    b = Backoff(R)
    b.next_restart(0.0)
    b.next_restart(1.0)
    b.on_healthy(10.0)
    assert b.next_restart(10.0 + 599.0) == 2


def test_on_unhealthy_closes_the_healthy_run_at_that_time() -> None:
    b = Backoff(R)
    b.next_restart(0.0)
    b.on_healthy(10.0)
    b.on_unhealthy(20.0)  # the liveness kill time, not the exit time, ends the healthy run
    assert b.next_restart(10_000.0) == 1


def test_budget_five_in_window_sixth_gives_up() -> None:
    b = Backoff(R)
    assert all(b.next_restart(float(t)) is not None for t in range(5))
    assert b.next_restart(5.0) is None
    assert b.next_restart(6.0) is None  # stays exhausted while the window holds five


def test_restarts_outside_the_window_do_not_count() -> None:
    b = Backoff(R)
    for t in (0.0, 100.0, 200.0, 300.0, 400.0):
        assert b.next_restart(t) is not None
    assert b.next_restart(599.0) is None
    assert b.next_restart(600.0) is not None  # the one at t=0 left the window


def test_never_give_up_never_gives_up() -> None:
    b = Backoff(R, never_give_up=True)
    assert all(b.next_restart(float(t)) is not None for t in range(1000))


def test_reset_forgets_streak_and_budget() -> None:
    b = Backoff(R)
    for t in range(5):
        b.next_restart(float(t))
    b.reset()
    assert b.attempts == 0
    assert b.next_restart(6.0) == 0


def test_zero_budget_never_restarts() -> None:
    assert Backoff(Restart(max_restarts=0)).next_restart(0.0) is None
