"""Rollout steps and what they leave unavailable (pure parts of reload/restart)."""

from __future__ import annotations

import textwrap

import pytest

from dynamo_launch.daemon.reload import unavailable
from dynamo_launch.inventory import parse
from dynamo_launch.plan import build
from dynamo_launch.plan.diff import steps
from tests.inventory_keys import TWO_HOSTS

INV = TWO_HOSTS + """
[frontend]

[[workers]]
name = "decode"
backend = "mocker"
role = "decode"
model = "/m"
hosts = ["a", "b"]

[[workers]]
name = "prefill"
backend = "mocker"
role = "prefill"
model = "/m"
hosts = ["a"]

[[processes]]
name = "side"
host = "b"
command = ["/bin/sleep", "1000"]
"""


def _specs():
    plan = build(parse(textwrap.dedent(INV), "r.toml"))
    return list(plan.processes)


@pytest.mark.parametrize("all_at_once, units, notes", [
    (False, [("decode-0",), ("decode-1",), ("prefill-0",), ("side",)],
     ["prefill-0: the only replica goes down at once: its model is unavailable until the new copy is ready"]),
    (True, [("decode-0", "decode-1"), ("prefill-0",), ("side",)],
     ["decode-0, decode-1: every replica goes down at once: its model is unavailable until the new copy is ready",
      "prefill-0: the only replica goes down at once: its model is unavailable until the new copy is ready"]),
])
def test_a_group_is_taken_down_whole_only_when_it_has_one_replica_or_all_at_once(all_at_once, units, notes):
    specs = [s for s in _specs() if s.name not in ("nats", "etcd", "frontend")]
    assert steps(specs, all_at_once=all_at_once) == units
    assert unavailable(units, _specs()) == notes  # `side` serves no model: nothing to say


def test_one_replica_of_two_restarted_alone_leaves_the_other_serving():
    assert unavailable([("decode-1",)], _specs()) == []
