"""TRT-LLM's rendered ``mpirun`` wrapper, parsed and run by a real Open MPI.

TensorRT-LLM itself cannot be installed here (docs/conformance.md), but the ``mpirun`` line in
front of it can be checked with the real thing: Debian's Open MPI 4.1 (``openmpi-bin``, which
``scripts/bootstrap`` installs; the TRT-LLM containers ship HPC-X's Open MPI 4.1). Every
rendered ``mpirun`` argv runs with these substitutions, and no others:

* the ``-H`` hosts become ``127.0.0.1`` with the same slot count (no SSH to other hosts here);
* ``btl_tcp_if_include``/``oob_tcp_if_include`` name ``lo`` (the inventory's NIC is not here);
* the program (``trtllm-llmapi-launch python -m dynamo.trtllm …``) becomes ``/usr/bin/env``, so
  each rank prints the environment it received;
* ``--allow-run-as-root`` is added when the test runs as root and the plan (for another SSH
  user) has none.

Asserted: Open MPI accepts every option, starts ``-np`` ranks, and every ``-x`` variable that is
set in the process's planned environment reaches each rank with its value.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from dynamo_launch.plan import build
from dynamo_launch.plan.spec import ProcessSpec

from .cases import example_inventories, matrix_inventories


def _mpirun_specs() -> list[tuple[str, ProcessSpec]]:
    out = []
    for label, inv in [*example_inventories(), *matrix_inventories()]:
        out += [(f"{label}:{p.name}", p) for p in build(inv).processes if p.argv[0] == "mpirun"]
    return out


SPECS = _mpirun_specs()


def _local_argv(argv: tuple[str, ...]) -> tuple[list[str], int]:
    out: list[str] = []
    np = 0
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.endswith("trtllm-llmapi-launch"):
            out.append("/usr/bin/env")
            break
        if a == "-np":
            np = int(argv[i + 1])
        if a == "-H":
            slots = sum(int(h.rsplit(":", 1)[1]) for h in argv[i + 1].split(","))
            out += ["-H", f"127.0.0.1:{slots}"]
            i += 2
            continue
        if a == "--mca" and argv[i + 1] in ("btl_tcp_if_include", "oob_tcp_if_include"):
            out += ["--mca", argv[i + 1], "lo"]
            i += 3
            continue
        out.append(a)
        i += 1
    if os.geteuid() == 0 and "--allow-run-as-root" not in out:
        out.insert(1, "--allow-run-as-root")
    return out, np


def test_there_is_a_multi_node_trtllm_plan_to_check() -> None:
    assert SPECS, "no mpirun in any example or matrix layout"


@pytest.mark.parametrize(("label", "spec"), SPECS, ids=[label for label, _ in SPECS])
def test_rendered_mpirun_runs_under_open_mpi_and_exports_the_env(label: str, spec: ProcessSpec) -> None:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("mpirun not found: scripts/bootstrap installs openmpi-bin (as root)")
        pytest.skip("mpirun not found (apt-get install openmpi-bin, or run scripts/bootstrap as root)")
    argv, np = _local_argv(spec.argv)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    env.update({e.name: ("secret-stand-in" if e.secret else str(e.value)) for e in spec.env})
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd="/tmp")
    assert proc.returncode == 0, f"{' '.join(argv)}\n{proc.stderr[-2000:]}"
    exported = [spec.argv[i + 1] for i, a in enumerate(spec.argv) if a == "-x"]
    lines = proc.stdout.splitlines()
    for name in exported:
        if name in env and name != "PATH":
            got = sum(1 for line in lines if line == f"{name}={env[name]}")
            assert got == np, f"{name}: {got} of {np} ranks got it"
    assert sum(1 for line in lines if line.startswith("PATH=")) == np
