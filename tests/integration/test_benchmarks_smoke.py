"""The benchmark harness runs end to end with tiny N (the numbers themselves are not judged).

`python -m benchmarks.run --quick` builds its own test bed, runs every scenario but `ray up`
(which needs rsync and a minute per run) with N = 1, 2 and one repeat, and writes its JSON; the
report then renders from that JSON, plot included; a second run of one scenario with `--update`
keeps the others, and the page then says which run each comes from. Catches a harness that rots between full
runs. Needs root (the test bed): skipped with the reason otherwise, failed under CI=true.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks.report import render, targets, write_docs
from tests.daemon_harness import PY, ROOT
from tests.testbed_fixture import require_testbed

pytestmark = pytest.mark.testbed

SCENARIOS = ["cli_latency", "footprint", "overhead", "bringup", "failure"]


def test_quick_run_writes_results_and_the_report_renders(tmp_path):
    require_testbed()
    out = tmp_path / "results"
    r = subprocess.run([PY, "-m", "benchmarks.run", "--quick", "--out", str(out), "--only", ",".join(SCENARIOS)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-6000:]
    res = json.loads((out / "latest.json").read_text())
    assert res["machine"]["cores"] and res["machine"]["versions"]["asyncssh"]
    assert sorted(res["scenarios"]) == sorted(SCENARIOS)
    for name, sc in res["scenarios"].items():
        assert "error" not in sc, (name, sc.get("traceback"))
    sizes = res["scenarios"]["bringup"]["sizes"]
    assert [s["n"] for s in sizes] == [1, 2]
    assert all(s["dynamo_launch"]["n"] == 1 and s["dynamo_launch"]["median"] > 0 for s in sizes)
    overhead = res["scenarios"]["overhead"]
    assert overhead["n"] == 1 and overhead["dynamo_launch"]["median"] > 0 and overhead["phases"]["all_ready"]["n"] == 1
    assert overhead["imports"]["up_imports"]["median"] > overhead["imports"]["python_startup"]["median"]
    assert all(sc["run"]["git"] for sc in res["scenarios"].values())
    single = res["scenarios"]["failure"]["single"]
    assert single["detect"]["n"] == 3 and 0 < single["detect"]["median"] < single["running"]["median"]
    # every target the results cover is in the report's table, with a verdict
    covered = {what for what, *_ in targets(res["scenarios"])}
    assert len(covered) >= 6, covered
    docs = tmp_path / "docs"
    written = write_docs(res, docs)
    page = (docs / "benchmarks.md").read_text()
    assert page == render(res) and "## Targets" in page and "Failed in this run" not in page
    png = docs / "img" / "benchmarks-bringup.png"
    assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # rerun one scenario into the same results: the others are kept, each says when it was measured
    r = subprocess.run([PY, "-m", "benchmarks.run", "--quick", "--out", str(out), "--only", "overhead", "--update"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-6000:]
    merged = json.loads((out / "latest.json").read_text())
    assert sorted(merged["scenarios"]) == sorted(SCENARIOS)
    assert merged["scenarios"]["failure"] == res["scenarios"]["failure"]
    assert merged["scenarios"]["overhead"]["run"]["date"] != merged["scenarios"]["failure"]["run"]["date"]
    page = render(merged)
    assert "| runs merged here |" in page and page.count("_Measured ") == len(SCENARIOS)
