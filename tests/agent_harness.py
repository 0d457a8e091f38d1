"""Running the node agent locally in tests: one agent per test with its own launch id, and the
/proc helpers that count what it started. ``launch_id`` is a fixture (tests/conftest.py loads
this module as a plugin)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from dynamo_launch.transport import AgentClient, LocalTransport
from tests.transport_cases import arun, local_host

PY = sys.executable

# -----------------------------------------------------------------------------------
def _launch_pids(launch_id: str) -> list[int]:
    needle = f"DYNAMO_LAUNCH_ID={launch_id}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    pids.append(int(entry))
    return pids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _alive(pid)


def _wait_file(path: Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            text = path.read_text()
            if text.endswith("\n"):
                return text
        time.sleep(0.01)
    raise AssertionError(f"{path} not written within {timeout}s")


@pytest.fixture
def launch_id():
    """A launch id of the test's own; everything carrying it is SIGKILLed afterwards."""
    lid = "test-" + uuid.uuid4().hex[:12]
    yield lid
    deadline = time.monotonic() + 5
    while (pids := _launch_pids(lid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


class Node:
    """One running agent with its event stream and spawn defaults."""

    def __init__(self, agent: AgentClient, state: Path, launch_id: str):
        self.agent, self.state, self.launch_id = agent, state, launch_id
        self.events = agent.events()

    async def call(self, op: str, **kw):
        return await self.agent.call(op, **kw)

    async def spawn(self, name: str, argv: list[str], **kw):
        args = dict(name=name, argv=argv, env={}, cwd=str(self.state), log_file=str(self.state / "logs" / f"{name}.log"),
                    launch_id=self.launch_id, generation=1, log_max_bytes=1 << 20, log_backups=2)
        args.update(kw)
        return await self.agent.call("spawn", **args)

    async def exit_of(self, name: str, timeout: float = 10.0) -> dict:
        """The next exit event of ``name`` (other events are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            ev = await asyncio.wait_for(self.events.__anext__(), max(0.01, deadline - time.monotonic()))
            if ev.get("event") == "exit" and ev.get("name") == name:
                return ev

    def record(self, name: str) -> dict:
        return json.loads((self.state / "run" / f"{name}.json").read_text())

    def log(self, name: str, *, separators: bool = False) -> str:
        """The log of ``name``; without the line each start begins with, unless ``separators``."""
        text = (self.state / "logs" / f"{name}.log").read_text()
        if separators:
            return text
        return "".join(x for x in text.splitlines(True) if not x.startswith("----- dynamo-launch: "))


@contextlib.asynccontextmanager
async def node(state: Path, launch_id: str, python: str = PY):
    agent = AgentClient(LocalTransport(local_host()), str(state), python)
    await agent.start()
    try:
        yield Node(agent, state, launch_id)
    finally:
        await agent.close()


def run(coro, timeout: float = 30):
    return arun(coro, timeout)
