"""Preflight judgement from host facts (the fact-gathering itself runs in the integration tests)."""

from __future__ import annotations

import textwrap

from dynamo_launch.inventory import parse
from dynamo_launch.plan import build
from dynamo_launch.preflight import judge

INV = parse(
    textwrap.dedent(
        """
        [cluster]
        name = "t"
        head = "a"
        state_dir = "/srv/dl"

        [[hosts]]
        name = "a"
        address = "10.0.0.1"
        gpus = 8

        [[hosts]]
        name = "b"
        address = "10.0.0.2"
        gpus = 0

        [frontend]
        """
    ),
    "t.toml",
)
PLAN = build(INV)


def _fact(**kw: object) -> dict:
    base = {"python": "3.11.7", "packages": {"ai-dynamo": "1.6.1"}, "gpus": None, "listening": [], "hostname": "x"}
    base.update(kw)
    return base


def _by(checks: list) -> dict:
    return {(c.host, c.name): c for c in checks}


def test_all_good() -> None:
    checks = _by(judge(INV, PLAN, {"a": _fact(gpus=8), "b": _fact()}))
    assert checks[("a", "reach")].status == "ok"
    assert checks[("a", "ports")].detail == "5 free"
    assert checks[("a", "gpus")].status == "ok"
    assert checks[("b", "gpus")].status == "ok"  # gpus = 0 and no nvidia-smi: nothing to check


def test_unreachable_busy_port_and_gpu_mismatch_fail() -> None:
    checks = _by(judge(INV, PLAN, {"a": _fact(gpus=4, listening=[22, 8000]), "b": "b (10.0.0.2:22): connection refused"}))
    assert checks[("b", "reach")].status == "fail" and "refused" in checks[("b", "reach")].detail
    assert checks[("a", "ports")].status == "fail" and "8000 (frontend)" in checks[("a", "ports")].detail
    assert checks[("a", "gpus")].status == "fail" and "nvidia-smi sees 4" in checks[("a", "gpus")].detail


def test_no_nvidia_smi_on_a_gpu_host_warns_and_adopted_ports_are_not_busy() -> None:
    checks = _by(judge(INV, PLAN, {"a": _fact(listening=[8000]), "b": _fact()}, adopting=["frontend"]))
    assert checks[("a", "gpus")].status == "warn"
    assert checks[("a", "ports")].status == "ok"


def test_version_skew_warns() -> None:
    checks = _by(judge(INV, PLAN, {"a": _fact(gpus=8), "b": _fact(packages={"ai-dynamo": "1.5.0"})}))
    skew = checks[("*", "version ai-dynamo")]
    assert skew.status == "warn" and "1.5.0 on b" in skew.detail and "1.6.1 on a" in skew.detail
