"""dynamo-launch: bring up and supervise NVIDIA Dynamo inference clusters on bare metal."""

from .errors import DynamoLaunchError, InventoryError, PlanError, Problem
from .inventory import load, parse
from .model import Inventory
from .plan import Plan, ProcessSpec, build

__version__ = "0.1.0"

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
