"""Cases both transports are tested with: the local transport's unit tests and the SSH
transport's tests against the test bed's sshd."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from dynamo_launch.model import SshSettings
from dynamo_launch.plan.spec import PlanHost

__all__ = ["ECHO_ARGV", "FAKE_AGENT", "HOSTILE", "arun", "hostile", "local_host"]

HOSTILE = ["a b", "; $(touch {pwned}) `touch {pwned}`", "'", '"', "\\", "$HOME", "*", "", "x\ny", "--", "-c", "é ☃"]

ECHO_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"


# A stand-in speaking the agent protocol (docs/internals.md), for what must hold with any agent.
FAKE_AGENT = r'''
import json, os, subprocess, sys, threading, time
write_lock = threading.Lock()
def send(msg):
    with write_lock:
        sys.stdout.write(json.dumps(msg) + "\n"); sys.stdout.flush()
def watch(name, proc):
    code = proc.wait()
    send({"event": "exit", "name": name, "pid": proc.pid, "code": code if code >= 0 else None,
          "signal": -code if code < 0 else None, "at": time.time()})
print("fake agent up", file=sys.stderr, flush=True)
for line in sys.stdin:
    req = json.loads(line)
    rid, op = req["id"], req["op"]
    if op == "hello":
        send({"id": rid, "ok": True, "result": {"pid": os.getpid(), "argv": sys.argv[1:], "version": "fake"}})
    elif op == "ping":
        send({"id": rid, "ok": True, "result": {"time": time.time()}})
    elif op == "echo":
        send({"id": rid, "ok": True, "result": {k: v for k, v in req.items() if k not in ("id", "op")}})
    elif op == "spawn":
        p = subprocess.Popen(req["argv"])
        threading.Thread(target=watch, args=(req["name"], p), daemon=True).start()
        send({"id": rid, "ok": True, "result": {"pid": p.pid}})
    elif op == "slow":
        continue  # never answers
    elif op == "die":
        print("dying on request", file=sys.stderr, flush=True)
        os._exit(3)
    else:
        send({"id": rid, "ok": False, "error": "unknown op " + op, "kind": "bad-request"})
'''


def arun(coro, timeout: float = 20):
    """Run ``coro`` to completion on a fresh loop (no pytest-asyncio here)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def hostile(tmp_path: Path) -> list[str]:
    """:data:`HOSTILE` with its marker file under ``tmp_path``."""
    return [s.format(pwned=tmp_path / "pwned") for s in HOSTILE]


def local_host(**kw) -> PlanHost:
    """The head as a local transport sees it (this interpreter as its python)."""
    return PlanHost(name=kw.pop("name", "head"), address="127.0.0.1", local=True, ssh=SshSettings(),
                    python=sys.executable, **kw)
