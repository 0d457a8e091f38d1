"""Every inventory key the loader accepts, found by watching it read one inventory that has every
section: the inventory tests compare it with docs/inventory.md, the fuzz tests mutate with it.
Also the smallest inventory around one command (:func:`one_process`), for the rendering tests."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from dynamo_launch import reader as reader_module
from dynamo_launch.inventory import parse

__all__ = ["EVERY_SECTION", "TWO_HOSTS", "accepted_keys", "one_process"]


TWO_HOSTS = """
[cluster]
name = "r"
head = "a"
state_dir = "/srv/r"

[[hosts]]
name = "a"
address = "10.0.0.1"

[[hosts]]
name = "b"
address = "10.0.0.2"
"""
"""Cluster ``r`` on hosts ``a`` (the head, 10.0.0.1) and ``b`` (10.0.0.2): add the rest."""


def one_process(command: list[str], env: str = "", extra: str = "") -> str:
    """An inventory of one host ``a`` running process ``p`` = ``command``; ``env`` lines go in
    ``[env]``, ``extra`` lines after the process table (its sub-tables, other sections)."""
    return textwrap.dedent(
        f"""
        [cluster]
        name = "t"
        head = "a"
        state_dir = "/srv/dl"

        [env]
        {env}

        [[hosts]]
        name = "a"
        address = "10.0.0.1"

        [[processes]]
        name = "p"
        host = "a"
        command = {json.dumps(command)}
        {extra}
        """
    )

EVERY_SECTION = """
[cluster]
name = "c"
head = "node1"

[ssh]
user = "dynamo"

[env]
HF_HOME = "/models"

[[hosts]]
name = "node1"
address = "10.0.0.1"
gpus = 8
labels = { rack = "a" }
[hosts.ssh]
port = 2222

[nats]
[nats.restart]
[nats.health]

[etcd]
[etcd.restart]
[etcd.health]

[frontend]
env = { A = "1" }
[frontend.restart]
[frontend.health]

[[workers]]
name = "w"
backend = "mocker"
model = "m"
hosts = ["node1"]
env = { A = "1" }
[workers.restart]
[workers.health]

[ray]
head = "node1"
env = { A = "1" }
[ray.restart]
[ray.health]

[[processes]]
name = "p"
host = "node1"
command = ["true"]
env = { A = "1" }
[processes.restart]
[processes.health]
"""


def accepted_keys() -> dict[str, frozenset[str] | None]:
    """Every table the loader reads, as a dotted section name (``workers.health``), and the keys
    it accepts there (``None``: any key, e.g. ``env``), found by watching the loader's Reader."""
    seen: dict[str, frozenset[str] | None] = {}
    original = reader_module.Reader.table

    def spy(self: Any, raw: Any, path: tuple, allowed: set[str] | None) -> dict[str, Any]:
        section = ".".join(p for p in path if isinstance(p, str))
        if allowed is not None or section not in seen:  # [cluster] is opened twice, once with None
            seen[section] = frozenset(allowed) if allowed is not None else None
        return original(self, raw, path, allowed)

    reader_module.Reader.table = spy  # type: ignore[method-assign]
    try:
        parse(EVERY_SECTION, "inv.toml")
    finally:
        reader_module.Reader.table = original  # type: ignore[method-assign]
    return seen


# A cluster with one host "a" (10.0.0.1, no GPU) and state in ``{state}``: the start of small inventories.
ONE_HOST = """
[cluster]
name = "c"
head = "a"
state_dir = "{state}"

[[hosts]]
name = "a"
address = "10.0.0.1"
gpus = 0
"""
