"""Conformance: every rendered engine argv through the real parsers of the pinned engines.

All cases go to ``engine_check.py`` in ONE subprocess of ``.venv-engines/bin/python`` (built by
``scripts/engines-env``): importing vLLM and SGLang is most of the cost, so per-case processes
would make this suite minutes long. Each case is then its own test, comparing what the engine's
config says with what the inventory asked for (``cases.expectations``).

Without the engines environment the suite is skipped with the reason, except in CI
(``CI=true``), where a missing environment is a failure: CI builds it (``.ci/run`` →
``scripts/test`` → ``scripts/engines-env``), so its absence means the build broke.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .cases import ROOT, Case, cases_for, example_inventories, finding_cases, matrix_inventories

CHECKER = Path(__file__).with_name("engine_check.py")
ENGINES_PYTHON = Path(os.environ.get("DYNAMO_LAUNCH_ENGINES_PYTHON", ROOT / ".venv-engines" / "bin" / "python"))
TINY_MODEL = "/tmp/dynamo-launch-conformance/model"  # a stable path: it appears in case ids' argv only


def _all_cases() -> list[Case]:
    out: list[Case] = []
    for label, inv in [*example_inventories(), *matrix_inventories()]:
        out.extend(cases_for(inv, label, TINY_MODEL))
    return out


CASES = _all_cases()
FINDINGS = finding_cases(TINY_MODEL)


def _missing_engines(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI builds it with scripts/engines-env; a missing one is a broken build)")
    pytest.skip(f"{reason}: run scripts/engines-env to build it")


def _tiny_model() -> str:
    """A config + tokenizer directory, no weights, sized so TP up to 16 divides its heads."""
    out = Path(TINY_MODEL)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make-tiny-model"), str(out)], check=True,
                   capture_output=True, text=True)  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    # 64 query heads / 16 KV heads: divisible by every TP size the matrix uses (up to 16).
    config.update(num_attention_heads=64, num_key_value_heads=16, head_dim=16, hidden_size=1024,
                  intermediate_size=256, num_hidden_layers=4)  # fmt: skip
    (out / "config.json").write_text(json.dumps(config, indent=1))
    # The same as a Mixtral-style MoE, for layouts with --enable-expert-parallel.
    moe = Path(TINY_MODEL + "-moe")
    moe.mkdir(exist_ok=True)
    for f in out.iterdir():
        if f.name != "config.json":
            (moe / f.name).write_bytes(f.read_bytes())
    config.update(architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=16,
                  num_experts_per_tok=2)  # fmt: skip
    (moe / "config.json").write_text(json.dumps(config, indent=1))
    return str(out)


@pytest.fixture(scope="session")
def engine_results() -> dict:
    """Every case through the real parsers, in one batch: ``{"versions", "results": {id: result}}``."""
    if not ENGINES_PYTHON.exists():
        _missing_engines(f"engines environment not found ({ENGINES_PYTHON})")
    try:
        import tokenizers  # noqa: F401  (scripts/make-tiny-model needs it: the test extras)
    except ImportError:
        _missing_engines("tokenizers is not installed (the test extras: scripts/bootstrap test)")
    _tiny_model()
    by_version: dict[str, list[Case]] = {}
    for c in [*CASES, *FINDINGS]:
        by_version.setdefault(c.dynamo_version, []).append(c)
    versions, results = {}, {}
    for version, cases in by_version.items():  # one subprocess per Dynamo release
        folder = ENGINES_PYTHON.parent.parent / f"dynamo-{version}"
        dynamo_path = str(folder) if folder.is_dir() else ""  # absent: the venv's own ai-dynamo
        request = json.dumps({"dynamo_path": dynamo_path, "cases": [c.request() for c in cases]})
        proc = subprocess.run([str(ENGINES_PYTHON), str(CHECKER)], input=request, capture_output=True, text=True,
                              timeout=1200, cwd="/tmp")  # fmt: skip
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-15:]
            if "ModuleNotFoundError" in proc.stderr or "ImportError" in proc.stderr:
                _missing_engines("engines environment incomplete:\n" + "\n".join(tail))
            pytest.fail("engine_check.py failed:\n" + "\n".join(tail))
        answer = json.loads(proc.stdout)
        versions[version] = answer["versions"]
        results.update({r["id"]: r for r in answer["results"]})
    return {"versions": versions, "results": results}


def test_every_accepted_dynamo_version_ran_with_the_engines_it_pins(engine_results: dict) -> None:
    """Each accepted release's cases ran under that very ai-dynamo, with the vLLM/SGLang it pins."""
    from dynamo_launch.versions import ENGINE_PINS, SUPPORTED_DYNAMO_VERSIONS

    assert set(engine_results["versions"]) == set(SUPPORTED_DYNAMO_VERSIONS)
    for version, got in engine_results["versions"].items():
        pins = ENGINE_PINS[version]
        assert got["ai-dynamo"] == version and got["ai-dynamo-runtime"] == version, got
        assert got["vllm"] == pins["vllm"] and got["sglang"] == pins["sglang"], got
        folder = ENGINES_PYTHON.parent.parent / f"dynamo-{version}"
        if folder.is_dir():  # that release's own code parsed, not the venv's newer one
            assert str(got["dynamo.vllm"]).startswith(str(folder)), got


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rendered_argv_means_what_the_inventory_says(case: Case, engine_results: dict) -> None:
    """The real parser accepts the argv, and its config shows the inventory's topology."""
    result = engine_results["results"][case.id]
    assert result["ok"], f"{case.kind} parser rejected {case.source}: {result['error']}\nargv: {case.argv}"
    facts = result["facts"]
    wrong = {k: (v, facts.get(k)) for k, v in case.expect.items() if facts.get(k) != v}
    assert not wrong, f"expected vs engine config: {wrong}\nargv: {case.argv}"


@pytest.mark.parametrize("case", FINDINGS, ids=[c.id for c in FINDINGS])
def test_issue_findings_reproduce_on_the_real_engines(case: Case, engine_results: dict) -> None:
    """What the old plans rendered really is wrong with the pinned engines (why the renderer changed)."""
    result = engine_results["results"][case.id]
    if "rejected" in case.expect:
        assert not result["ok"] and str(case.expect["rejected"]) in result["error"], result
        return
    assert result["ok"], result["error"]
    wrong = {k: (v, result["facts"].get(k)) for k, v in case.expect.items() if result["facts"].get(k) != v}
    assert not wrong, wrong


def test_matrix_covers_every_backend_and_layout() -> None:
    """The generated matrix reaches every parser kind (a refactor must not silently drop one)."""
    assert {c.kind for c in CASES} == {"vllm", "sglang", "trtllm", "mocker", "frontend", "ray", "vllm-serve"}
    assert any(c.expect.get("distributed_executor_backend") == "ray" for c in CASES)
    assert any(c.expect.get("data_parallel_hybrid_lb") is True for c in CASES)
    assert any(c.expect.get("headless") is True and "data_parallel_rank" in c.expect for c in CASES)


def test_a_missing_engines_env_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI builds the env, so there its absence is a broken build, never a silent skip."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="broken build"):
        _missing_engines("engines environment not found (/nowhere)")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="scripts/engines-env"):
        _missing_engines("engines environment not found (/nowhere)")
