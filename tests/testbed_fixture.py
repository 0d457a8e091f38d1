"""pytest fixtures for the test bed (scripts/dltestbed.py, docs/testbed.md).

Use from a conftest (registers the ``testbed`` marker as well)::

    pytest_plugins = ["tests.testbed_fixture"]

or import the fixtures into a test module::

    from tests.testbed_fixture import testbed  # noqa: F401

then::

    @pytest.mark.testbed
    def test_something(testbed):
        bed = testbed(3)            # 3 hosts; a fresh bed per call, torn down with the module
        bed.ssh("h1", ["hostname", "-I"], capture_output=True)

``testbed`` is module-scoped, ``testbed_session`` session-scoped; both are factories
``make(n, **TestBed.create kwargs) -> TestBed``.  Each bed gets its own prefix (``dltb`` + 4
random characters) and a free 10.77.X.0/24, so beds of several pytest processes coexist.

Missing prerequisites (not root; no ``ip``, ``unshare``, ``nsenter``, ``sshd``, ``ssh``; no
namespaces) skip the test with the reason, except with ``CI=true``: then they FAIL, so CI never
passes vacuously.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import sys
import threading
from typing import Callable, Iterator

import pytest

import dltestbed
from dltestbed import TestBed, TestBedError

__all__ = [
    "TestBed",
    "TestBedError",
    "in_ci",
    "live_prefixes",
    "new_testbed",
    "require_testbed",
    "teardown_live_beds",
    "testbed",
    "testbed_session",
]

MARKER_LINE = "testbed: needs root; creates namespace 'hosts' with sshd on a private bridge (scripts/testbed)"

_live: dict[int, TestBed] = {}
_owner = os.getpid()
_lock = threading.Lock()
_sigterm_installed = False
_prereq_cache: list[str] | None = None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_testbed() -> None:
    """Skip the calling test when a bed cannot be made here; under CI=true, fail instead."""
    global _prereq_cache
    if _prereq_cache is None:
        _prereq_cache = dltestbed.missing_prerequisites()
    if _prereq_cache:
        reason = "test bed unavailable: " + "; ".join(_prereq_cache)
        if in_ci():
            pytest.fail(reason + " (CI=true: missing prerequisites fail instead of skipping)", pytrace=False)
        pytest.skip(reason)


def teardown_live_beds() -> None:
    """Tear down every bed this process made and has not torn down yet."""
    if os.getpid() != _owner:  # a forked child inherits atexit handlers: not its beds
        return
    with _lock:
        beds = list(_live.values())
        _live.clear()
    for bed in beds:
        try:
            bed.teardown()
        except Exception as e:  # keep going: the other beds still need it
            print(f"testbed: teardown of {bed.prefix} failed: {e}", file=sys.stderr)


def live_prefixes() -> set[str]:
    """Prefixes of the beds this process made and has not torn down yet."""
    with _lock:
        return {bed.prefix for bed in _live.values()}


def _on_sigterm(signum, frame) -> None:
    teardown_live_beds()
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


_previous_sigterm = None


def _install_cleanup() -> None:
    global _sigterm_installed, _previous_sigterm
    if _sigterm_installed:
        return
    _sigterm_installed = True
    atexit.register(teardown_live_beds)
    if threading.current_thread() is threading.main_thread():
        _previous_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)


def _unique_prefix() -> str:
    existing = set(dltestbed.find_beds())
    while True:
        prefix = "dltb" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(4))
        if prefix not in existing:
            return prefix


def new_testbed(n: int, **kwargs) -> TestBed:
    """Create a bed with a unique prefix and subnet, registered for cleanup at exit/SIGTERM.

    The caller tears it down (``bed.teardown()``); the fixtures below do that for you.
    """
    require_testbed()
    _install_cleanup()
    kwargs.setdefault("prefix", _unique_prefix())
    kwargs.setdefault("subnet", "auto")
    bed = TestBed.create(n, **kwargs)
    with _lock:
        _live[id(bed)] = bed
    return bed


def _factory(request) -> Iterator[Callable[..., TestBed]]:
    made: list[TestBed] = []

    def make(n: int = 3, **kwargs) -> TestBed:
        bed = new_testbed(n, **kwargs)
        made.append(bed)
        return bed

    require_testbed()
    try:
        yield make
    finally:
        errors = []
        for bed in made:
            try:
                bed.teardown()
            except Exception as e:
                errors.append(f"{bed.prefix}: {e}")
            finally:
                with _lock:
                    _live.pop(id(bed), None)
        if errors:
            pytest.fail("test bed teardown failed: " + "; ".join(errors), pytrace=False)


@pytest.fixture(scope="module")
def testbed(request) -> Iterator[Callable[..., TestBed]]:
    """Factory ``make(n=3, **kwargs) -> TestBed``; every bed made is torn down after the module."""
    yield from _factory(request)


@pytest.fixture(scope="session")
def testbed_session(request) -> Iterator[Callable[..., TestBed]]:
    """Like ``testbed`` but the beds live until the end of the session."""
    yield from _factory(request)


def pytest_configure(config) -> None:  # used when loaded via pytest_plugins
    config.addinivalue_line("markers", MARKER_LINE)
