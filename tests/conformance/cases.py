"""The conformance cases: every rendered engine argv, with what the inventory says it must mean.

Runs in the project's own environment (pure: inventory → plan → cases). Each case names the
parser (``kind``), the argv after ``python -m <module>`` with the model swapped for the tiny
local config directory, and ``expect``: the facts the engine's own config must show (see
``engine_check.py`` for how each fact is read back). Expectations are derived from the
inventory and the placement, never from the rendered argv, so a renderer that says the wrong
thing fails.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from dynamo_launch.inventory import load, parse
from dynamo_launch.model import DpLoadBalancing, Executor, Inventory, Role
from dynamo_launch.placement import Replica, place
from dynamo_launch.plan import build
from dynamo_launch.plan.spec import ProcessSpec
from dynamo_launch.versions import SUPPORTED_DYNAMO_VERSIONS

ROOT = Path(__file__).resolve().parents[2]
MODULES = {"dynamo.vllm": "vllm", "dynamo.sglang": "sglang", "dynamo.trtllm": "trtllm", "dynamo.mocker": "mocker",
           "dynamo.frontend": "frontend"}  # fmt: skip
MODEL_FLAGS = ("--model", "--model-path")


@dataclass
class Case:
    """One argv for one real parser, and what its config must say."""

    id: str
    kind: str
    argv: list[str]
    expect: dict[str, object] = field(default_factory=dict)
    source: str = ""
    dynamo_version: str = SUPPORTED_DYNAMO_VERSIONS[-1]

    def request(self) -> dict:
        """The JSON ``engine_check.py`` reads."""
        return {"id": self.id, "kind": self.kind, "argv": self.argv}


def engine_argv(argv: tuple[str, ...]) -> tuple[str, list[str]] | None:
    """``(kind, args after -m MODULE)`` for a Dynamo process, wherever ``python -m`` sits (mpirun)."""
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] in MODULES:
            return MODULES[argv[i + 1]], list(argv[i + 2 :])
    return None


def _with_model(args: list[str], model_dir: str) -> list[str]:
    """Swap the model for the tiny local config (its MoE twin when expert parallelism is on)."""
    if "--enable-expert-parallel" in args:
        model_dir += "-moe"  # vLLM refuses EP on a dense model
    out = list(args)
    for i, a in enumerate(out[:-1]):
        if a in MODEL_FLAGS:
            out[i + 1] = model_dir
    return out


def _ray_expect(inv: Inventory, spec: ProcessSpec) -> dict[str, object]:
    """A Ray node: the head listens on its port, a worker joins the head of its own cluster."""
    head = next((g.process for g in spec.depends_on if g.process and g.process.endswith("-head")), None)
    if head is None:
        port = next(int(a.split("=", 1)[1]) for a in spec.argv if a.startswith("--port="))
        return {"head": True, "port": port, "node_ip_address": spec.address, "block": True}
    head_spec = build(inv).process(head)
    port = next(int(a.split("=", 1)[1]) for a in head_spec.argv if a.startswith("--port="))
    return {"head": False, "address": f"{head_spec.address}:{port}", "node_ip_address": spec.address, "block": True}


def _serve_model(args: tuple[str, ...], model_dir: str) -> list[str]:
    """``serve MODEL …`` with the positional model swapped for the tiny one."""
    out = list(args)
    if len(out) > 1 and not out[1].startswith("-"):
        out[1] = model_dir
    return out


def _serve_expect(inv: Inventory, spec: ProcessSpec) -> dict[str, object]:
    """A ``vllm serve`` next to the inventory's Ray cluster uses it, listening where it is probed."""
    e: dict[str, object] = {}
    if inv.ray is not None and spec.host in (inv.ray.head, *inv.ray.workers):
        e["distributed_executor_backend"] = "ray"
    for gate in (spec.readiness,):
        if gate.port:
            e["port"] = gate.port
    return e


def _replica_of(inv: Inventory, name: str) -> tuple[Replica, int] | None:
    placement = place(inv)
    for replicas in placement.replicas.values():
        for replica in replicas:
            for node in replica.nodes:
                if name == replica.name or name == f"{replica.name}-rank{node.rank}":
                    if (node.rank == 0) == (name == replica.name):
                        return replica, node.rank
    return None


def _mode(role: Role, agg: str) -> str:
    return agg if role is Role.AGGREGATED else role.value


