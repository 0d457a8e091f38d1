"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest

from tests.bed_daemon import Cluster


@pytest.fixture(scope="module")
def bed(testbed):
    """A test bed of three hosts, shared by the tests of one module."""
    return testbed(3)


@pytest.fixture
def cluster(bed, tmp_path):
    """``make(processes, **kw) -> Cluster``: `dynamo-launch up` daemons on the bed, each stopped
    and its processes killed on the hosts afterwards."""
    made: list[Cluster] = []

    def make(processes: str, **kw) -> Cluster:
        c = Cluster(bed, tmp_path, processes, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.cleanup()
