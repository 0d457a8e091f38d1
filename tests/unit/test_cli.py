"""The command line: exit codes, one-line errors, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from dynamo_launch import __version__
from dynamo_launch.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "inventory.example.toml")


def test_version_and_help() -> None:
    runner = CliRunner()
    assert __version__ in runner.invoke(main, ["--version"]).output
    for args in ([], ["validate"], ["plan"]):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


def test_validate_ok_exits_zero() -> None:
    result = CliRunner().invoke(main, ["validate", EXAMPLE])
    assert result.exit_code == 0
    assert "ok — cluster 'demo', 1 host, 5 processes, 0 gangs" in result.output


def test_plan_text_and_json() -> None:
    runner = CliRunner()
    text = runner.invoke(main, ["plan", EXAMPLE])
    assert text.exit_code == 0 and "python3 -m dynamo.frontend" in text.output
    js = runner.invoke(main, ["plan", "--json", EXAMPLE])
    assert js.exit_code == 0 and json.loads(js.output)["cluster"] == "demo"


def test_bad_inventory_gets_one_located_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "inv.toml"
    bad.write_text('[cluster]\nname = "x"\nhead = "nope"\nnmae = 1\n\n[[hosts]]\nname = "a"\naddress = "10.0.0.1"\n')
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [
        f"{bad}:3: cluster.head: unknown host 'nope'; hosts are a",
        f"{bad}:4: cluster.nmae: unknown key (did you mean 'name'?)",
        f"{bad}: 2 problems",
    ]


def test_missing_file_and_syntax_error_are_one_line_not_a_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[cluster]\nname = "x\n')
    for path in (str(tmp_path / "absent.toml"), str(broken)):
        proc = subprocess.run([sys.executable, "-m", "dynamo_launch.cli", "plan", path], capture_output=True, text=True)
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        assert proc.stderr.splitlines()[0].startswith(path + ":")
    proc = subprocess.run([sys.executable, "-m", "dynamo_launch.cli", "validate", str(broken)], capture_output=True, text=True)
    assert proc.stderr.splitlines()[0].startswith(f"{broken}:2: TOML syntax")
