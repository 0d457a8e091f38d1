"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bed(testbed):
    """A test bed of three hosts, shared by the tests of one module."""
    return testbed(3)
