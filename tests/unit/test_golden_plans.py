"""Golden plans: every example inventory renders exactly as reviewed.

One folder per case under tests/golden/<example>/ holds ``plan.txt`` (what
``dynamo-launch plan`` prints) and ``plan.json`` (``--json``). After an
intended change, regenerate with ``pytest tests/unit/test_golden_plans.py
--update-goldens`` and review the diff by eye against the reference guides.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamo_launch.load import load_plan
from dynamo_launch.plan.render import to_json, to_text

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
CASES = sorted(ROOT.glob("examples/*.toml")) + [ROOT / "inventory.example.toml"]


def _case_name(path: Path) -> str:
    return "embedded-default" if path.name == "inventory.example.toml" else path.stem


@pytest.mark.parametrize("inventory", CASES, ids=_case_name)
def test_plan_matches_golden(inventory: Path, update_goldens: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # sources are named relative to the repository, as an operator types them
    plan = load_plan(str(inventory.relative_to(ROOT)))[1]
    rendered = {"plan.txt": to_text(plan), "plan.json": to_json(plan)}
    folder = GOLDEN / _case_name(inventory)
    if update_goldens:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (folder / name).write_text(text)
        pytest.skip("golden files rewritten")
    for name, text in rendered.items():
        expected = (folder / name).read_text()
        assert text == expected, f"{folder / name} differs; if intended, rerun with --update-goldens and review"


def test_every_golden_has_an_example() -> None:
    names = {_case_name(p) for p in CASES}
    stale = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir() and p.name not in names)
    assert not stale, f"golden folders without an example: {stale}"
