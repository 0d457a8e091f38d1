"""The supervision daemon: host links, the runner, reconciliation, status (DESIGN §1, §2, §4).

::

    daemon = Daemon(plan, inventory, path)
    await daemon.prepare(on_checks=show)   # lock, preflight, connect, adopt
    report = await daemon.serve()          # until request_stop(): then stop all, verify
"""

from .reconcile import Adoption, pick_launch_id, plan_adoption, strays
from .runner import Proc, Runner
from .service import Daemon, StopReport

__all__ = [
    "Adoption",
    "Daemon",
    "Proc",
    "Runner",
    "StopReport",
    "pick_launch_id",
    "plan_adoption",
    "strays",
]
