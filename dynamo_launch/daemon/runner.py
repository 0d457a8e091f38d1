"""The one async runner: feeds the pure machines, carries out their actions (DESIGN §4).

Every event for every machine goes through one queue and is applied by one task, so the
machines see a single, ordered history — the same as in their unit tests. Actions become
asyncio work: a spawn or a kill is a request to the host's agent, a timer is a
``loop.call_at``, probes and start gates are small tasks that post their results back
as events. The clock is the event loop's (monotonic).
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import structlog

from .. import routing, secrets
from ..errors import AgentError, CommandTimeout, DynamoLaunchError, IllegalTransition, TransportError
from ..health import http_fetch
from ..plan.spec import Gang, Plan, Probe, ProbeKind, ProcessSpec
from ..supervisor import (
    Adopted,
    CancelTimer,
    ClearFailed,
    DepsReady,
    Exited,
    GangAdopted,
    GangMachine,
    GangState,
    HostBack,
    HostLost,
    Kill,
    MemberDown,
    MemberReady,
    MemberStopped,
    Notify,
    ProbeResult,
    ProcessMachine,
    Resume,
    SetTimer,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    StartMember,
    StartProbes,
    State,
    Stop,
    StopMember,
    StopProbes,
    TimerFired,
    carried,
)
from .links import HostLink
from .probes import RayTables, run_probe
from .reconcile import Adoption, strays

__all__ = ["Proc", "Runner", "readiness_delay"]

log = structlog.get_logger("dynamo_launch.runner")

LOG_MAX_BYTES = 64 << 20  # per log file before rotation
LOG_BACKUPS = 3
SIGNAL_TIMEOUT = 5.0  # an agent answers a signal request at once; silence means the link stalled
TREE_INTERVAL = 10.0  # seconds between reads of each host's process trees (size, memory) for status
DEREGISTER_TIMEOUT = 2.0  # a planned stop waits this long at most for the worker's removal from discovery
# Seconds from a failed first readiness probe to the next, by what a probe costs (readiness_delay).
READY_RETRY_CHEAP = 0.02  # TCP and HTTP from the head: a connect
READY_RETRY_COSTLY = 0.1  # command and Ray probes: a program started on the host each time
UP_STATES = (State.READY, State.RUNNING)
Target = tuple[str, str]  # ("proc" | "gang", name)


def readiness_delay(failed: int, probe: Probe) -> float:
    """Seconds until the next readiness probe after ``failed`` (1, 2, …) in a row.

    Fast at first — a stand-in, a frontend or a restarted worker binds within milliseconds, and
    every retry that comes late there is bring-up time — then doubling to every second at most
    (``probe.interval`` if shorter), which is what a model loading for an hour gets. Probes that
    start a program on the host (command, Ray: ~0.7 s of CPU for a Ray node table) start at
    100 ms, TCP and HTTP probes (a connect from the head) at 20 ms."""
    cheap = probe.kind in (ProbeKind.TCP, ProbeKind.HTTP)
    first = READY_RETRY_CHEAP if cheap else READY_RETRY_COSTLY
    return min(first * 2 ** min(failed - 1, 16), probe.interval, 1.0)


class Proc:
    """A supervised process: its plan, its machine and what the runner holds for it."""

    def __init__(self, spec: ProcessSpec):
        self.spec = spec
        self.machine = ProcessMachine.from_spec(spec)
        self.record: dict[str, Any] | None = None  # the agent's record of the current copy
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.probe_task: asyncio.Task | None = None
        self.gate_task: asyncio.Task | None = None
        self.health = ""  # last probe or gate detail, for status
        self.started_wall: float | None = None
        self.early_exits: dict[int, dict[str, Any]] = {}  # exit reports that beat their spawn's answer
        self.exit_latency: float | None = None  # seconds from the exit on the node to the daemon
        self.probe_seconds: float | None = None  # duration of the last health probe
        self.tree: dict[str, Any] | None = None  # the agent's count of the copy's process tree and memory
        self.last_lines = ""  # the end of its log when the last copy exited (secrets redacted), for status
        self.instance: int | None = None  # the current copy's Dynamo instance (etcd lease), learned at readiness
        self.routing = ""  # the last word on whether the frontend routes to it, for status

    @property
    def name(self) -> str:
        """The process name."""
        return self.spec.name


class Runner:
    """Supervises every process of ``plan`` through ``links`` (one per host)."""

    def __init__(self, plan: Plan, links: Mapping[str, HostLink], launch_id: str, *,
                 on_notify: Callable[[str, Notify], None] = lambda name, n: None,
                 on_records: Callable[[], None] = lambda: None,
                 etcd: Callable[[], Any] = lambda: None):
        """``etcd`` gives the etcd client (:class:`~dynamo_launch.etcd.EtcdClient`) that removes a
        dead worker from Dynamo's discovery, or None while there is none."""
        self.plan, self.links, self.launch_id = plan, links, launch_id
        self._etcd = etcd
        self.procs = {s.name: Proc(s) for s in plan.processes}
        self.gangs = {g.name: GangMachine.from_gang(g) for g in plan.gangs}
        self._on_notify, self._on_records = on_notify, on_records
        self._gang_timers: dict[str, dict[str, asyncio.TimerHandle]] = {}
        self._generations: dict[str, int] = {}  # last generation of machines retired by a reload
        self._queue: asyncio.Queue[tuple[Target, Any]] = asyncio.Queue()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self.ray_tables = RayTables()  # Ray probes of one cluster share their node-table reads
        self.log = log.bind(cluster=plan.cluster)

    # --- life cycle -------------------------------------------------------------------------------

    def now(self) -> float:
        """The machines' clock."""
        return asyncio.get_running_loop().time()

    def begin(self, adoption: Adoption, *, start: bool = True,
              resume: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> None:
        """Start the event loop; adopt what ``adoption`` says and (``start``) start the rest —
        where ``resume`` (a previous daemon's :meth:`supervision`) has a machine's state, from
        there: still FAILED, the rest of its backoff, its restart budget."""
        self._loop_task = asyncio.create_task(self._run(), name="runner")
        self._spawn_task(self._read_trees())
        for name, gen in adoption.generation.items():
            self.procs[name].machine.generation = gen
        for gang, machine in self.gangs.items():
            machine.generation = adoption.gang_generation.get(gang, machine.generation)
        for name, rec in adoption.adopt.items():
            p = self.procs[name]
            p.record, p.started_wall = dict(rec), float(rec.get("started_at") or time.time())
            self.post(("proc", name), Adopted(int(rec["pid"]), int(rec["generation"])))
            if name in adoption.unknown:
                self.post(("proc", name), HostLost())  # its host does not answer yet: UNKNOWN, not gone
            else:
                self._spawn_task(self._watch(p))
        for gang in adoption.adopted_gangs:
            self.post(("gang", gang), GangAdopted(adoption.gang_generation[gang]))
        if not start:
            return
        carried = resume or {}
        for gang in self.gangs:
            if gang not in adoption.adopted_gangs:
                self.post(("gang", gang), self._resume(carried.get("gangs", {}).get(gang)))
        for name, p in self.procs.items():
            if p.spec.group is None and name not in adoption.adopt:
                self.post(("proc", name), self._resume(carried.get("processes", {}).get(name)))

    def supervision(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The supervision state worth keeping across a daemon restart (restarts, streak, budget,
        FAILED, a backoff's end), times as wall-clock seconds; for the state file."""
        offset = time.time() - self.now()
        out: dict[str, dict[str, dict[str, Any]]] = {"processes": {}, "gangs": {}}
        machines = [("processes", n, p.machine) for n, p in self.procs.items()]
        machines += [("gangs", n, m) for n, m in self.gangs.items()]
        for kind, name, m in machines:
            s = carried(m)
            if s["restarts"] or s["streak"] or s["state"] in ("FAILED", "BACKOFF"):
                s["recent"] = [round(t + offset, 3) for t in s["recent"]]
                s["backoff_until"] = None if s["backoff_until"] is None else round(s["backoff_until"] + offset, 3)
                out[kind][name] = s
        return out

    def _resume(self, saved: Mapping[str, Any] | None) -> Start | Resume:
        """``Start``, or ``Resume`` from a saved :meth:`supervision` entry (wall → this clock)."""
        if not saved:
            return Start()
        offset = self.now() - time.time()
        until = saved.get("backoff_until")
        return Resume(restarts=int(saved.get("restarts") or 0), streak=int(saved.get("streak") or 0),
                      recent=tuple(float(t) + offset for t in saved.get("recent") or ()),
                      failed=saved.get("state") == "FAILED", reason=str(saved.get("reason") or ""),
                      backoff_until=None if until is None else float(until) + offset)

    async def close(self) -> None:
        """Cancel every task and timer (the processes on the nodes are not touched)."""
        for p in self.procs.values():
            for h in p.timers.values():
                h.cancel()
        for gang_timers in self._gang_timers.values():
            for h in gang_timers.values():
                h.cancel()
        tasks = [t for t in (*self._tasks, self._loop_task, *self._proc_tasks()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def post(self, target: Target, event: Any) -> None:
        """Queue ``event`` for the machine ``target``."""
        self._queue.put_nowait((target, event))

    async def ping(self, timeout: float) -> bool:
        """True when the event loop applies a queued marker within ``timeout`` (watchdog)."""
        try:
            await asyncio.wait_for(self.settle(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def settle(self) -> None:
        """Return once every event queued before this call has been applied."""
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((("ping", ""), done))
        await done

    async def wait_for(self, condition: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``condition()`` holds (checked after every applied event); False on timeout."""
        deadline = None if timeout is None else self.now() + timeout
        while not condition():
            left = None if deadline is None else deadline - self.now()
            if left is not None and left <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), None if left is None else min(left, 1.0))
        return True

    # --- operator requests --------------------------------------------------------------------------

    def restart(self, target: str) -> list[str]:
        """Restart a process, a gang or a group, all at once (gang aware; clears FAILED). Returns
        what it touched. (The operator's ``restart`` rolls: :func:`~dynamo_launch.daemon.reload.restart`.)"""
        return self.restart_names(self.resolve(target))

    def restart_names(self, names: set[str]) -> list[str]:
        """Restart the processes ``names`` and every gang one of them belongs to (clears FAILED)."""
        gangs = {self.procs[n].spec.group for n in names} - {None}
        for gang in sorted(gangs):  # type: ignore[arg-type]
            m = self.gangs[gang]
            if m.state is GangState.FAILED:
                self.post(("gang", gang), ClearFailed())
            else:
                self.post(("gang", gang), Stop("operator restart"))
                self.post(("gang", gang), Start())
        for n in names:
            if self.procs[n].spec.group is not None:
                continue
            if self.procs[n].machine.state is State.FAILED:
                self.post(("proc", n), ClearFailed())
            else:
                self.post(("proc", n), Stop("operator restart"))
                self.post(("proc", n), Start())
        return sorted(names | {f"gang {g}" for g in gangs})  # type: ignore[operator]

    def resolve(self, target: str) -> set[str]:
        """Process names meant by ``target``: a process, a gang, or a group (``<name>-…``)."""
        if target in self.procs:
            return {target}
        if target in self.gangs:
            return set(self.gangs[target].members)
        found = {n for n in self.procs if n.startswith(target + "-")}
        if not found:
            raise DynamoLaunchError(f"no process, gang or group called {target!r}")
        return found

    async def stop_all(self, reason: str = "down", timeout: float | None = None,
                       only: set[str] | None = None) -> list[str]:
        """Stop everything (or the processes in ``only``, with their gangs) in reverse dependency
        order; the names left UNKNOWN (host unreachable)."""
        levels = {u: lv for u, lv in self._levels().items()
                  if only is None or (self.gangs[u[1]].members if u[0] == "gang" else (u[1],))[0] in only}
        for level in sorted(set(levels.values()), reverse=True):
            units = [u for u, lv in levels.items() if lv == level]
            for kind, name in units:
                self.post((kind, name), Stop(reason))
            # Before judging "stopped": every event queued so far must have been applied. Without
            # a daemon (`down`), the machines of adopted processes are still in their first state,
            # STOPPED, until their Adopted events are applied, and the wait would end at once.
            await self.settle()
            names = [n for kind, name in units for n in (self.gangs[name].members if kind == "gang" else (name,))]
            limit = timeout or max(self.procs[n].spec.restart.stop_timeout for n in names) + 15
            await self.wait_for(lambda: all(self.procs[n].machine.state in (State.STOPPED, State.UNKNOWN)
                                            for n in names), limit)
        return [n for n, p in self.procs.items() if p.machine.state is State.UNKNOWN and (only is None or n in only)]

    # --- replacing machines (a reload) -------------------------------------------------------

    async def retire(self, names: list[str], timeout: float | None = None) -> None:
        """Stop ``names`` (with every member of their gangs) and forget their machines; the
        generation each had is kept for the machine that replaces it (:meth:`install`).

        Raises :class:`DynamoLaunchError` when one cannot be confirmed stopped (its host is
        unreachable): replacing it could make two copies, so nothing is forgotten then.
        """
        names = [n for n in names if n in self.procs]
        gangs = {self.procs[n].spec.group for n in names} - {None}
        everyone = set(names) | {m for g in gangs for m in self.gangs[g].members}  # type: ignore[index]
        for g in gangs:
            self.post(("gang", g), Stop("reload"))  # type: ignore[arg-type]
        for n in everyone:
            if self.procs[n].spec.group is None:
                self.post(("proc", n), Stop("reload"))
        if everyone:
            limit = timeout or max(self.procs[n].spec.restart.stop_timeout for n in everyone) + 15
            await self.wait_for(lambda: all(self.procs[n].machine.state in (State.STOPPED, State.UNKNOWN)
                                            for n in everyone), limit)
        stuck = sorted(n for n in everyone if self.procs[n].machine.state is not State.STOPPED)
        if stuck:
            raise DynamoLaunchError(f"reload halted: {', '.join(stuck)} could not be confirmed stopped "
                                    "(host unreachable?); nothing more was changed")
        for n in everyone:
            p = self.procs.pop(n)
            for h in p.timers.values():
                h.cancel()
            _stop(p.probe_task)
            _stop(p.gate_task)
            self._generations[n] = p.machine.generation
        for g in gangs:
            self._generations["gang " + g] = self.gangs.pop(g).generation  # type: ignore[arg-type]
            for h in self._gang_timers.pop(g, {}).values():  # type: ignore[arg-type]
                h.cancel()

    def install(self, specs: list[ProcessSpec], gangs: Mapping[str, Gang]) -> None:
        """New machines for ``specs`` (and their gangs, from ``gangs``), each continuing the
        generation count of the machine :meth:`retire` forgot under its name."""
        for spec in specs:
            p = Proc(spec)
            if spec.name in self._generations:
                p.machine.generation = self._generations[spec.name] + 1
            self.procs[spec.name] = p
            if spec.group and spec.group not in self.gangs:
                m = GangMachine.from_gang(gangs[spec.group])
                if "gang " + spec.group in self._generations:
                    m.generation = self._generations["gang " + spec.group] + 1
                self.gangs[spec.group] = m

    def start(self, names: Iterable[str]) -> None:
        """Start the machines of ``names`` (a gang once, for all its members)."""
        names = list(names)
        for g in sorted({self.procs[n].spec.group for n in names} - {None}):  # type: ignore[type-var]
            self.post(("gang", g), Start())
        for n in names:
            if self.procs[n].spec.group is None:
                self.post(("proc", n), Start())

    def use_plan(self, plan: Plan) -> None:
        """Make ``plan`` the runner's plan; processes it keeps unchanged take their new specs."""
        for spec in plan.processes:
            if spec.name in self.procs:
                self.procs[spec.name].spec = spec
        self.plan = plan

    # --- host links -----------------------------------------------------------------------------------

    def on_agent_event(self, host: str, event: dict[str, Any]) -> None:
        """An agent's unsolicited event (``exit``)."""
        if event.get("event") != "exit" or event.get("launch_id") != self.launch_id:
            return
        p = self.procs.get(str(event.get("name")))
        if p is None or p.spec.host != host:
            return
        pid = int(event.get("pid") or 0)
        if p.record is None or int(p.record.get("pid", 0)) != pid:
            p.early_exits[pid] = event  # the spawn's answer is still on its way
            return
        self._exited(p, event)

    def on_host_lost(self, host: str, why: str) -> None:
        """Every process of ``host`` becomes UNKNOWN: maybe running, never started twice."""
        self._on_notify("", Notify("host-unreachable", f"host {host} unreachable: {why}", {"host": host}))
        for p in self.procs.values():
            if p.spec.host == host:
                self.post(("proc", p.name), HostLost())
                if p.instance is not None:  # nothing can reach it through this partition either
                    self._spawn_task(self._deregister(p, "host unreachable", unless_answering=True))

    async def on_host_back(self, host: str, records: list[dict[str, Any]]) -> None:
        """Reconcile ``host`` after a loss: adopt live records, count the rest gone, kill strays.

        The strays are killed before any machine hears that its host is back: a gone process
        is restarted at once, and its new copy must not be in the scan that picks the strays."""
        self._on_notify("", Notify("host-back", f"host {host} reachable again", {"host": host}))
        ours = {r.get("name"): r for r in records if r.get("launch_id") == self.launch_id}
        keep: dict[str, int] = {}
        back: list[tuple[str, HostBack]] = []
        for p in self.procs.values():
            if p.spec.host != host:
                continue
            r = ours.get(p.name)
            if r is not None and r.get("alive"):
                p.record, keep[p.name] = dict(r), int(r["generation"])
                await self._watch(p)
                back.append((p.name, HostBack(alive=True, pid=int(r["pid"]))))
                continue
            # Gone. Its node may have recorded how it ended (shown instead of "unknown status"),
            # and a record of another generation (or none) means the start never got there.
            if p.instance is not None:  # it answered while the host did not, and is gone now
                self._spawn_task(self._deregister(p, "gone when its host came back"))
            current = r is not None and int(r.get("generation") or 0) == p.machine.generation
            ended = (r or {}).get("exit") or {} if current else {}
            if ended and p.record is not None and r is not None and r.get("pid") == p.record.get("pid"):
                p.record["exit"] = {k: ended.get(k) for k in ("code", "signal", "at")}  # kept in the state file
            back.append((p.name, HostBack(alive=False, code=ended.get("code"), signal=ended.get("signal"),
                                          spawned=current or p.machine.pid is not None)))
        await self.kill_strays(self.links[host], keep)
        for name, event in back:
            self.post(("proc", name), event)

    async def kill_strays(self, link: HostLink, keep: Mapping[str, int]) -> None:
        """Kill every process of this launch on ``link``'s host but the copies in ``keep``
        (name → generation); a scan that fails is logged, not raised."""
        try:
            scanned = await link.call("scan", launch_id=self.launch_id)
            for s in strays(scanned, keep):
                self.log.warning("killing stray process", host=link.name, pid=s.get("pid"), name=s.get("name"),
                                  generation=s.get("generation"))
                await link.call("signal", name=str(s.get("name")), pid=int(s["pid"]),
                                start_time=s.get("start_time"), signal="KILL")
        except DynamoLaunchError as e:
            self.log.warning("stray scan failed", host=link.name, error=str(e))

    # --- the event loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            (kind, name), event = await self._queue.get()
            if kind == "ping":  # the watchdog's proof that this loop still turns
                if not event.done():
                    event.set_result(None)
                continue
            try:
                if kind == "proc":
                    self._feed_proc(self.procs[name], event)
                else:
                    self._feed_gang(name, event)
            except Exception:  # a bug must not stop supervision of everything else
                self.log.exception("event handling failed", target=name, event=repr(event))
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def _feed_proc(self, p: Proc, event: Any) -> None:
        before = p.machine.state
        try:
            actions = p.machine.on(event, self.now())
        except IllegalTransition as e:
            self.log.warning("event refused", process=p.name, error=str(e))
            return
        for action in actions:
            self._act(p, action)
        after = p.machine.state
        if after is not before:
            self._entered(p, before, after)

    def _entered(self, p: Proc, before: State, after: State) -> None:
        if before is State.WAITING and p.gate_task is not None:
            p.gate_task.cancel()
        if after is State.WAITING:
            p.gate_task = asyncio.create_task(self._gates(p), name=f"gates-{p.name}")
        group = p.spec.group
        if group is not None and after in UP_STATES:
            self.post(("gang", group), MemberReady(p.name))
        if group is not None and after is State.STOPPED:
            self.post(("gang", group), MemberStopped(p.name))
        if after in (State.STOPPED, State.FAILED) and p.record is not None and p.machine.pid is None:
            self._on_records()
        elif after in (State.BACKOFF, State.FAILED, State.WAITING):  # restarts and budget: kept on disk
            self._on_records()

    def _act(self, p: Proc, a: Any) -> None:
        if isinstance(a, Spawn):
            self._spawn_task(self._spawn(p, a.generation))
        elif isinstance(a, Kill):
            self._spawn_task(self._kill(p, a.signal))
        elif isinstance(a, SetTimer):
            self._set_timer(p.timers, ("proc", p.name), a)
        elif isinstance(a, CancelTimer):
            _cancel(p.timers, a.kind)
        elif isinstance(a, StartProbes):
            _stop(p.probe_task)
            p.probe_task = asyncio.create_task(self._probes(p, a.kind), name=f"probe-{p.name}")
        elif isinstance(a, StopProbes):
            _stop(p.probe_task)
            p.probe_task = None
        elif isinstance(a, Notify):
            self._on_notify(p.name, a)
        elif isinstance(a, MemberDown):
            self.post(("gang", p.spec.group or ""), replace(a, name=p.name))

    def _feed_gang(self, name: str, event: Any) -> None:
        m = self.gangs[name]
        before = m.state
        try:
            actions = m.on(event, self.now())
        except IllegalTransition as e:
            self.log.warning("event refused", gang=name, error=str(e))
            return
        if m.state is not before and m.state in (GangState.BACKOFF, GangState.FAILED, GangState.STARTING):
            self._on_records()  # the gang's restarts and budget: kept on disk
        timers = self._gang_timers.setdefault(name, {})
        for a in actions:
            if isinstance(a, StartMember):
                self.post(("proc", a.name), Start(generation=a.generation))
            elif isinstance(a, StopMember):
                self.post(("proc", a.name), Stop("gang"))
            elif isinstance(a, SetTimer):
                self._set_timer(timers, ("gang", name), a)
            elif isinstance(a, CancelTimer):
                _cancel(timers, a.kind)
            elif isinstance(a, Notify):
                self._on_notify(f"gang {name}", a)

    def _set_timer(self, timers: dict[str, asyncio.TimerHandle], target: Target, a: SetTimer) -> None:
        _cancel(timers, a.kind)
        timers[a.kind] = asyncio.get_running_loop().call_at(a.at, self.post, target, TimerFired(a.kind, a.at))

    def _spawn_task(self, coro: Any) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _proc_tasks(self) -> list[asyncio.Task]:
        return [t for p in self.procs.values() for t in (p.probe_task, p.gate_task) if t is not None]

    # --- actions --------------------------------------------------------------------------------------

    async def _spawn(self, p: Proc, generation: int) -> None:
        spec, link = p.spec, self.links[p.spec.host]
        try:
            env = secrets.resolve(spec.env)
            files = {posixpath.basename(k): v for k, v in secrets.resolve(spec.files).items()}
        except secrets.SecretError as e:
            self.post(("proc", p.name), SpawnFailed(str(e)))
            return
        try:
            # TLS files travel like the env: in the request, never on a command line
            extra = {"files": files} if files else {}
            result = await link.call("spawn", timeout=60.0, name=spec.name, argv=list(spec.argv), env=env,
                                     cwd=spec.cwd, log_file=spec.log_file, launch_id=self.launch_id,
                                     generation=generation, log_max_bytes=LOG_MAX_BYTES, log_backups=LOG_BACKUPS,
                                     **extra)
        except AgentError as e:
            if e.kind == "exists":  # a live copy is already there: never start a second one
                await self._take_existing(p, str(e))
            else:
                self.post(("proc", p.name), SpawnFailed(str(e)))
            return
        except TransportError as e:
            # Unsure whether it started: when the host is lost, HostLost/HostBack settle it.
            self.log.warning("spawn request failed", process=p.name, error=str(e))
            if link.up:
                await self._take_existing(p, str(e))
            return
        p.instance, p.routing = None, ""  # a new copy registers under a new lease
        p.record = {"name": spec.name, "pid": int(result["pid"]), "start_time": result.get("start_time"),
                    "boot_id": result.get("boot_id"), "launch_id": self.launch_id, "generation": generation,
                    "started_at": float(result.get("started_at") or time.time())}
        p.started_wall = p.record["started_at"]  # the host's clock (as Ray's node start times there)
        self._on_records()  # the state file names the copy before anyone hears it started
        self.post(("proc", p.name), Spawned(int(result["pid"])))
        early = p.early_exits.pop(int(result["pid"]), None)
        p.early_exits.clear()
        if early is not None:
            self._exited(p, early)

    async def _take_existing(self, p: Proc, why: str) -> None:
        """After an unclear spawn: take the recorded live copy as ours, or report the failure."""
        try:
            records = await self.links[p.spec.host].records()
        except DynamoLaunchError:
            return  # the link is going down; HostLost follows
        r = next((r for r in records if r.get("name") == p.name and r.get("alive")), None)
        if r is not None and r.get("launch_id") == self.launch_id:
            p.record, p.started_wall = dict(r), float(r.get("started_at") or time.time())
            self._on_records()
            self.post(("proc", p.name), Spawned(int(r["pid"])))
        elif r is not None:
            self.post(("proc", p.name), SpawnFailed(
                f"another copy of {p.name} runs there (pid {r.get('pid')}, launch {r.get('launch_id')}): "
                "stop it with `dynamo-launch down` of that launch first"))
        else:
            self.post(("proc", p.name), SpawnFailed(why))

    async def _kill(self, p: Proc, signal: str) -> None:
        """Send ``signal`` to ``p``'s copy, only over a link known to be up at that moment."""
        rec, link = p.record, self.links[p.spec.host]
        if rec is None:
            return
        # A request written into a stalled connection would be delivered when the link heals,
        # killing a healthy process long after anyone decided to. So the host must answer first;
        # if it does not, it is suspected lost (its processes become UNKNOWN) and nothing is sent.
        if not await link.confirm():
            self.log.warning("signal not sent: host unreachable", process=p.name, signal=signal, host=p.spec.host)
            return
        if signal == "TERM" and p.instance is not None:
            # Out of routing first: requests stop going to it before it stops taking them.
            await asyncio.wait({self._spawn_task(self._deregister(p, "stopping"))}, timeout=DEREGISTER_TIMEOUT)
        try:
            answer = await link.call("signal", timeout=SIGNAL_TIMEOUT, name=p.name, pid=int(rec["pid"]),
                                     start_time=rec.get("start_time"), signal=signal)
        except CommandTimeout as e:  # went silent after the ping: drop the connection, and the request with it
            await link.suspect(f"no answer to {signal} for {p.name}: {e}")
            return
        except DynamoLaunchError as e:  # host lost: HostLost follows; agent error: the exit never comes
            self.log.warning("signal failed", process=p.name, signal=signal, error=str(e))
            return
        if not (answer or {}).get("sent"):
            self.log.info("signal not needed: the process had already ended", process=p.name, signal=signal)

    async def _watch(self, p: Proc) -> None:
        with contextlib.suppress(DynamoLaunchError):
            await self.links[p.spec.host].call("watch", name=p.name)

    def _exited(self, p: Proc, event: dict[str, Any]) -> None:
        at = event.get("at")
        if isinstance(at, (int, float)):
            p.exit_latency = max(0.0, time.time() - float(at))
        assert p.record is not None
        p.record["exit"] = {"code": event.get("code"), "signal": event.get("signal"), "at": at}
        p.last_lines = secrets.redact(str(event.get("last_lines") or ""), p.spec.env)
        self.post(("proc", p.name), Exited(event.get("code"), event.get("signal"), int(event["pid"])))
        if p.instance is not None or p.routing:  # a routed worker: its instance, or why it is unknown
            self._spawn_task(self._deregister(p, "exited"))

    async def _read_trees(self) -> None:
        """Every TREE_INTERVAL, each answering host's records: how many processes each copy's
        tree holds and their memory (cgroup ``memory.current`` or summed RSS), for status."""
        while True:
            await asyncio.sleep(TREE_INTERVAL)
            for link in list(self.links.values()):
                if not link.up:
                    continue
                try:
                    records = await link.records()
                except DynamoLaunchError:
                    continue
                for r in records:
                    p = self.procs.get(str(r.get("name")))
                    if p is not None and p.spec.host == link.name and p.record is not None \
                            and r.get("pid") == p.record.get("pid") and r.get("launch_id") == self.launch_id:
                        p.tree = r.get("tree") if r.get("alive") else None

    # --- probes and gates -----------------------------------------------------------------------------

    async def _probes(self, p: Proc, kind: str) -> None:
        probe = p.spec.readiness if kind == "readiness" else p.spec.liveness
        if probe is None or probe.kind is ProbeKind.PROCESS:
            return
        if kind == "liveness":
            await asyncio.sleep(probe.interval)
        failed = 0
        while True:
            started = self.now()
            ok, detail = await self.probe(probe, self._ray_since(p, probe))
            p.health, p.probe_seconds = detail, self.now() - started
            if kind == "readiness" and ok and p.spec.routing is not None:
                ok, p.routing = await self._routed(p)
                p.health = f"{detail}; {p.routing}"
            if kind == "liveness" and not ok and not await self.links[p.spec.host].confirm():
                # A probe that cannot reach a host is no evidence that the process died: the host
                # is suspected lost instead, and its processes become UNKNOWN, not killed.
                p.health = f"{detail} (host {p.spec.host} not answering: state unknown)"
                return
            if kind == "liveness" or ok:
                self.post(("proc", p.name), ProbeResult(kind, ok, detail))  # type: ignore[arg-type]
                if kind == "readiness":
                    return
            failed += 1
            await asyncio.sleep(probe.interval if kind == "liveness" else readiness_delay(failed, probe))

    async def _routed(self, p: Proc) -> tuple[bool, str]:
        """Routing-aware readiness of a Dynamo worker whose ``/health`` answers: ``(ready, detail)``.

        Its instance comes from its own ``/metrics``; it is ready once the frontend lists that
        instance, and waits while the frontend is starting. Where routing cannot be known (no
        frontend, or one that is down; no worker id in the metrics) it is ready on its health
        alone, and the detail says routing is unconfirmed: a worker is never held back, nor killed
        at its startup deadline, by a frontend that does not come.
        """
        r = p.spec.routing
        assert r is not None
        timeout = p.spec.readiness.timeout
        if p.instance is None:
            try:
                status, body = await http_fetch(r.metrics_url, timeout)
            except (OSError, ValueError, asyncio.TimeoutError) as e:
                return False, f"GET {r.metrics_url}: {e or type(e).__name__}"
            instance, why = routing.worker_instance(body.decode("utf-8", "replace")) if status == 200 else (
                None, f"its /metrics answered {status}")
            if instance is None:
                return True, f"routing unconfirmed: {why}"
            p.instance = instance
        ident = routing.instance_hex(p.instance)
        frontend = self.procs.get(r.frontend)
        if not r.frontend_url or frontend is None:
            return True, f"instance {ident} (no frontend to ask whether it routes to it)"
        state = frontend.machine.state
        if state in (State.WAITING, State.STARTING):  # on its way: it will say
            return False, f"instance {ident}: waiting for the frontend to be ready"
        if state not in UP_STATES:
            return True, f"routing unconfirmed (frontend {state.value}): instance {ident}"
        try:
            status, body = await http_fetch(r.frontend_url, timeout)
        except (OSError, ValueError, asyncio.TimeoutError) as e:
            return False, f"GET {r.frontend_url}: {e or type(e).__name__}"
        if status != 200:
            return False, f"GET {r.frontend_url}: {status}"
        return routing.routes_to(body.decode("utf-8", "replace"), p.instance)

    async def _deregister(self, p: Proc, why: str, *, unless_answering: bool = False) -> None:
        """Take ``p``'s Dynamo instance out of discovery now (it exited, is stopping, or its host
        is lost), rather than when its lease runs out; an event says what was done, or why not.

        ``unless_answering``: first ask the worker itself, from here; one that still answers is
        alive and reachable (only its host's SSH is in trouble), and is left alone — a worker
        whose lease is revoked exits, and that would turn an SSH hiccup into an outage.
        """
        if unless_answering and p.instance is not None:
            ok, detail = await self.probe(replace(p.spec.readiness, timeout=min(p.spec.readiness.timeout, 1.0)))
            if ok:
                self._on_notify(p.name, Notify("deregister-skipped", f"{p.name} ({why}): it still answers "
                                               f"({detail}): left in routing", {"reason": why}))
                return
        instance, learned, p.instance, p.routing = p.instance, p.routing, None, ""
        if instance is None:
            self._on_notify(p.name, Notify("deregister-skipped", f"{p.name} ({why}): its Dynamo instance was never "
                                           f"learned ({learned or 'not ready'}): left to its lease", {"reason": why}))
            return
        ident = routing.instance_hex(instance)
        data = {"instance": ident, "reason": why}
        shared = sorted(q.name for q in self.procs.values() if q.instance == instance)
        client = self._etcd()
        if shared or client is None:
            detail = (f"instance {ident} is also {', '.join(shared)}'s: left alone" if shared
                      else f"instance {ident}: no etcd client: left to its lease")
            self._on_notify(p.name, Notify("deregister-skipped", f"{p.name} ({why}): {detail}", data))
            return
        started = self.now()
        removed, detail = await routing.remove_instance(client, instance, address=p.spec.address)
        data["seconds"] = round(self.now() - started, 4)
        kind = "deregistered" if removed else "deregister-skipped"
        self._on_notify(p.name, Notify(kind, f"{p.name} ({why}): {detail}", data))

    async def probe(self, probe: Probe, since: Mapping[str, float] | None = None) -> tuple[bool, str]:
        """Run one probe: ``(ok, detail)``. Never raises for an unhealthy target."""
        return await run_probe(probe, self.links, since, self.ray_tables)

    def _ray_since(self, p: Proc, probe: Probe) -> dict[str, float]:
        """For a Ray probe run for ``p``: address → start of the process running that host's node now.

        A restarted Ray node's dead predecessor stays alive in Ray for seconds; only nodes started
        by the current copies count (``p`` itself for a worker's join, its gang's Ray processes
        for a leader's node count).
        """
        if probe.kind is ProbeKind.RAY_NODE:
            members = [p]
        elif probe.kind is ProbeKind.RAY_NODES and p.spec.group:
            members = [q for q in self.procs.values()
                       if q.spec.group == p.spec.group and q.spec.kind in ("ray-head", "ray-worker")]
        else:
            return {}
        return {self.links[q.spec.host].host.address: q.started_wall for q in members if q.started_wall is not None}

    async def _gates(self, p: Proc) -> None:
        """Post DepsReady once every start gate of ``p`` holds (and its host answers)."""
        while True:
            pending = []
            if not self.links[p.spec.host].up:
                pending.append(f"host {p.spec.host} unreachable")
            for gate in p.spec.depends_on:
                if gate.process is not None:
                    state = self.procs[gate.process].machine.state
                    if state not in UP_STATES:
                        pending.append(f"{gate.process} {state.value}")
                elif gate.probe is not None and not pending:
                    ok, detail = await self.probe(gate.probe, self._ray_since(p, gate.probe))
                    if not ok:
                        pending.append(detail)
            if not pending:
                p.health = ""
                self.post(("proc", p.name), DepsReady())
                return
            p.health = "waiting: " + "; ".join(pending)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.5)

    # --- helpers --------------------------------------------------------------------------------------

    def _levels(self) -> dict[Target, int]:
        """Start level of each unit (a process, or a gang as a whole): 0 depends on nothing."""
        memo: dict[str, int] = {}

        def level(name: str, seen: frozenset[str] = frozenset()) -> int:
            if name not in memo:
                deps = [g.process for g in self.procs[name].spec.depends_on if g.process and g.process not in seen]
                memo[name] = 1 + max((level(d, seen | {name}) for d in deps), default=-1)
            return memo[name]

        units: dict[Target, int] = {}
        for name, p in self.procs.items():
            key: Target = ("gang", p.spec.group) if p.spec.group else ("proc", name)
            units[key] = max(units.get(key, 0), level(name))
        return units


def _cancel(timers: dict[str, asyncio.TimerHandle], kind: str) -> None:
    h = timers.pop(kind, None)
    if h is not None:
        h.cancel()


def _stop(task: asyncio.Task | None) -> None:
    if task is not None and not task.done():
        task.cancel()
