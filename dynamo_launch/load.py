"""One entry point from an inventory file to its plan: load, validate, plan, check the plan.

The CLI, the daemon's reload and ``install-systemd`` call :func:`load_plan`, once per command;
nothing is planned twice and nothing is cached.
"""

from __future__ import annotations

from .errors import InventoryError
from .inventory import parse, read_text
from .model import Inventory
from .plan.conflicts import build_checked
from .plan.spec import Plan
from .reader import Reader
from .tomlpos import LineMap

__all__ = ["load_plan", "plan_text"]


def load_plan(path: str) -> tuple[Inventory, Plan]:
    """The validated inventory at ``path`` and its plan.

    Raises :class:`~dynamo_launch.errors.InventoryError` with every problem found, each
    located (file, line, key), whether the inventory itself or its plan has it.
    """
    return plan_text(read_text(path), path)


def plan_text(text: str, source: str = "inventory.toml") -> tuple[Inventory, Plan]:
    """:func:`load_plan` for inventory ``text``; ``source`` names it in messages."""
    inv = parse(text, source)
    r = Reader(LineMap(text), source)
    plan = build_checked(inv, r)
    if plan is None:
        raise InventoryError(r.problems)
    return inv, plan