def expectations(inv: Inventory, spec: ProcessSpec, kind: str) -> dict[str, object]:
    """What the engine's config must show for ``spec``, from the inventory alone."""
    if kind == "frontend":
        assert inv.frontend is not None
        return {"http_port": inv.frontend.http_port}
    found = _replica_of(inv, spec.name)
    assert found is not None, f"{spec.name}: no replica"
    replica, rank = found
    g = replica.group
    leader = inv.host(replica.nodes[0].host).address
    n = len(replica.nodes)
    if kind == "mocker":
        return {"disaggregation_mode": _mode(g.role, "agg")}
    if kind == "trtllm":
        return {"tensor_parallel_size": g.tensor_parallel_size, "pipeline_parallel_size": g.pipeline_parallel_size}
    if kind == "sglang":
        e: dict[str, object] = {"tp_size": g.tensor_parallel_size, "pp_size": g.pipeline_parallel_size,
                                "dp_size": g.data_parallel_size, "disaggregation_mode": _mode(g.role, "null")}  # fmt: skip
        if replica.multi_node:
            e.update(nnodes=n, node_rank=rank, dist_init_addr=f"{leader}:{g.master_port}")
        return e
    # vLLM
    e = {"tensor_parallel_size": g.tensor_parallel_size, "pipeline_parallel_size": g.pipeline_parallel_size,
         "data_parallel_size": g.data_parallel_size, "disaggregation_mode": _mode(g.role, "agg")}  # fmt: skip
    if g.role is not Role.AGGREGATED and not any(a.startswith("--kv-transfer-config") for a in g.extra_args):
        e.update(kv_connector="NixlConnector", kv_role="kv_both")  # both sides of a disaggregated pair
    dp = g.data_parallel_size
    if not replica.multi_node:
        e.update(headless=False, served_dp_ranks=[0, dp])
    elif g.executor is Executor.RAY:
        e.update(headless=False, distributed_executor_backend="ray", served_dp_ranks=[0, dp])
    elif dp > 1:
        local = replica.dp_local
        e.update(data_parallel_size_local=local, data_parallel_rank=local * rank, data_parallel_master_ip=leader,
                 data_parallel_rpc_port=g.dp_rpc_port)  # fmt: skip
        if g.dp_load_balancing is DpLoadBalancing.HYBRID:
            # Every node is a Dynamo worker serving its own local ranks. With one rank per node
            # vLLM calls that external LB (hybrid "is not eligible"): the same meaning.
            lb = "data_parallel_hybrid_lb" if local > 1 else "data_parallel_external_lb"
            e.update({"headless": False, lb: True, "served_dp_ranks": [local * rank, local]})
        else:
            # The leader's engine core balances all ranks; the others are headless.
            e.update(headless=rank > 0, data_parallel_hybrid_lb=False,
                     served_dp_ranks=[0, dp] if rank == 0 else None)  # fmt: skip
    else:
        e.update(headless=rank > 0, nnodes=n, node_rank=rank, master_addr=leader, master_port=g.master_port,
                 distributed_executor_backend="mp", served_dp_ranks=[0, 1] if rank == 0 else None)  # fmt: skip
    return e


def cases_for(inv: Inventory, label: str, model_dir: str) -> list[Case]:
    """One case per Dynamo process of the plan of ``inv``."""
    version = inv.cluster.dynamo_version
    out = []
    for spec in build(inv).processes:
        if spec.argv[0].rsplit("/", 1)[-1] == "ray" and spec.argv[1:2] == ("start",):
            out.append(Case(f"{label}:{spec.name}", "ray", list(spec.argv[1:]), _ray_expect(inv, spec), label, version))
            continue
        if spec.argv[0].rsplit("/", 1)[-1] == "vllm" and spec.argv[1:2] == ("serve",):
            out.append(Case(f"{label}:{spec.name}", "vllm-serve", _with_model(_serve_model(spec.argv[1:], model_dir), model_dir),
                            _serve_expect(inv, spec), label, version))  # fmt: skip
            continue
        found = engine_argv(spec.argv)
        if found is None:
            continue
        kind, args = found
        out.append(Case(f"{label}:{spec.name}", kind, _with_model(args, model_dir), expectations(inv, spec, kind), label,
                        version))  # fmt: skip
    return out


def example_inventories() -> list[tuple[str, Inventory]]:
    """Every example, and the embedded default inventory."""
    paths = sorted(ROOT.glob("examples/*.toml")) + [ROOT / "inventory.example.toml"]
    return [("embedded-default" if p.name == "inventory.example.toml" else p.stem, load(str(p))) for p in paths]


_HOSTS = "\n".join(f'[[hosts]]\nname = "n{i}"\naddress = "10.9.0.{i + 1}"\ngpus = 8\n' for i in range(5))


def _toml(version: str, worker: str, extra_hosts: str = "") -> str:
    return (f'[cluster]\nname = "m"\nhead = "n0"\ndynamo_version = "{version}"\npython = "/opt/venv/bin/python"\n\n'
            f"{_HOSTS}{extra_hosts}\n[frontend]\n\n[[workers]]\n{worker}\n")  # fmt: skip


