"""Plan diffs for reload: unchanged, changed (gangs as a unit), added, removed, restart units."""

from __future__ import annotations

from pathlib import Path

from dynamo_launch.inventory import parse
from dynamo_launch.plan import build
from dynamo_launch.plan.diff import diff, render_diff, steps
from tests.inventory_keys import TWO_HOSTS

ROOT = Path(__file__).resolve().parents[2]
GENERIC = (ROOT / "examples" / "generic-processes.toml").read_text()


def plan_of(text: str):
    return build(parse(text, "inv.toml"))


def test_same_inventory_is_an_empty_diff():
    d = diff(plan_of(GENERIC), plan_of(GENERIC))
    assert d.empty and not d.units
    assert "no change" in render_diff(d)


def test_one_changed_gang_member_restarts_the_whole_gang_as_one_unit():
    new = GENERIC.replace('"--role", "follower"', '"--role", "follower", "--verbose"')
    d = diff(plan_of(GENERIC), plan_of(new))
    assert set(d.changed) == {"pair-a", "pair-b"}
    assert d.units == (("pair-a", "pair-b"),)
    assert d.why["pair-b"] == "argv" and "gang pair" in d.why["pair-a"]
    assert "web-node1" in d.unchanged and "nats" in d.unchanged


def test_a_group_restarts_one_replica_at_a_time_and_env_changes_count():
    new = GENERIC.replace('path = "/"', 'path = "/index.html"')
    d = diff(plan_of(GENERIC), plan_of(new))
    assert d.units == (("web-node1",), ("web-node2",))
    assert diff(plan_of(GENERIC), plan_of(new), all_at_once=True).units == (("web-node1", "web-node2"),)
    new = GENERIC.replace('ENGINE_LOG = "info"', 'ENGINE_LOG = "debug"')
    assert diff(plan_of(GENERIC), plan_of(new)).why["pair-a"] == "env"


def test_added_and_removed_processes():
    extra = '\n[[processes]]\nname = "side"\nhost = "node2"\ncommand = ["/bin/sleep", "1000"]\n'
    d = diff(plan_of(GENERIC), plan_of(GENERIC + extra))
    assert d.added == ("side",) and not d.changed and not d.removed
    d = diff(plan_of(GENERIC + extra), plan_of(GENERIC))
    assert d.removed == ("side",)
    text = render_diff(d)
    assert "- side (removed: stopped)" in text and "unchanged (keep running)" in text


MOCKERS = TWO_HOSTS + """
[frontend]

[[workers]]
name = "w"
backend = "mocker"
model = "/m"
hosts = ["a", "b"]
replicas = 4
{extra}
"""


def test_max_unavailable_sets_how_many_replicas_a_step_takes_and_changing_it_restarts_nothing():
    old = plan_of(MOCKERS.format(extra=""))
    new = plan_of(MOCKERS.format(extra='env = { X = "1" }\nmax_unavailable = 3'))
    d = diff(old, new)
    assert d.units == (("w-0", "w-1", "w-2"), ("w-3",))
    assert "frontend" in d.unchanged  # its migration limit did not change (4 replicas either way)
    assert diff(old, plan_of(MOCKERS.format(extra="max_unavailable = 2"))).empty
    assert steps(list(old.processes)[-4:]) == [("w-0",), ("w-1",), ("w-2",), ("w-3",)]
