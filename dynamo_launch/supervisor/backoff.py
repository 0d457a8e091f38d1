"""Restart delays and the restart budget (DESIGN §4), as a tiny pure object.

- The first restart of a streak is immediate; then ``backoff_initial`` doubling per
  consecutive restart, capped at ``backoff_max``: 0, 1, 2, 4, … 300, 300.
- The streak ends once the process has been healthy for ``reset_after`` seconds.
- At most ``max_restarts`` restarts within any sliding ``restart_window``; one more
  means give up (FAILED) — unless ``never_give_up`` (NATS, etcd): backoff only.
"""

from __future__ import annotations

from collections import deque

from ..model import Restart

__all__ = ["Backoff"]


class Backoff:
    """Delay before the next restart, or None once the budget is spent. Time is passed in."""

    def __init__(self, restart: Restart, never_give_up: bool = False):
        self._restart = restart
        self._never_give_up = never_give_up
        self._streak = 0  # consecutive restarts since the last reset
        self._recent: deque[float] = deque()  # when each restart in the window was granted
        self._healthy_since: float | None = None

    @property
    def attempts(self) -> int:
        """Restarts in the current streak (0 after a reset or a long healthy run)."""
        return self._streak

    def on_healthy(self, now: float) -> None:
        """The process became healthy (READY or RUNNING) at ``now``."""
        if self._healthy_since is None:
            self._healthy_since = now

    def on_unhealthy(self, now: float) -> None:
        """The healthy run ended at ``now``: long enough, and the streak starts over."""
        if self._healthy_since is not None and now - self._healthy_since >= self._restart.reset_after:
            self._streak = 0
        self._healthy_since = None

    def next_restart(self, now: float) -> float | None:
        """Count a restart at ``now`` and return its delay, or None: budget spent, give up."""
        self.on_unhealthy(now)  # a restart always follows the end of any healthy run
        window = self._restart.restart_window
        while self._recent and now - self._recent[0] >= window:
            self._recent.popleft()
        if not self._never_give_up:
            if len(self._recent) >= self._restart.max_restarts:
                return None
            self._recent.append(now)
        r = self._restart
        delay = 0.0 if self._streak == 0 else min(r.backoff_initial * 2 ** (self._streak - 1), r.backoff_max)
        self._streak += 1
        return delay

    def carried(self) -> tuple[int, tuple[float, ...]]:
        """``(streak, restart times in the window)``: what :meth:`carry_over` takes back."""
        return self._streak, tuple(self._recent)

    def carry_over(self, streak: int, recent: tuple[float, ...]) -> None:
        """Continue a previous supervisor's streak and budget (times on this object's clock)."""
        self._streak, self._recent, self._healthy_since = streak, deque(sorted(recent)), None

    def reset(self) -> None:
        """Forget the streak and the budget (the operator asked for a fresh start)."""
        self._streak = 0
        self._recent.clear()
        self._healthy_since = None