def _layouts() -> list[tuple[str, str]]:
    """(label, [[workers]] body): backend × role × layout."""
    out = []
    roles = ("aggregated", "prefill", "decode")
    for role in roles:
        out += [
            (f"vllm-{role}-1node-tp4x2", f'name = "w"\nbackend = "vllm"\nrole = "{role}"\nmodel = "m/m"\nhosts = ["n0"]\ntensor_parallel_size = 4'),
            (f"vllm-{role}-tp16-mp", f'name = "w"\nbackend = "vllm"\nrole = "{role}"\nmodel = "m/m"\nhosts = ["n0", "n1"]\ntensor_parallel_size = 16'),
            (f"vllm-{role}-tp16-ray", f'name = "w"\nbackend = "vllm"\nrole = "{role}"\nmodel = "m/m"\nhosts = ["n0", "n1"]\ntensor_parallel_size = 16\nexecutor = "ray"'),
            (f"vllm-{role}-tp8pp2-mp", f'name = "w"\nbackend = "vllm"\nrole = "{role}"\nmodel = "m/m"\nhosts = ["n0", "n1"]\ntensor_parallel_size = 8\npipeline_parallel_size = 2'),
            (f"vllm-{role}-1node-dp8", f'name = "w"\nbackend = "vllm"\nrole = "{role}"\nmodel = "m/m"\nhosts = ["n0"]\ndata_parallel_size = 8'),
            (f"sglang-{role}-1node", f'name = "w"\nbackend = "sglang"\nrole = "{role}"\nmodel = "m/m"\nhosts = ["n0"]\ntensor_parallel_size = 8'),
            (f"sglang-{role}-tp16", f'name = "w"\nbackend = "sglang"\nrole = "{role}"\nmodel = "m/m"\nhosts = ["n0", "n1"]\ntensor_parallel_size = 16'),
            (f"trtllm-{role}-1node", f'name = "w"\nbackend = "trtllm"\nrole = "{role}"\nmodel = "m/m"\nhosts = ["n0"]\ntensor_parallel_size = 8'),
            (f"trtllm-{role}-tp16", f'name = "w"\nbackend = "trtllm"\nrole = "{role}"\nmodel = "m/m"\nhosts = ["n0", "n1"]\ntensor_parallel_size = 16'),
            (f"mocker-{role}", f'name = "w"\nbackend = "mocker"\nrole = "{role}"\nmodel = "m/m"\nhosts = ["n0"]'),
        ]  # fmt: skip
        for lb, (tp, dp, hosts) in itertools.product(("internal", "hybrid"), ((1, 16, 2), (4, 4, 2), (8, 4, 4))):
            host_list = ", ".join(f'"n{i}"' for i in range(hosts))
            out.append((f"vllm-{role}-dp{dp}-tp{tp}-{hosts}node-{lb}",
                        f'name = "w"\nbackend = "vllm"\nrole = "{role}"\nmodel = "m/m"\nhosts = [{host_list}]\n'
                        f'tensor_parallel_size = {tp}\ndata_parallel_size = {dp}\ndp_load_balancing = "{lb}"'))  # fmt: skip
    return out


def matrix_inventories() -> list[tuple[str, Inventory]]:
    """Backend × role × layout × every Dynamo version the inventory accepts."""
    out = []
    for version in SUPPORTED_DYNAMO_VERSIONS:
        for label, worker in _layouts():
            if 'role = "prefill"' in worker:  # validation wants the decode side a prefill group hands KV to
                backend = worker.split('backend = "', 1)[1].split('"', 1)[0]
                tp = "" if backend == "mocker" else "\ntensor_parallel_size = 8"
                worker += f'\n\n[[workers]]\nname = "d"\nbackend = "{backend}"\nrole = "decode"\nmodel = "m/m"\nhosts = ["n4"]{tp}'
            out.append((f"{label}@{version}", parse(_toml(version, worker), f"matrix/{label}.toml")))
    return out


def finding_cases(model_dir: str) -> list[Case]:
    """The issue's findings, reproduced against the real parsers (what the old plans did).

    ``expect`` with ``rejected`` names a fragment of the parser's error; otherwise the facts the
    engine's config shows. They keep the reasons for the renderer's choices checkable.
    """
    dp = ["--model", model_dir, "--tensor-parallel-size", "8", "--data-parallel-size", "16", "--data-parallel-size-local",
          "8", "--data-parallel-address", "10.0.0.1", "--data-parallel-rpc-port", "13445"]  # fmt: skip
    return [
        # Removed in Dynamo 1.4: 1.6.1 refuses it.
        Case("finding:is-prefill-worker", "vllm", ["--model", model_dir, "--is-prefill-worker"],
             {"rejected": "unrecognized arguments: --is-prefill-worker"}, "finding"),
        # A start rank on a non-headless leader, without --data-parallel-hybrid-lb: vLLM 0.31 turns
        # hybrid LB on by itself and the leader's Dynamo worker serves ranks 0-7 of 16 only.
        Case("finding:dp-leader-start-rank", "vllm", [*dp, "--data-parallel-start-rank", "0"],
             {"data_parallel_hybrid_lb": True, "served_dp_ranks": [0, 8]}, "finding"),
        # Decode without a connector: no KV transfer at all.
        Case("finding:decode-without-connector", "vllm", ["--model", model_dir, "--disaggregation-mode", "decode"],
             {"kv_connector": None}, "finding"),
        # Prefill without one is refused by Dynamo itself.
        Case("finding:prefill-without-connector", "vllm", ["--model", model_dir, "--disaggregation-mode", "prefill"],
             {"rejected": "kv-transfer-config"}, "finding"),
    ]  # fmt: skip
