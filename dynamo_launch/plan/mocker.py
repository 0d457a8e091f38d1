"""Dynamo's CPU-only mocker engine, ``python -m dynamo.mocker`` (pure recipe).

It registers like a real worker and takes the same roles, so a whole
deployment can be rehearsed without GPUs. Roles are ``--disaggregation-mode``
(``--is-prefill-worker``/``--is-decode-worker`` still parse in 1.6.1 but warn).
"""

from __future__ import annotations

from ..model import Role
from ..placement import Replica
from ..tomlpos import KeyPath
from .context import Context
from .spec import ProcessSpec
from .workers import leader_spec

__all__ = ["processes"]


def processes(ctx: Context, replica: Replica, path: KeyPath) -> list[ProcessSpec]:
    """The one process of a mocker replica."""
    group = replica.group
    host = replica.nodes[0].host
    argv = [ctx.python(host), "-m", "dynamo.mocker", "--model-path", group.model]
    if group.data_parallel_size > 1:
        argv += ["--data-parallel-size", str(group.data_parallel_size)]
    argv += list(group.extra_args)
    if group.role is not Role.AGGREGATED:
        argv += ["--disaggregation-mode", group.role.value]
    return [leader_spec(ctx, replica, path, argv)]
