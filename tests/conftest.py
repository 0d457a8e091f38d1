"""Shared pytest options and fixtures."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.testbed_fixture", "tests.infra", "tests.agent_harness"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="Rewrite tests/golden/*/plan.{txt,json} from the current planner instead of comparing.",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    """True when the run was asked to regenerate golden files."""
    return bool(request.config.getoption("--update-goldens"))
