"""Run rendered argvs through the real engines' argument parsers (runs in ``.venv-engines``).

This file is executed by ``.venv-engines/bin/python`` (built by ``scripts/engines-env``), never
imported by the project's own environment: the engines (ai-dynamo, vLLM, SGLang) are too heavy
and too pinned to share one. It reads a batch of cases as JSON on stdin and writes one JSON
result per case on stdout, so the whole batch costs one interpreter start and one import of each
engine (the imports are most of the time).

A case is ``{"id", "kind", "argv", "env"}``: ``kind`` names the parser, ``argv`` is everything
after ``python -m <module>``. A result is ``{"id", "ok", "error", "facts"}``: ``facts`` is what
the engine made of the argv, read back from the config objects the engine itself builds, so the
test can compare it with what the inventory asked for.

What is real and what is not (docs/conformance.md says the same):

* vLLM: Dynamo's own ``dynamo.vllm.args.parse_args`` (Dynamo + vLLM flags, Dynamo's validation),
  then vLLM's ``AsyncEngineArgs.create_engine_config(headless=...)`` exactly as ``dynamo.vllm``
  calls it, on the tiny config directory the test passes (``--load-format dummy``: no weights).
  vLLM runs on its CPU platform (``VLLM_TARGET_DEVICE=cpu``) because there is no GPU; the
  parallel/DP/KV-transfer decisions read here do not depend on the platform.
* SGLang: Dynamo's ``dynamo.sglang.args.parse_args`` → SGLang's ``ServerArgs``.
* TensorRT-LLM: its wheel is an NVIDIA download stub that PyPI cannot serve, so only Dynamo's
  own ``dynamo.trtllm.args.parse_args`` runs; the one thing it takes from TensorRT-LLM (four
  default values of ``BaseLlmArgs``) is stubbed below.
* mocker, frontend: Dynamo's own parsers.
* ``vllm serve`` (a generic process): vLLM's own ``serve`` subcommand parser and engine config.
* ``ray start``: Ray's own click command (``make_context``: parsed, never run).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import sys
import types

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # no GPU here: vLLM's CPU platform
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local directory; never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("DYN_LOG", "error")


def _stub_tensorrt_llm() -> None:
    """Dynamo's trtllm parser reads four defaults from TensorRT-LLM's ``BaseLlmArgs``; nothing else."""
    try:
        import tensorrt_llm  # noqa: F401  (a real install wins)

        return
    except ImportError:
        pass

    class _Field:
        def __init__(self, default: object) -> None:
            self.default = default

    class BaseLlmArgs:  # TensorRT-LLM 1.3's defaults for the fields Dynamo reads
        model_fields = {
            "max_batch_size": _Field(2048),
            "max_num_tokens": _Field(8192),
            "max_seq_len": _Field(None),
            "max_beam_width": _Field(1),
        }

    root = types.ModuleType("tensorrt_llm")
    llmapi = types.ModuleType("tensorrt_llm.llmapi")
    llm_args = types.ModuleType("tensorrt_llm.llmapi.llm_args")
    llm_args.BaseLlmArgs = BaseLlmArgs  # type: ignore[attr-defined]
    llmapi.llm_args = llm_args  # type: ignore[attr-defined]
    root.llmapi = llmapi  # type: ignore[attr-defined]
    root.__stub__ = True  # type: ignore[attr-defined]
    sys.modules.update({"tensorrt_llm": root, "tensorrt_llm.llmapi": llmapi, "tensorrt_llm.llmapi.llm_args": llm_args})


def _vllm(argv: list[str]) -> dict:
    from dynamo.vllm.args import parse_args
    from dynamo.vllm.dp_topology import get_dp_range_for_worker

    cfg = parse_args(argv)
    ea = cfg.engine_args
    facts: dict = {
        "headless": bool(cfg.headless),
        "disaggregation_mode": getattr(cfg.disaggregation_mode, "value", str(cfg.disaggregation_mode)),
    }
    # dynamo.vllm.main: a headless node hands the args to vLLM's run_headless, which builds the
    # config with headless=True; the serving worker builds it with the default (False).
    vc = ea.create_engine_config(headless=cfg.headless)
    pc = vc.parallel_config
    facts.update(
        tensor_parallel_size=pc.tensor_parallel_size,
        pipeline_parallel_size=pc.pipeline_parallel_size,
        data_parallel_size=pc.data_parallel_size,
        data_parallel_size_local=pc.data_parallel_size_local,
        data_parallel_rank=pc.data_parallel_rank,
        data_parallel_master_ip=pc.data_parallel_master_ip,
        data_parallel_rpc_port=pc.data_parallel_rpc_port,
        data_parallel_hybrid_lb=bool(pc.data_parallel_hybrid_lb),
        data_parallel_external_lb=bool(pc.data_parallel_external_lb),
        nnodes=pc.nnodes,
        node_rank=pc.node_rank,
        master_addr=pc.master_addr,
        master_port=pc.master_port,
        distributed_executor_backend=str(pc.distributed_executor_backend),
    )
    # What Dynamo serves: the DP ranks its worker registers (dynamo.vllm.main). Headless nodes
    # register none.
    facts["served_dp_ranks"] = None if cfg.headless else list(get_dp_range_for_worker(vc))
    kv = vc.kv_transfer_config
    facts["kv_connector"] = kv.kv_connector if kv else None
    facts["kv_role"] = kv.kv_role if kv else None
    return facts


def _sglang(argv: list[str]) -> dict:
    import asyncio

    from dynamo.sglang.args import parse_args

    cfg = asyncio.run(parse_args(argv))
    sa = cfg.server_args
    return {
        "tp_size": sa.tp_size,
        "pp_size": sa.pp_size,
        "dp_size": sa.dp_size,
        "nnodes": sa.nnodes,
        "node_rank": sa.node_rank,
        "dist_init_addr": sa.dist_init_addr,
        "disaggregation_mode": sa.disaggregation_mode,
    }


def _trtllm(argv: list[str]) -> dict:
    _stub_tensorrt_llm()
    from dynamo.trtllm.args import parse_args

    cfg = parse_args(argv)
    return {
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "pipeline_parallel_size": cfg.pipeline_parallel_size,
        "disaggregation_mode": getattr(cfg.disaggregation_mode, "value", str(cfg.disaggregation_mode)),
    }


def _mocker(argv: list[str]) -> dict:
    from dynamo.mocker.args import parse_args

    ns = parse_args(argv)
    return {"disaggregation_mode": ns.disaggregation_mode, "dp_size": ns.dp_size}


def _frontend(argv: list[str]) -> dict:
    from dynamo.frontend.main import parse_args

    saved = sys.argv
    sys.argv = ["dynamo.frontend", *argv]
    try:
        config = parse_args()[0]
    finally:
        sys.argv = saved
    return {"http_port": config.http_port, "router_mode": str(getattr(config, "router_mode", ""))}


def _vllm_serve(argv: list[str]) -> dict:
    """Plain ``vllm serve`` (no Dynamo): vLLM's own CLI subcommand parser, then its engine config."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand

    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser  # type: ignore[no-redef]

    parser = FlexibleArgumentParser()
    command = ServeSubcommand()
    command.subparser_init(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    command.validate(args)
    if getattr(args, "model_tag", None) is not None:  # as ServeSubcommand.cmd does
        args.model = args.model_tag
    vc = AsyncEngineArgs.from_cli_args(args).create_engine_config(headless=bool(args.headless))
    pc = vc.parallel_config
    return {"tensor_parallel_size": pc.tensor_parallel_size, "pipeline_parallel_size": pc.pipeline_parallel_size,
            "distributed_executor_backend": str(pc.distributed_executor_backend), "port": args.port,
            "host": args.host}  # fmt: skip


def _ray(argv: list[str]) -> dict:
    """``ray start ...`` through Ray's own click command, parsed but not run."""
    from ray.scripts.scripts import start

    assert argv[:1] == ["start"], argv
    ctx = start.make_context("ray start", list(argv[1:]))
    p = ctx.params
    return {"head": bool(p["head"]), "port": p.get("port"), "address": p.get("address"),
            "node_ip_address": p.get("node_ip_address"), "block": bool(p["block"])}  # fmt: skip


_KINDS = {"ray": _ray, "vllm-serve": _vllm_serve, "vllm": _vllm, "sglang": _sglang, "trtllm": _trtllm, "mocker": _mocker, "frontend": _frontend}


def versions() -> dict:
    """Installed versions of what the checks run, for the report."""
    out = {}
    for dist in ("ai-dynamo", "ai-dynamo-runtime", "vllm", "sglang", "tensorrt-llm", "torch", "ray"):
        try:  # the first on sys.path, as the import system sees it (a dynamo_path included)
            out[dist] = importlib.metadata.distribution(dist).version
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    spec = importlib.util.find_spec("dynamo.vllm")  # where the code that parses really comes from
    out["dynamo.vllm"] = spec.origin if spec else None
    return out


def run_case(case: dict) -> dict:
    """One case: parse, build the config, read the facts back; errors become data."""
    saved = dict(os.environ)
    os.environ.update(case.get("env", {}))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
            facts = _KINDS[case["kind"]](list(case["argv"]))
        return {"id": case["id"], "ok": True, "error": "", "facts": facts}
    except SystemExit as e:  # argparse: the message went to stderr
        lines = [line for line in err.getvalue().splitlines() if "error" in line.lower()] or [f"exit {e.code}"]
        return {"id": case["id"], "ok": False, "error": lines[-1][-600:], "facts": {}}
    except BaseException as e:  # noqa: BLE001 - every engine error is a finding, reported per case
        return {"id": case["id"], "ok": False, "error": f"{type(e).__name__}: {e}"[-600:], "facts": {}}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main() -> None:
    """Read ``{"cases": [...]}`` on stdin; print ``{"versions", "results"}`` on stdout.

    ``"dynamo_path"`` in the request: a folder holding another ai-dynamo release's wheels
    (``scripts/engines-env``), put first on ``sys.path`` before any import.
    """
    request = json.load(sys.stdin)
    if request.get("dynamo_path"):
        sys.path.insert(0, request["dynamo_path"])
    out = sys.stdout
    sys.stdout = sys.stderr  # engines print on import; keep stdout for the answer
    if request.get("versions_only"):
        json.dump({"versions": versions(), "results": []}, out)
        return
    results = [run_case(c) for c in request["cases"]]
    json.dump({"versions": versions(), "results": results}, out)


if __name__ == "__main__":
    main()
