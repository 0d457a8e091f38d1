"""dynamo-launch: bring up and supervise NVIDIA Dynamo inference clusters on bare metal."""

from importlib import import_module

from .errors import DynamoLaunchError, InventoryError, PlanError, Problem

__version__ = "0.1.0"

# The loader and the planner are imported on first use (PEP 562): `status` and `logs` need
# neither, and importing them costs a third of `status`'s CPU time.
_LAZY = {"load": ".inventory", "parse": ".inventory", "Inventory": ".model", "Plan": ".plan",
         "ProcessSpec": ".plan", "build": ".plan"}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DynamoLaunchError",
    "Inventory",
    "InventoryError",
    "Plan",
    "PlanError",
    "Problem",
    "ProcessSpec",
    "__version__",
    "build",
    "load",
    "parse",
]
