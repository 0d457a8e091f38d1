"""Preflight of multi-node replicas' network and of the engines' versions (judged from facts)."""

from __future__ import annotations

import json
import subprocess
import sys

from dynamo_launch.inventory import parse
from dynamo_launch.plan import build
from dynamo_launch.preflight import FACTS, judge

TP16 = """
[cluster]
name = "t"
head = "a"
state_dir = "/srv/dl"
{cluster}

[[hosts]]
name = "a"
address = "10.0.0.1"
gpus = 8

[[hosts]]
name = "b"
address = "10.0.0.2"
gpus = 8
{host_b}

[[workers]]
name = "w"
backend = "{backend}"
model = "m"
tensor_parallel_size = {tp}
hosts = ["a", "b"]
"""


def _inv(cluster: str = "", host_b: str = "", backend: str = "vllm", tp: int = 16):
    inv = parse(TP16.format(cluster=cluster, host_b=host_b, backend=backend, tp=tp), "t.toml")
    return inv, build(inv)


def _fact(**kw: object) -> dict:
    base = {"python": "3.11.7", "packages": {"ai-dynamo": "1.6.1", "vllm": "0.31.0"}, "gpus": 8, "listening": [],
            "hostname": "node", "hostname_addresses": ["10.0.0.9"],
            "interfaces": {"lo": ["127.0.0.1"], "ens1f0": ["10.0.0.1", "10.0.0.2"]}}  # fmt: skip
    base.update(kw)
    return base


def _checks(inv, plan, **facts: dict) -> dict:
    return {(c.host, c.name): c for c in judge(inv, plan, facts)}


def test_hostname_on_loopback_without_an_interface_fails_with_the_key_to_set() -> None:
    inv, plan = _inv()
    checks = _checks(inv, plan, a=_fact(hostname_addresses=["127.0.1.1"]), b=_fact())
    net = checks[("a", "network")]
    assert net.status == "fail" and "127.0.1.1" in net.detail and "network_interface" in net.detail
    assert checks[("b", "network")].status == "warn"


def test_interface_must_exist_and_carry_the_hosts_address() -> None:
    inv, plan = _inv(cluster='network_interface = "ens1f0"', host_b='network_interface = "ib0"')
    checks = _checks(inv, plan, a=_fact(), b=_fact())
    assert checks[("a", "network")].status == "ok"
    assert checks[("b", "network")].status == "fail" and "'ib0' does not exist" in checks[("b", "network")].detail
    elsewhere = _fact(interfaces={"ens1f0": ["192.168.1.5"], "ens2": ["10.0.0.1"]})
    checks = _checks(inv, plan, a=elsewhere, b=_fact())
    assert checks[("a", "network")].status == "fail" and "10.0.0.1 is on ens2" in checks[("a", "network")].detail


def test_single_node_replicas_need_no_network_check() -> None:
    inv, plan = _inv(tp=8)
    checks = _checks(inv, plan, a=_fact(hostname_addresses=["127.0.1.1"]), b=_fact())
    assert ("a", "network") not in checks


def test_engines_must_be_installed_at_the_verified_versions() -> None:
    inv, plan = _inv(tp=8)
    checks = _checks(inv, plan, a=_fact(packages={"ai-dynamo": "1.6.1"}),
                     b=_fact(packages={"ai-dynamo": "1.4.0", "vllm": "0.30.0"}))  # fmt: skip
    assert checks[("a", "engine vllm")].status == "fail"
    assert checks[("b", "engine ai-dynamo")].status == "fail" and "'1.6.1'" in checks[("b", "engine ai-dynamo")].detail
    assert checks[("b", "engine vllm")].status == "warn" and "pins 0.31.0" in checks[("b", "engine vllm")].detail


def test_trtllm_mpirun_leader_is_checked_for_the_network() -> None:
    inv, plan = _inv(backend="trtllm", cluster='network_interface = "ens1f0"')
    checks = _checks(inv, plan, a=_fact(packages={"ai-dynamo": "1.6.1", "tensorrt-llm": "1.3.0rc29"}), b=_fact())
    assert checks[("a", "network")].status == "ok" and checks[("a", "engine tensorrt-llm")].status == "ok"


def test_facts_program_reports_interfaces_and_the_resolved_hostname() -> None:
    out = subprocess.run([sys.executable, "-c", FACTS, json.dumps(["ai-dynamo"])], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    facts = json.loads(out.stdout)
    assert "lo" in facts["interfaces"]
    assert facts["interfaces"]["lo"] is None or "127.0.0.1" in facts["interfaces"]["lo"]
    assert isinstance(facts["hostname_addresses"], list)
    assert set(facts["modules"]) >= {"dynamo.vllm", "dynamo.mocker"}


def test_a_backend_module_python_cannot_find_fails() -> None:
    inv, plan = _inv(tp=8)
    no_vllm = {"dynamo.vllm": False, "dynamo.mocker": True}
    checks = _checks(inv, plan, a=_fact(modules=no_vllm), b=_fact(modules={"dynamo.vllm": True}))
    assert checks[("a", "engine dynamo.vllm")].status == "fail"
    assert ("b", "engine dynamo.vllm") not in checks
