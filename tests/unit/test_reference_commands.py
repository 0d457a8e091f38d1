"""The commands of the reference guides (../shared/reference/), checked against our plans.

Each case quotes a guide's command for one node. Its words must appear in the
planned argv of a process on that node, in the guide's order (the launcher may
add words in between, e.g. ``--nnodes`` for the mp executor, never drop or
reorder the guide's). ``python`` in a guide matches the inventory's interpreter;
``<...>`` placeholders are filled from the example's addresses.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from dynamo_launch.load import load_plan
from dynamo_launch.plan import Plan

ROOT = Path(__file__).resolve().parents[2]
HEAD, NODE2, NODE3, NODE4 = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"

# (example, host, guide command, placeholders) — commands copied from the guides.
CASES = [
    # vLLM "Multi-node Examples" (reference 004): multi-node aggregated serving
    ("llama-3.3-70b-agg-2node", "node1", "python -m dynamo.frontend --router-mode kv", {}),
    ("llama-3.3-70b-agg-2node", "node1", "python -m dynamo.vllm --model meta-llama/Llama-3.3-70B-Instruct --tensor-parallel-size 8 --enforce-eager", {}),
    ("llama-3.3-70b-agg-2node", "node2", "python -m dynamo.vllm --model meta-llama/Llama-3.3-70B-Instruct --tensor-parallel-size 8 --enforce-eager", {}),
    # 004: multi-node disaggregated serving
    ("llama-3.3-70b-disagg-2node", "node1", "python -m dynamo.frontend --router-mode kv", {}),
    ("llama-3.3-70b-disagg-2node", "node1", "python -m dynamo.vllm --model meta-llama/Llama-3.3-70B-Instruct --tensor-parallel-size 8 --enforce-eager", {}),
    # (the guide spells prefill `--is-prefill-worker`, which Dynamo 1.6.1's parser rejects: the
    # real parser wins, tests/conformance)
    ("llama-3.3-70b-disagg-2node", "node2", "python -m dynamo.vllm --model meta-llama/Llama-3.3-70B-Instruct --tensor-parallel-size 8 --enforce-eager --disaggregation-mode prefill", {}),
    # 004: TP=16 across 2× 8-GPU nodes
    ("llama-405b-tp16-headless", "node1", "python -m dynamo.frontend --router-mode kv", {}),
    ("llama-405b-tp16-headless", "node1", "python -m dynamo.vllm --model meta-llama/Llama-3.1-405B-Instruct --tensor-parallel-size 16 --enforce-eager", {}),
    ("llama-405b-tp16-headless", "node2", "python -m dynamo.vllm --model meta-llama/Llama-3.1-405B-Instruct --tensor-parallel-size 16 --enforce-eager --headless", {}),
    # 004: TP=8, PP=2 across 2× 8-GPU nodes
    ("llama-405b-tp8-pp2-headless", "node1", "python -m dynamo.vllm --model meta-llama/Llama-3.1-405B-Instruct --tensor-parallel-size 8 --pipeline-parallel-size 2 --enforce-eager", {}),
    ("llama-405b-tp8-pp2-headless", "node2", "python -m dynamo.vllm --model meta-llama/Llama-3.1-405B-Instruct --tensor-parallel-size 8 --pipeline-parallel-size 2 --enforce-eager --headless", {}),
    # "Multinode Examples" (001): DeepSeek-R1 TP16 over a Ray cluster of two nodes
    ("deepseek-r1-tp16-ray", "node1", "ray start --head --port=6379", {}),
    ("deepseek-r1-tp16-ray", "node2", "ray start --address=<head-node-address>:6379", {"head-node-address": HEAD}),
    # "Multinode Deployments" (000): Ray executor leader and workers
    ("deepseek-r1-tp16-ray", "node1", "python -m dynamo.vllm --model deepseek-ai/DeepSeek-R1 --tensor-parallel-size 16 --distributed-executor-backend ray", {}),
    ("deepseek-r1-tp16-ray", "node2", "ray start --address=<leader-hostname>:6379 --block", {"leader-hostname": HEAD}),
    # 001: etcd started directly, discoverable from other nodes
    ("deepseek-r1-tp16-ray", "node1", "etcd --advertise-client-urls http://<head-node-ip>:2379 --listen-client-urls http://<head-node-ip>:2379,http://127.0.0.1:2379", {"head-node-ip": HEAD}),
    # 001: disaggregated R1 on 4 nodes, every two nodes one Ray cluster
    ("deepseek-r1-disagg-4node-ray", "node1", "ray start --head --port=6379", {}),
    ("deepseek-r1-disagg-4node-ray", "node2", "ray start --address=<head-node-address>:6379", {"head-node-address": HEAD}),
    ("deepseek-r1-disagg-4node-ray", "node3", "ray start --head --port=6379", {}),
    ("deepseek-r1-disagg-4node-ray", "node4", "ray start --address=<head-node-address>:6379", {"head-node-address": NODE3}),
    # 000: SGLang leader and worker flags
    ("sglang-2node", "node1", "--dist-init-addr <leader-hostname>:29500 --nnodes 2 --node-rank 0", {"leader-hostname": HEAD}),
    ("sglang-2node", "node2", "--dist-init-addr <leader-hostname>:29500 --nnodes 2 --node-rank 1", {"leader-hostname": HEAD}),
    # DESIGN §3: NATS with JetStream, store dir and monitoring port
    ("llama-405b-fp8-disagg-3node", "node1", "nats-server -js -sd /var/lib/dynamo-launch/llama405b-disagg/nats -m 8222", {}),
]

# 000: flags the operator injects on every node of a data-parallel deployment (a list, not an order);
# its form is hybrid LB: every node a full Dynamo worker (dp_load_balancing = "hybrid", the default).
DP_FLAGS = {
    "node1": {"--data-parallel-address": HEAD, "--data-parallel-size-local": "8", "--data-parallel-rpc-port": "13445", "--data-parallel-start-rank": "0"},
    "node2": {"--data-parallel-address": HEAD, "--data-parallel-size-local": "8", "--data-parallel-rpc-port": "13445", "--data-parallel-start-rank": "8"},
}


def _plan(example: str) -> Plan:
    return load_plan(str(ROOT / "examples" / f"{example}.toml"))[1]


def _word_matches(guide: str, word: str) -> bool:
    if guide in ("python", "ray"):
        return word.rsplit("/", 1)[-1] in (guide, "python3") if guide == "python" else word.rsplit("/", 1)[-1] == "ray"
    return guide == word


def _in_order(guide: list[str], argv: tuple[str, ...]) -> bool:
    i = 0
    for word in argv:
        if i < len(guide) and _word_matches(guide[i], word):
            i += 1
    return i == len(guide)


@pytest.mark.parametrize(("example", "host", "command", "fill"), CASES, ids=[f"{c[0]}:{c[1]}:{c[2].split()[0]}" for c in CASES])
def test_guide_command_appears_in_order(example: str, host: str, command: str, fill: dict[str, str]) -> None:
    for key, value in fill.items():
        command = command.replace(f"<{key}>", value)
    guide = shlex.split(command)
    procs = _plan(example).on_host(host)
    assert any(_in_order(guide, p.argv) for p in procs), (
        f"{example}/{host}: no process runs `{command}` in order; planned:\n" + "\n".join(" ".join(p.argv) for p in procs)
    )


@pytest.mark.parametrize("host", sorted(DP_FLAGS))
def test_data_parallel_flags_on_every_node(host: str) -> None:
    (proc,) = _plan("deepseek-r1-dp16-ep-2node").on_host(host)[-1:]
    pairs = dict(zip(proc.argv, proc.argv[1:]))
    for flag, value in DP_FLAGS[host].items():
        assert pairs.get(flag) == value, f"{host}: {flag} should be {value}"
    assert "--headless" not in proc.argv and "--data-parallel-hybrid-lb" in proc.argv


@pytest.mark.parametrize(
    "example",
    ["llama-3.3-70b-agg-2node", "llama-405b-tp16-headless", "deepseek-r1-tp16-ray", "llama-405b-fp8-disagg-3node", "sglang-2node"],
)
def test_discovery_env_on_every_dynamo_process(example: str) -> None:
    plan = _plan(example)
    for proc in plan.processes:
        names = {e.name: e.value for e in proc.env}
        if proc.kind in ("nats", "etcd"):
            continue
        if proc.kind.startswith("ray"):
            assert names["VLLM_HOST_IP"] == proc.address  # 001: "export VLLM_HOST_IP=<current-node-address>"
            continue
        assert names["NATS_SERVER"] == f"nats://{HEAD}:4222", proc.name
        assert names["ETCD_ENDPOINTS"] == f"http://{HEAD}:2379", proc.name
        if "dynamo.vllm" in proc.argv:
            assert names["VLLM_HOST_IP"] == proc.address, proc.name


def test_trtllm_leader_wraps_worker_in_mpirun_over_all_hosts() -> None:
    plan = _plan("trtllm-2node")
    (leader,) = plan.on_host("node1")[-1:]
    assert leader.argv[:5] == ("mpirun", "--oversubscribe", "--mca", "pml", "ob1")  # the operator's form
    pairs = dict(zip(leader.argv, leader.argv[1:]))
    assert pairs["-H"] == f"{HEAD}:8,{NODE2}:8" and pairs["-np"] == "16"
    assert {"name": "OMPI_MCA_orte_keep_fqdn_hostnames", "value": "1"} in [{"name": e.name, "value": e.value} for e in leader.env]
    assert leader.argv.index("dynamo.trtllm") > leader.argv.index("-np")
    exported = {leader.argv[i + 1] for i, a in enumerate(leader.argv) if a == "-x"}
    assert {"PATH", "LD_LIBRARY_PATH", "NATS_SERVER", "ETCD_ENDPOINTS"} <= exported
    launcher = next(a for a in leader.argv if a.endswith("trtllm-llmapi-launch"))
    assert launcher.startswith("/"), "ranks start from a bare SSH shell: the launcher by absolute path"
    assert plan.on_host("node2") == ()  # MPI starts the ranks; nothing of ours runs there


def test_ray_gang_leader_waits_for_every_node() -> None:
    plan = _plan("deepseek-r1-tp16-ray")
    leader = plan.process("r1-0")
    gates = [g.probe for g in leader.depends_on if g.probe is not None]
    assert [(p.kind.value, p.expect) for p in gates] == [("ray-nodes", 2)]
    assert plan.gangs[0].members == ("r1-0-ray-head", "r1-0-ray-1", "r1-0")
    assert "--nnodes" not in leader.argv  # 000: "The --nnodes flag is NOT used with Ray"


def test_headless_ranks_wait_for_the_leaders_master_port() -> None:
    plan = _plan("llama-405b-tp16-headless")
    rank = plan.process("llama-0-rank1")
    (gate,) = rank.depends_on
    assert gate.probe is not None and (gate.probe.address, gate.probe.port) == (HEAD, 29500)
    assert [p.name for p in plan.processes].index("llama-0") < [p.name for p in plan.processes].index("llama-0-rank1")


def test_nats_and_etcd_start_first_on_the_head() -> None:
    for example in ["llama-405b-fp8-disagg-3node", "deepseek-r1-disagg-4node-ray"]:
        plan = _plan(example)
        assert [p.name for p in plan.processes[:2]] == ["nats", "etcd"]
        assert {p.host for p in plan.processes[:2]} == {"node1"}
