"""The serving-continuity benchmark runs end to end in its quickest form (the numbers are not judged).

`python -m benchmarks.serving --quick --cases single/kill-worker --baseline none` builds its own
test bed, brings up the single-host mocker deployment with the real `dynamo-launch up`, kills a
worker replica under the closed-loop load and writes its JSON; the report then renders the
section from it. Catches a harness that rots between full runs (Dynamo's answers, the frontend's
`/health`, the worker's `/metrics`, the daemon's events). Needs root (the test bed), Dynamo in this
venv, nats-server and etcd: skipped with the reason otherwise, failed under CI=true.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks.report import render, section_serving, serving_targets
from tests.daemon_harness import PY, ROOT
from tests.infra import missing_launcher_servers
from tests.testbed_fixture import in_ci, require_testbed

pytestmark = pytest.mark.testbed


def test_the_quickest_serving_run_measures_a_kill_and_the_report_renders(tmp_path):
    require_testbed()
    missing = missing_launcher_servers()
    probe = subprocess.run([PY, "-c", "import dynamo.frontend, dynamo.mocker, tokenizers"], capture_output=True,
                           text=True, timeout=120, check=False)
    if probe.returncode != 0:
        missing.append("Dynamo is not installed in this venv (scripts/bootstrap installs it)")
    if missing:
        (pytest.fail if in_ci() else pytest.skip)("; ".join(missing))
    out = tmp_path / "results"
    r = subprocess.run([PY, "-m", "benchmarks.serving", "--quick", "--cases", "single/kill-worker", "--baseline",
                        "none", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-6000:]
    res = json.loads((out / "latest.json").read_text())
    sc = res["scenarios"]["serving"]
    assert "error" not in sc, sc.get("traceback")
    assert list(sc["sides"]) == ["after"] and sc["quick"]
    (case,) = sc["cases"]
    assert case["name"] == "single/kill-worker" and list(case["runs"]) == ["after"]
    (run,) = case["runs"]["after"]
    assert "error" not in run, run
    assert run["agent_verified"] and run["requests"] > 50 and run["rate_before"] > 0
    assert run["failed_before_fault"] == 0, run["failures"]
    assert list(run["victims"]) == ["agg-0"] and int(run["victims"]["agg-0"]) > 0
    assert any(" exited agg-0 exited (signal 9)" in e for e in run["events"]), run["events"]
    assert any(" started agg-0 started" in e for e in run["events"]), run["events"]
    assert run["final"]["agg-0"]["restarts"] == 1 and run["final"]["agg-0"]["state"] == "READY"
    page = render(res)
    assert "## 7. Serving continuity" in page and section_serving(sc) in page
    assert "kill -9 of a worker replica" in section_serving(sc)
    assert [what for what, *_ in serving_targets(sc)] == [
        "serving: failed requests, every fault but the frontend's death", "serving: a killed worker out of routing"]
