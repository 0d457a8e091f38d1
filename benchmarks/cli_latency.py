"""Scenario 6, CLI latency: ``status`` against a daemon supervising 32 hosts × 3 processes, and
``plan`` / ``validate`` of a generated 256-host inventory.

    sudo .venv/bin/python -m benchmarks.cli_latency [--hosts 32] [--quick] [--repeats 10] [--no-daemon]

Method
------
Every command is the real CLI (the ``dynamo-launch`` console script of the venv), started as a
subprocess exactly as an operator would type it; nothing is warmed in-process. For each run the
wall time from ``Popen`` to exit is recorded, and the child's CPU time (user+sys from
``wait4``'s rusage), which is much less sensitive than wall time to the other benchmarks sharing
this 2-core machine. Each command is run ``repeats`` times (first run included: the OS file
cache is warm after the first one anyway), summarised with ``summary()``. Exit status must be 0.

* ``status`` (the human table) and ``status --json`` against a daemon supervising the light
  workload on 32 bed hosts (all READY), found through its runtime directory as an operator's
  would be. Target ≤ 0.4 s wall.
* ``validate`` and ``plan`` (text) of :func:`big_inventory` (256 hosts × 8 GPUs): the frontend,
  NATS and etcd planned on the head, six ``[[workers]]`` groups covering every recipe —
  disaggregated vLLM decode (TP 8 × PP 2, two-node replicas, mp executor, ``--headless``) and
  prefill (TP 8), vLLM TP 16 with the Ray executor, vLLM DP 16 with expert parallelism, SGLang
  TP 16 and TRT-LLM TP 16 (two-node replicas), and two ``[[processes]]`` on every host (one
  HTTP-probed). 771 planned processes, 96 gangs. ``validate``/``plan`` contact no host.
  Target ≤ 0.5 s each.
* ``python_startup`` (``python -c pass``) and ``import`` (``python -c "import dynamo_launch.cli"``)
  are measured the same way as the floor the commands stand on; ``import_daemon`` and
  ``import_metrics`` (the daemon, then the daemon and ``dynamo_launch.metrics``) show what ``up``
  alone pays for prometheus-client.

:func:`measure_status` takes a running :class:`~benchmarks.common.BedDaemon`, so the footprint
scenario's daemon can be shared: :func:`run_with_footprint` runs scenario 5 and measures
``status`` on its probes-on daemon after the idle window.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import footprint
from benchmarks.common import PY, BedDaemon, Options, machine_facts, summary

__all__ = ["big_inventory", "main", "measure_commands", "measure_status", "run", "run_with_footprint", "timed"]

TARGET_STATUS = 0.4
TARGET_PLAN = 0.5
BIG_HOSTS = 256
_CLI = str(Path(PY).parent / "dynamo-launch")


def timed(argv: list[str], env: dict | None = None, timeout: float = 60.0) -> tuple[float, float, str]:
    """``(wall, cpu, stdout)`` of one run of ``argv``; raises when it fails or runs over ``timeout``."""
    with tempfile.TemporaryFile(prefix="dl-cli-") as out_file:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out_file, stderr=subprocess.PIPE)
        deadline = t0 + timeout
        while True:  # wait4 for the child's rusage; bounded by the timeout
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                p.wait()
                raise RuntimeError(f"{argv}: no exit within {timeout} s")
            time.sleep(0.002)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        p.stderr.close()
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {err[-500:]}")
        out_file.seek(0)
        return wall, usage.ru_utime + usage.ru_stime, out_file.read().decode(errors="replace")


def _series(argv: list[str], repeats: int, env: dict | None = None) -> dict:
    walls, cpus, out = [], [], ""
    for _ in range(repeats):
        wall, cpu, out = timed(argv, env)
        walls.append(wall)
        cpus.append(cpu)
    return {"wall": summary(walls), "cpu": summary(cpus), "output_bytes": len(out.encode())}


def measure_status(d: BedDaemon, repeats: int, log: Callable[[str], None] = print) -> dict:
    """``status`` and ``status --json`` against the running daemon ``d``, ``repeats`` times each."""
    out = {}
    for label, extra in (("status", []), ("status_json", ["--json"])):
        out[label] = _series([_CLI, "status", *extra], repeats, d.env)
        out[label]["target"] = TARGET_STATUS
        out[label]["met"] = out[label]["wall"]["median"] <= TARGET_STATUS
        log(f"  {label}: wall median {out[label]['wall']['median']:.3f} s (max {out[label]['wall']['max']:.3f}), "
            f"cpu median {out[label]['cpu']['median']:.3f} s")
    return out


def big_inventory(n: int = BIG_HOSTS) -> str:
    """A realistic inventory of ``n`` hosts (a multiple of 16) with 8 GPUs each; see module doc."""
    if n % 16:
        raise ValueError("n must be a multiple of 16")
    eighth = n // 8
    parts = [('[cluster]\nname = "bench-big"\nhead = "node1"\nstate_dir = "/var/lib/dynamo-launch/bench-big"\n'
             'python = "/opt/dynamo/venv/bin/python"\n'),
             '[ssh]\nuser = "dynamo"\nkey_file = "~/.ssh/id_ed25519"\nknown_hosts = "~/.ssh/known_hosts"\n',
             '[env]\nHF_HOME = "/models/hf"\nHF_TOKEN = "${HF_TOKEN}"\n']
    parts += [f'[[hosts]]\nname = "node{i}"\naddress = "10.1.{i // 250}.{i % 250 + 1}"\ngpus = 8\n'
              for i in range(1, n + 1)]
    parts.append('[frontend]\nrouter_mode = "kv"\n')

    def hosts(first: int, count: int) -> str:
        return json.dumps([f"node{i}" for i in range(first, first + count)])

    groups = [  # (name, keys, share of the hosts in eighths)
        ("decode", ('backend = "vllm"\nrole = "decode"\nmodel = "nvidia/Llama-3.1-405B-Instruct-FP8"\n'
                   'tensor_parallel_size = 8\npipeline_parallel_size = 2\n'), 2),
        ("prefill", ('backend = "vllm"\nrole = "prefill"\nmodel = "nvidia/Llama-3.1-405B-Instruct-FP8"\n'
                    'tensor_parallel_size = 8\n'), 2),
        ("r1-ray", 'backend = "vllm"\nmodel = "deepseek-ai/DeepSeek-R1"\ntensor_parallel_size = 16\nexecutor = "ray"\n', 1),
        ("r1-dp", ('backend = "vllm"\nmodel = "deepseek-ai/DeepSeek-R1"\ndata_parallel_size = 16\n'
                  'extra_args = ["--enable-expert-parallel"]\n'), 1),
        ("r1-sglang", ('backend = "sglang"\nmodel = "deepseek-ai/DeepSeek-R1"\ntensor_parallel_size = 16\n'
                      'extra_args = ["--trust-remote-code"]\n'), 1),
        ("r1-trt", 'backend = "trtllm"\nmodel = "deepseek-ai/DeepSeek-R1"\ntensor_parallel_size = 16\n', 1),
    ]
    first = 1
    for name, keys, share in groups:
        parts.append(f'[[workers]]\nname = "{name}"\n{keys}hosts = {hosts(first, share * eighth)}\n')
        first += share * eighth
    everywhere = hosts(1, n)
    parts.append(f'[[processes]]\nname = "exporter"\nhosts = {everywhere}\n'
                 'command = ["/opt/bin/node-exporter", "--web.listen-address=:9100"]\n'
                 'health = { check = "http", port = 9100, path = "/metrics" }\n')
    parts.append(f'[[processes]]\nname = "gpu-mon"\nhosts = {everywhere}\ncommand = ["/opt/bin/gpu-monitor", "--interval", "10"]\n')
    return "\n".join(parts)


def measure_commands(tmp: Path, repeats: int, log: Callable[[str], None] = print, n: int = BIG_HOSTS) -> dict:
    """``validate`` and ``plan`` of :func:`big_inventory` (``n`` hosts), plus the startup floor."""
    path = tmp / f"big-{n}.toml"
    path.write_text(big_inventory(n))
    env = {**os.environ, "HF_TOKEN": "hf_bench_placeholder"}
    out: dict = {"inventory_hosts": n}
    cases = {
        "python_startup": [PY, "-c", "pass"],
        "import": [PY, "-c", "import dynamo_launch.cli"],
        # what `up` loads to supervise, then to serve metrics: the difference is prometheus-client's
        # cost, paid by the daemon only (tests/unit/test_metrics.py: no other command imports it)
        "import_daemon": [PY, "-c", "import dynamo_launch.daemon"],
        "import_metrics": [PY, "-c", "import dynamo_launch.daemon, dynamo_launch.metrics"],
        "validate": [_CLI, "validate", str(path)],
        "plan": [_CLI, "plan", str(path)],
    }
    for label, argv in cases.items():
        out[label] = _series(argv, repeats, env)
        if label in ("validate", "plan"):
            out[label]["target"] = TARGET_PLAN
            out[label]["met"] = out[label]["wall"]["median"] <= TARGET_PLAN
        log(f"  {label}: wall median {out[label]['wall']['median']:.3f} s (max {out[label]['wall']['max']:.3f}), "
            f"cpu median {out[label]['cpu']['median']:.3f} s")
    out["validate_says"] = timed([_CLI, "validate", str(path)], env)[2].strip()
    return out


def _repeats(opts: Options) -> int:
    return 3 if opts.quick else max(10, opts.repeats)


def run(bed, opts: Options, log: Callable[[str], None] = print) -> dict:
    """Scenario 6 on ``bed``: its own daemon on up to 32 hosts for ``status``; plan/validate."""
    tmp = Path(tempfile.mkdtemp(prefix="dl-cli-", dir=opts.tmp))
    hosts = [h.name for h in bed.hosts][:footprint.MAX_HOSTS]
    log(f"cli latency: status against {len(hosts)} hosts × 3 processes")
    try:
        with footprint.supervising(bed, tmp, hosts, log=log) as d:
            status = measure_status(d, _repeats(opts), log)
        log(f"cli latency: validate/plan of a {BIG_HOSTS}-host inventory")
        return {"hosts": len(hosts), "repeats": _repeats(opts), **status, **measure_commands(tmp, _repeats(opts), log)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_with_footprint(bed, opts: Options, log: Callable[[str], None] = print) -> dict:
    """Scenarios 5 and 6 sharing the footprint's probes-on daemon (``status`` after its idle window)."""
    found: dict = {}

    def status_after(d: BedDaemon) -> None:
        found.update(measure_status(d, _repeats(opts), log))

    fp = footprint.run(bed, opts, log, after_window=status_after)
    tmp = Path(tempfile.mkdtemp(prefix="dl-cli-", dir=opts.tmp))
    try:
        cli = {"hosts": fp["hosts"], "repeats": _repeats(opts), **found, **measure_commands(tmp, _repeats(opts), log)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"footprint": fp, "cli_latency": cli}


def main() -> None:
    """Standalone: a bed, scenario 6 (``--with-footprint``: 5 and 6 on one daemon), JSON on stdout."""
    from tests.testbed_fixture import new_testbed

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=footprint.MAX_HOSTS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--no-daemon", action="store_true", help="only validate/plan: no bed, no daemon")
    ap.add_argument("--with-footprint", action="store_true", help="also scenario 5, sharing its daemon")
    args = ap.parse_args()
    opts = Options(quick=args.quick, repeats=args.repeats, idle_seconds=args.idle)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.no_daemon:
        with tempfile.TemporaryDirectory(prefix="dl-cli-") as tmp:
            result: dict = {"cli_latency": measure_commands(Path(tmp), _repeats(opts), log)}
    else:
        bed = new_testbed(args.hosts)
        try:
            result = run_with_footprint(bed, opts, log) if args.with_footprint else {"cli_latency": run(bed, opts, log)}
        finally:
            bed.teardown()
    print(json.dumps({"machine": machine_facts(), **result}, indent=1))


if __name__ == "__main__":
    main()
