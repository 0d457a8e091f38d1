"""Reconnect delays for the daemon's connections (SSH hosts, etcd, NATS): pure, jittered.

Not the restart backoff of supervised processes (that is :mod:`dynamo_launch.supervisor.backoff`,
with a budget and a reset window): this one only spaces out attempts to reach a service.
"""

from __future__ import annotations

import random

__all__ = ["RetryDelay"]


class RetryDelay:
    """``initial`` doubling to ``cap``, each delay jittered down by up to 20% (no thundering herd)."""

    def __init__(self, initial: float = 0.2, cap: float = 5.0):
        self.initial, self.cap, self.delay = initial, cap, initial

    def next(self) -> float:
        """The delay before the next attempt."""
        d, self.delay = self.delay, min(self.cap, self.delay * 2)
        return d * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        """After a success: start from ``initial`` again."""
        self.delay = self.initial
