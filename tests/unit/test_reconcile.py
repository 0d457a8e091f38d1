"""Adoption and stray decisions (pure): what a restarted daemon or a returning host keeps."""

from __future__ import annotations

from pathlib import Path

from dynamo_launch.daemon.reconcile import pick_launch_id, plan_adoption, strays
from dynamo_launch.inventory import parse
from dynamo_launch.plan import build

ROOT = Path(__file__).resolve().parents[2]
PLAN = build(parse((ROOT / "examples" / "generic-processes.toml").read_text(), "inv.toml"))


def rec(name, *, alive=True, gen=1, launch="L", pid=100, started=1.0):
    return {"name": name, "alive": alive, "generation": gen, "launch_id": launch, "pid": pid, "started_at": started}


def test_launch_id_saved_wins_else_newest_alive_on_the_nodes():
    records = {"node1": [rec("web-node1", launch="old", started=1), rec("pair-a", launch="new", started=5)],
               "node2": [rec("web-node2", launch="dead", alive=False, started=9)]}
    assert pick_launch_id("saved", records) == "saved"
    assert pick_launch_id(None, records) == "new"
    assert pick_launch_id(None, {"node1": [rec("x", alive=False)]}) is None


def test_live_records_of_our_launch_are_adopted_others_stopped_gone_ones_get_the_next_generation():
    records = {"node1": [rec("web-node1", gen=3), rec("nats", launch="other", pid=7)],
               "node2": [rec("web-node2", alive=False, gen=4)]}
    a = plan_adoption(PLAN, records, "L")
    assert set(a.adopt) == {"web-node1"}
    assert a.stop == [("node1", records["node1"][1])]  # another launch's live copy
    assert a.generation["web-node2"] == 5 and a.generation["etcd"] == 1


def test_a_gang_is_adopted_whole_or_not_at_all():
    whole = {"node1": [rec("pair-a", gen=2)], "node2": [rec("pair-b", gen=2)]}
    a = plan_adoption(PLAN, whole, "L")
    assert a.adopted_gangs == {"pair"} and a.gang_generation["pair"] == 2 and {"pair-a", "pair-b"} <= set(a.adopt)
    partial = {"node1": [rec("pair-a", gen=2)], "node2": [rec("pair-b", gen=2, alive=False)]}
    a = plan_adoption(PLAN, partial, "L")
    assert not a.adopted_gangs and "pair-a" not in a.adopt
    assert a.stop == [("node1", partial["node1"][0])] and a.gang_generation["pair"] == 3
    mixed = {"node1": [rec("pair-a", gen=2)], "node2": [rec("pair-b", gen=3)]}  # generations disagree
    assert not plan_adoption(PLAN, mixed, "L").adopted_gangs


def test_copies_behind_an_unreachable_host_are_adopted_on_trust_and_never_stopped_from_here():
    reachable = {"node1": [rec("web-node1", gen=2), rec("pair-a", gen=2)]}
    believed = {"node2": [rec("web-node2", gen=2), rec("pair-b", gen=2)]}  # from the state file
    a = plan_adoption(PLAN, reachable, "L", believed)
    assert {"web-node1", "web-node2", "pair-a", "pair-b"} <= set(a.adopt) and a.adopted_gangs == {"pair"}
    assert a.unknown == {"web-node2", "pair-b"}
    # a gang whose reachable member died: restarted, but its unreachable member is not "stopped"
    a = plan_adoption(PLAN, {"node1": [rec("pair-a", gen=2, alive=False)]}, "L", believed)
    assert not a.adopted_gangs and a.stop == [] and "pair-b" not in a.adopt and a.gang_generation["pair"] == 3


def test_a_record_on_the_wrong_host_is_not_adopted():
    a = plan_adoption(PLAN, {"node2": [rec("web-node1")]}, "L")
    assert not a.adopt and a.stop == [("node2", rec("web-node1"))]


def test_strays_are_other_names_or_generations_never_unattributable_processes():
    scanned = [{"pid": 1, "name": "web-node1", "generation": "2"},   # kept (and its children)
               {"pid": 2, "name": "web-node1", "generation": "1"},   # old generation: stray
               {"pid": 3, "name": "gone", "generation": "1"},        # no longer held: stray
               {"pid": 4, "name": "", "generation": ""},              # environ overwritten (Ray): left alone
               {"pid": 5, "name": "web-node1", "generation": None}]  # unreadable: left alone
    assert [s["pid"] for s in strays(scanned, {"web-node1": 2})] == [2, 3]
