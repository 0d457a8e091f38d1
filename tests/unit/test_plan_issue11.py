"""Issue 11's fixes, pinned without the engines environment (tests/conformance checks their meaning)."""

from __future__ import annotations

import textwrap

from dynamo_launch.inventory import parse
from dynamo_launch.plan import build
from dynamo_launch.plan.spec import ProcessSpec

HOSTS = """
[[hosts]]
name = "a"
address = "10.0.0.1"
gpus = 8
env = { NCCL_IB_HCA = "mlx5_0", SHARED = "host" }

[[hosts]]
name = "b"
address = "10.0.0.2"
gpus = 8
network_interface = "ib0"
"""


def _plan(workers: str, cluster: str = 'network_interface = "ens1f0"'):
    text = textwrap.dedent(f"""
        [cluster]
        name = "t"
        head = "a"
        state_dir = "/srv/dl"
        {cluster}

        [env]
        SHARED = "cluster"
        """) + HOSTS + textwrap.dedent(workers)
    return build(parse(text, "/etc/dl/t.toml"))


def _env(p: ProcessSpec) -> dict[str, object]:
    return {e.name: e.value for e in p.env}


def _flag(p: ProcessSpec, flag: str) -> str | None:
    return p.argv[p.argv.index(flag) + 1] if flag in p.argv else None


DP = """
[[workers]]
name = "r1"
backend = "vllm"
model = "m"
data_parallel_size = 16
hosts = ["a", "b"]
{lb}
"""


def test_dp_hybrid_by_default_every_node_serves_its_ranks() -> None:
    plan = _plan(DP.format(lb=""))
    leader, other = plan.process("r1-0"), plan.process("r1-0-rank1")
    for p, start in ((leader, "0"), (other, "8")):
        assert "--data-parallel-hybrid-lb" in p.argv and _flag(p, "--data-parallel-start-rank") == start
        assert "--headless" not in p.argv
        assert p.readiness.url.endswith(":9090/health") and p.liveness is not None and p.liveness.url.endswith("/live")
    assert other.kind == "dp-worker" and not other.leader and other.group == "r1-0"


def test_dp_internal_leader_has_no_start_rank_the_others_are_headless() -> None:
    plan = _plan(DP.format(lb='dp_load_balancing = "internal"'))
    leader, other = plan.process("r1-0"), plan.process("r1-0-rank1")
    assert "--data-parallel-start-rank" not in leader.argv and "--data-parallel-hybrid-lb" not in leader.argv
    assert _flag(other, "--data-parallel-start-rank") == "8" and other.argv[-1] == "--headless"


def test_both_sides_of_a_disaggregated_pair_get_the_nixl_connector_and_side_channel_host() -> None:
    plan = _plan("""
        [[workers]]
        name = "decode"
        backend = "vllm"
        role = "decode"
        model = "m"
        hosts = ["a"]

        [[workers]]
        name = "prefill"
        backend = "vllm"
        role = "prefill"
        model = "m"
        hosts = ["b"]
        """)
    for name, address in (("decode-0", "10.0.0.1"), ("prefill-0", "10.0.0.2")):
        p = plan.process(name)
        assert "NixlConnector" in str(_flag(p, "--kv-transfer-config"))
        assert _env(p)["VLLM_NIXL_SIDE_CHANNEL_HOST"] == address


def test_network_interface_per_cluster_and_per_host_reaches_every_rank() -> None:
    plan = _plan("""
        [[workers]]
        name = "w"
        backend = "vllm"
        model = "m"
        tensor_parallel_size = 16
        hosts = ["a", "b"]
        """)
    assert _env(plan.process("w-0"))["GLOO_SOCKET_IFNAME"] == "ens1f0"
    assert _env(plan.process("w-0-rank1"))["NCCL_SOCKET_IFNAME"] == "ib0"  # the host's own


def test_host_env_is_over_cluster_env_and_under_the_groups() -> None:
    plan = _plan("""
        [[workers]]
        name = "w"
        backend = "mocker"
        model = "m"
        hosts = ["a", "b"]
        env = { NCCL_IB_HCA = "group" }
        """)
    a, b = _env(plan.process("w-0")), _env(plan.process("w-1"))
    assert a["SHARED"] == "host" and a["NCCL_IB_HCA"] == "group"
    assert b["SHARED"] == "cluster" and "NCCL_IB_HCA" in b and b["NCCL_IB_HCA"] == "group"


def test_workers_get_two_hours_to_start_unless_their_group_says_otherwise() -> None:
    plan = _plan("""
        [[workers]]
        name = "big"
        backend = "vllm"
        model = "m"
        hosts = ["a"]

        [[workers]]
        name = "small"
        backend = "vllm"
        model = "m"
        hosts = ["b"]
        [workers.health]
        startup_timeout = 900.0
        """)
    assert plan.process("big-0").startup_timeout == 7200.0
    assert plan.process("small-0").startup_timeout == 900.0
    assert plan.process("nats").startup_timeout == 600.0


def test_no_deprecated_dyn_system_enabled() -> None:
    plan = _plan("""
        [[workers]]
        name = "w"
        backend = "vllm"
        model = "m"
        hosts = ["a"]
        """)
    assert all("DYN_SYSTEM_ENABLED" not in _env(p) for p in plan.processes)
    assert _env(plan.process("w-0"))["DYN_SYSTEM_PORT"] == "9090"
