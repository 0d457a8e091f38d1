"""The project's exception hierarchy.

::

    DynamoLaunchError                 base of everything we raise on purpose
    ├── InventoryError                the inventory file is unreadable or invalid
    │                                 (carries every Problem found, each located)
    └── PlanError                     a valid inventory that cannot be planned

Later layers (transport, supervisor) add their own subclasses here so that the
CLI can catch ``DynamoLaunchError`` and print one line instead of a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DynamoLaunchError", "InventoryError", "PlanError", "Problem"]


class DynamoLaunchError(Exception):
    """Base class for errors the CLI reports as plain messages."""


@dataclass(frozen=True, order=True)
class Problem:
    """One located validation problem: ``file:line: key.path: message``."""

    line: int
    key: str
    message: str
    file: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file else f"line {self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class InventoryError(DynamoLaunchError):
    """The inventory could not be loaded; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PlanError(DynamoLaunchError):
    """A plan could not be built from an otherwise valid inventory."""
