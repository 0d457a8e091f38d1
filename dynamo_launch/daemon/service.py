"""The daemon: preflight, adoption, supervision, the control socket, and a clean stop.

``up`` = :meth:`Daemon.prepare` (lock, connect, preflight, read the nodes' records, adopt or
decide generations) then :meth:`Daemon.serve` (run until asked to stop, then stop everything
in reverse dependency order and verify nothing of the launch is left). ``down`` without a
running daemon is :meth:`Daemon.down`: the same preparation, adopting what runs, then the
same stop. Progress and lifecycle events are logged with structlog (the CLI chooses the
renderer); nothing here prints.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import functools
import json
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from .. import certs, credentials, secrets
from ..addresses import split_hostport
from ..agent import Unsafe, open_private, private_dir
from ..control import ControlServer, socket_path
from ..errors import (
    AlreadyRunning,
    DynamoLaunchError,
    InventoryError,
    LeaderHeld,
    MirrorError,
    PreflightFailed,
    SecretError,
    StateUnwritable,
    UnsafePath,
)
from ..eventbus import EventBus
from ..load import load_plan
from ..mirror import Mirror
from ..model import Inventory
from ..plan.diff import PlanDiff, steps
from ..plan.diff import diff as diff_plans
from ..plan.spec import Env, Plan, PlanHost
from ..preflight import Check, run_preflight
from ..sdnotify import Notifier
from ..state import StateFile
from ..supervisor import Notify, State
from ..transport import Transport, make_transport
from . import reload
from .links import HostLink
from .progress import Progress, Show
from .reconcile import Adoption, pick_launch_id, plan_adoption
from .requests import handle
from .runner import Runner
from .snapshot import snapshot

if TYPE_CHECKING:  # prometheus-client loads only when metrics are served (see _start_metrics)
    from ..metrics import MetricsServer

__all__ = ["Daemon", "StopReport"]

log = structlog.get_logger("dynamo_launch.daemon")
T = TypeVar("T")

# The last status write and the lease release (2 s each), the events' flush (2 s), with room.
LET_GO_TIMEOUT = 10.0
SAVE_RETRY = 5.0  # seconds between tries while the state file cannot be written


@dataclass
class StopReport:
    """What a stop did: processes stopped, those that could not be verified, strays killed."""

    stopped: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    leftovers: dict[str, list[int]] = field(default_factory=dict)  # host → pids still carrying the launch id

    @property
    def clean(self) -> bool:
        """True when every host was checked and nothing of the launch is left."""
        return not self.unknown and not self.leftovers


class Daemon:
    """Supervises one cluster (one plan). ``transports`` overrides how hosts are reached (tests)."""

    def __init__(self, plan: Plan, inv: Inventory, inventory_path: str, *, accept_new_host_keys: bool = False,
                 transports: dict[str, Transport] | None = None, notifier: Notifier | None = None,
                 require_all_hosts: bool = False):
        self.plan, self.inv, self.inventory_path = plan, inv, os.path.abspath(inventory_path)
        self.state = StateFile(plan.state_dir)
        self.accept_new_host_keys = accept_new_host_keys
        # Resuming a launch (a daemon restart), hosts that do not answer are supervised once they
        # do; with this set (or on a first bring-up) every host must answer before anything runs.
        self.require_all_hosts = require_all_hosts
        self.notifier = notifier or Notifier(environ={})  # systemd's, or a silent one
        self.transports = transports or {h.name: make_transport(h, accept_new_host_keys=accept_new_host_keys)
                                         if not h.local else make_transport(h) for h in plan.hosts}
        self.links: dict[str, HostLink] = {}
        self.runner: Runner | None = None
        self.launch_id = ""
        self.started = time.time()
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self.timings: dict[str, float] = {"reloads": 0}  # up_seconds, reload_seconds: for metrics
        self._seq = 0
        self._lock_fd: int | None = None
        self._stop = asyncio.Event()
        self._stopped: asyncio.Future | None = None
        self._control: ControlServer | None = None
        self._reload_task: asyncio.Task | None = None
        self._metrics: MetricsServer | None = None
        self.mirror: Mirror | None = None  # status and leadership in etcd
        self.bus: EventBus | None = None  # lifecycle events on NATS
        self._save_pending = False
        self._save_retry: asyncio.TimerHandle | None = None
        self.save_error: dict[str, Any] | None = None  # the state file's last failed write, until one succeeds
        self._log = log.bind(cluster=plan.cluster)

    # --- preparation ------------------------------------------------------------------------------------

    async def prepare(self, *, preflight: bool = True, on_checks: Callable[[list[Check]], None] = lambda c: None,
                      start: bool = True) -> Adoption:
        """Lock, (preflight,) connect every host, adopt what runs; ``start`` the rest."""
        self._take_lock()
        saved = self._load_state()
        if start:  # stopping (`down`) must work on a full disk; starting what could not be recorded must not
            self._probe_state(saved)
        created = credentials.ensure(self.inv)  # before anything uses them: NATS, etcd, the mirror, the bus
        created += certs.ensure(self.inv)
        if created:
            self._log.info("generated NATS/etcd credentials", files=created)
        self.notifier.status(f"connecting to {len(self.plan.hosts)} hosts")
        later: dict[str, str] = {}  # hosts supervised once they answer: host → why not now
        if preflight:
            # The agents start first — one SSH channel per host does it all — and preflight asks
            # through them (a host whose agent cannot start is asked over plain SSH, which says
            # why in preflight's words). Agents start nothing by themselves: no process runs
            # before preflight passed. The leader key is taken meanwhile, and before preflight:
            # when another daemon supervises this cluster, say that — not that its ports are busy.
            unreachable, no_agent = await self._while_leading(bool(saved), self._agents_for_preflight())
            self._log.info("agents up", hosts=len(self.links))  # bring-up phases (benchmarks/bringup.py)
            self.notifier.status(f"preflight: {len(self.plan.hosts)} hosts")
            # A state directory an agent refused is that host's preflight FAIL line, not a traceback.
            refused = {h.name: str(e) for h, e in no_agent if isinstance(e, UnsafePath)}
            checks = await run_preflight(self.inv, self.plan, self.transports, agents=self.links,
                                         unreachable=unreachable, adopting=list((saved or {}).get("processes", {})),
                                         refused=refused)
            if unreachable and (saved or {}).get("processes") and not self.require_all_hosts \
                    and self.plan.head not in unreachable:
                later = dict(unreachable)
                checks = [replace(c, status="warn", detail=f"{c.detail}: its processes are UNKNOWN until it answers "
                                                           "(--require-all-hosts refuses instead)")
                          if c.host in later and c.status == "fail" else c for c in checks]
            on_checks(checks)
            if any(c.status == "fail" for c in checks):
                raise PreflightFailed(checks)
            self._log.info("preflight passed", hosts=len(self.plan.hosts))
            if no_agent:  # answered plain SSH after all: their agents now, or fail as before
                await self._open_links([h for h, _ in no_agent])
        else:
            await self._while_leading(bool(saved), self._open_links())
            self._log.info("agents up", hosts=len(self.links))
        records = {name: await link.records() for name, link in self.links.items()}
        self.launch_id = pick_launch_id((saved or {}).get("launch_id"), records) or uuid.uuid4().hex[:12]
        adoption = plan_adoption(self.plan, records, self.launch_id, _believed_running(saved, later))
        await self._stop_records(adoption.stop)
        self.runner = Runner(self.plan, self.links, self.launch_id, on_notify=self._notify,
                             on_records=self._records_changed,
                             etcd=lambda: self.mirror.client if self.mirror is not None else None)
        for link in self.links.values():
            keep = {n: int(r["generation"]) for n, r in adoption.adopt.items() if self.plan.process(n).host == link.name}
            await self.runner.kill_strays(link, keep)
        if adoption.adopt:
            self._log.info("adopting running processes", count=len(adoption.adopt), launch_id=self.launch_id,
                           processes=sorted(adoption.adopt))
        self.runner.begin(adoption, start=start, resume=(saved or {}).get("supervision"))
        for host, why in later.items():
            self._log.warning("host unreachable: supervised once it answers", host=host, reason=why)
            self.links[host] = self._link(next(h for h in self.plan.hosts if h.name == host))
            self.links[host].start_lost(why)
            self.runner.on_host_lost(host, why)
        self.save()  # the launch id, and the adopted copies, before anything new starts
        return adoption

    async def _agents_for_preflight(self) -> tuple[dict[str, str], list]:
        """Connect to every host, then start the agents of those that answered: ``(unreachable,
        no_agent)`` as :meth:`_connect_all` and :meth:`_open_links` (not strict) say."""
        unreachable = await self._connect_all()
        no_agent = await self._open_links([h for h in self.plan.hosts if h.name not in unreachable], strict=False)
        return unreachable, no_agent

    async def _while_leading(self, wait: bool, work: Awaitable[T]) -> T:
        """``work`` (reaching the hosts) alongside :meth:`_lead`, both done before this returns.

        Neither needs the other, and at ``up`` both wait mostly on other machines (SSH handshakes
        and agents starting; etcd), so running them together takes the longer of the two, not the
        sum. The first to fail ends the other: a daemon that is not the leader stops at once."""
        tasks = [asyncio.ensure_future(self._lead(wait=wait)), asyncio.ensure_future(work)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                if task in done and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            return await tasks[1]
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _lead(self, *, wait: bool) -> None:
        """Take the cluster's leader key in etcd (a second daemon elsewhere is refused) and start
        mirroring and publishing events. With etcd not up yet — ours starts with the cluster —
        the key is taken in the background as soon as it answers."""
        try:
            etcd_auth = credentials.etcd_client_auth(self.inv)
        except SecretError as e:  # an external etcd's credentials: preflight names it
            self._log.warning("etcd credentials unavailable: the mirror connects without", reason=str(e))
            etcd_auth = None
        try:
            etcd_tls = credentials.etcd_client_tls(self.inv)
        except SecretError as e:  # an external etcd's CA or client files: preflight names them
            self._log.warning("etcd TLS files unavailable: the mirror trusts the system's CAs", reason=str(e))
            etcd_tls = None
        self.mirror = Mirror(self.plan.cluster, self.plan.etcd_url, f"pid {os.getpid()} on {socket.gethostname()}",
                             on_conflict=self._on_conflict, starting=self.inv.etcd.external is None, auth=etcd_auth,
                             tls=etcd_tls)
        try:
            # Our own previous run (crashed: we hold the state-dir lock now) may still hold the
            # key until its lease runs out; anyone else keeps holding it and we give up.
            await self.mirror.acquire_leadership(wait=self.mirror.ttl + 2 if wait else 0)
        except LeaderHeld as e:
            self.mirror = None
            raise AlreadyRunning(str(e)) from None
        except MirrorError as e:
            if "authentication failed" in str(e):  # etcd answers, but not to us: not "not up yet"
                self.mirror = None
                raise DynamoLaunchError(f"{e}: this daemon's etcd credentials (in {self.plan.state_dir}/credentials, "
                                        "or ETCD_AUTH_* of an external etcd) are not the ones this etcd was set up "
                                        "with") from None
            self._log.info("etcd not reachable yet: mirroring starts once it is", reason=str(e))
            self.mirror.start()
        try:
            auth = secrets.resolve(tuple(Env(k, v) for k, v in self.inv.nats_auth))
            ca = credentials.nats_client_ca(self.inv)
            if ca is not None:
                auth["NATS_TLS_CA_CERT_PATH"] = ca
        except SecretError as e:  # preflight names it; events simply go unsent
            self._log.warning("NATS credentials unavailable: events are not published", reason=str(e))
            auth = {}
        self.bus = EventBus(self.plan.cluster, self.plan.nats_url, auth=auth, starting=self.inv.nats.external is None)
        self.bus.start()

    def _on_conflict(self, e: LeaderHeld) -> None:
        self._notify("", Notify("leader-conflict", str(e)))

    def _take_lock(self) -> None:
        """Make (or check) the state directory and lock it. Both must be ours alone: a state
        directory another user made first, or a lock file planted as a symlink, is refused before
        anything is read, written or started."""
        path = os.path.join(self.plan.state_dir, "daemon.lock")
        try:
            private_dir(self.plan.state_dir, 0o700, "state_dir")
            fd = open_private(path, os.O_RDWR | os.O_CREAT, 0o600, "lock file")
        except Unsafe as e:
            raise UnsafePath(f"{self.plan.head}: {e}") from None
        except OSError as e:
            raise UnsafePath(f"{self.plan.head}: lock file {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(f"a dynamo-launch daemon (pid {holder}) already supervises cluster "
                                 f"{self.plan.cluster!r} from {self.plan.state_dir}; use `dynamo-launch status`") from None
        with contextlib.suppress(OSError):  # the pid is for the message above; a full disk must not stop a `down`
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _load_state(self) -> dict[str, Any] | None:
        try:
            saved = self.state.load()
        except ValueError as e:
            raise DynamoLaunchError(str(e)) from None
        if saved and saved.get("cluster") not in (None, self.plan.cluster):
            raise DynamoLaunchError(f"{self.state.path} belongs to cluster {saved.get('cluster')!r}, not "
                                    f"{self.plan.cluster!r}: give each cluster its own state_dir")
        return saved

    async def _connect_all(self) -> dict[str, str]:
        """Connect to every host in parallel (retrying as the transport does): why each host that
        cannot be reached cannot."""
        hosts = [h.name for h in self.plan.hosts]
        results = await asyncio.gather(*(self.transports[h].connect() for h in hosts), return_exceptions=True)
        return {h: str(r) or type(r).__name__ for h, r in zip(hosts, results) if isinstance(r, Exception)}

    async def _open_links(self, hosts: list | None = None, *, strict: bool = True) -> list:
        """Connect to ``hosts`` (all) in parallel and start their agents. A failure raises, or
        with ``strict=False`` drops that host's link: ``(host, error)`` of those that failed is returned."""
        hosts = list(self.plan.hosts) if hosts is None else hosts
        for h in hosts:
            self.links[h.name] = self._link(h)
        results = await asyncio.gather(*(self.links[h.name].open() for h in hosts), return_exceptions=True)
        failed = []
        for h, r in zip(hosts, results):
            if not isinstance(r, BaseException):
                continue
            if strict:
                raise r if isinstance(r, DynamoLaunchError) else DynamoLaunchError(str(r))
            await self.links.pop(h.name).close()
            failed.append((h, r))
        return failed

    def _link(self, host: PlanHost) -> HostLink:
        return HostLink(host, self.transports[host.name], self.plan.state_dir, on_event=self._on_agent_event,
                        on_lost=self._on_lost, on_back=self._on_back)

    async def _stop_records(self, victims: list[tuple[str, dict[str, Any]]]) -> None:
        """Stop live copies that cannot be adopted (TERM, then KILL), and wait until they are gone."""
        for host, r in victims:
            self._log.warning("stopping a copy that cannot be adopted", host=host, process=r.get("name"),
                              pid=r.get("pid"), launch_id=r.get("launch_id"), generation=r.get("generation"))
        for sig, wait in (("TERM", 10.0), ("KILL", 5.0)):
            left = []
            for host, r in victims:
                with contextlib.suppress(DynamoLaunchError):
                    await self.links[host].call("signal", name=str(r["name"]), pid=int(r["pid"]),
                                                start_time=r.get("start_time"), signal=sig)
            deadline = time.monotonic() + wait
            while victims and time.monotonic() < deadline:
                left = []
                for host, r in victims:
                    alive = {(x["name"], x["pid"]) for x in await self.links[host].records() if x.get("alive")}
                    if (r["name"], r["pid"]) in alive:
                        left.append((host, r))
                victims = left
                if victims:
                    await asyncio.sleep(0.2)
            if not victims:
                return

    # --- running ----------------------------------------------------------------------------------------

    async def serve(self, *, control: bool = True, live: Show | None = None) -> StopReport:
        """Supervise until :meth:`request_stop` (a signal, or ``down`` through the socket).

        While processes are not ready yet, ``live`` is called about twice a second with what to
        draw them from (a terminal's block); without it each is logged (``not ready yet``) every 30 s."""
        assert self.runner is not None
        self._stopped = asyncio.get_running_loop().create_future()
        if control:
            self._control = ControlServer(socket_path(self.plan.cluster), functools.partial(handle, self),
                                          on_error=lambda m: self._log.error("control request failed", error=m))
            await self._control.start()
            await self._start_metrics()
        settle = asyncio.create_task(self._settled(), name="bring-up")
        watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
        progress = Progress(self.runner)
        shown = asyncio.create_task(progress.live(live) if live else progress.log(self._log), name="progress")
        try:
            await self._stop.wait()
            settle.cancel()
            watchdog.cancel()
            shown.cancel()
            try:  # its block gone before the stop's lines
                await shown
            except asyncio.CancelledError:
                pass
            except Exception:  # a fault of the display must not stand in the stop's way
                self._log.exception("progress display failed")
            report = await self.shutdown()
        except BaseException as e:
            shown.cancel()
            if isinstance(e, Exception):
                self._stopped.set_exception(e)
                self._stopped.exception()  # retrieved: a `down` caller may never come
            else:
                self._stopped.cancel()
            raise
        self._stopped.set_result(report)
        await asyncio.sleep(0.2)  # let a `down` caller read its answer before the socket goes
        if self._control is not None:
            await self._control.close()
        if self._metrics is not None:
            await self._metrics.close()
        return report

    async def _start_metrics(self) -> None:
        """Serve ``/metrics`` on ``[cluster] metrics`` (unless ""); a busy port is logged, not fatal."""
        bind = split_hostport(self.inv.cluster.metrics) if self.inv.cluster.metrics else None
        if bind is None:
            return
        # Here, not at the top: `down` builds a Daemon too, and only a serving daemon needs
        # prometheus-client (tests/unit/test_metrics.py checks no other command imports it).
        from ..metrics import MetricsServer, registry

        reg = registry(lambda: snapshot(self), dynamo_version=self.inv.cluster.dynamo_version,
                       loop=asyncio.get_running_loop())
        server = MetricsServer(bind[0], bind[1], reg,
                               on_error=lambda m: self._log.error("metrics scrape failed", error=m))
        try:
            await server.start()
        except OSError as e:
            self._log.warning("metrics endpoint not served", address=self.inv.cluster.metrics, reason=str(e))
            return
        self._metrics = server
        self._log.info("metrics served", url=f"http://{self.inv.cluster.metrics}/metrics")

    async def _settled(self) -> None:
        """Bring-up (or adoption) is over once every process is ready, running, failed, stopped or
        UNKNOWN (its host does not answer):
        note how long it took and tell systemd (READY=1). A FAILED process counts as settled, so
        one broken worker cannot hold the whole unit in "activating"."""
        assert self.runner is not None
        settled = (State.READY, State.RUNNING, State.FAILED, State.STOPPED, State.UNKNOWN)
        await self.runner.wait_for(lambda: all(p.machine.state in settled for p in self.runner.procs.values()))
        self.timings["up_seconds"] = round(time.time() - self.started, 3)
        counts = collections.Counter(p.machine.state.name for p in self.runner.procs.values())
        self._log.info("bring-up done", seconds=self.timings["up_seconds"], **{k.lower(): v for k, v in counts.items()})
        self.notifier.ready(self.status_line())  # `systemctl start` returns now: the cluster is up

    def status_line(self) -> str:
        """One line for systemd's STATUS=: ``12/12 ready, 0 failed, 0 unknown``."""
        assert self.runner is not None
        states = collections.Counter(p.machine.state for p in self.runner.procs.values())
        up = states[State.READY] + states[State.RUNNING]
        return (f"{up}/{len(self.runner.procs)} ready, {states[State.FAILED]} failed, "
                f"{states[State.UNKNOWN]} unknown, {sum(1 for x in self.links.values() if not x.up)} hosts unreachable")

    async def _watchdog(self) -> None:
        """WATCHDOG=1 only while the supervision loop turns; STATUS= with the counts."""
        assert self.runner is not None
        interval = self.notifier.watchdog_interval() or 5.0
        while True:
            if await self.runner.ping(interval):
                self.notifier.watchdog()
            self.notifier.status(self.status_line())
            await asyncio.sleep(interval)

    async def _let_go_of_etcd_and_nats(self) -> None:
        """Release the leader key (after a last status write) and flush the queued events, within
        :data:`LET_GO_TIMEOUT`: bounded without relying on the clients honouring cancellation, so
        a NATS or etcd client stuck in its own close never holds a stop (or `down`)."""
        let_go = asyncio.create_task(self._close_clients(), name="let-go")
        if not (await asyncio.wait({let_go}, timeout=LET_GO_TIMEOUT))[0]:
            let_go.cancel()
            self.mirror = self.bus = None
            self._log.warning("etcd/NATS clients did not close in time; leaving them behind", seconds=LET_GO_TIMEOUT)

    async def _close_clients(self) -> None:
        if self.mirror is not None:
            await self.mirror.close()
            self.mirror = None
        if self.bus is not None:
            await self.bus.close(timeout=2.0 if self.bus.state().get("connected") else 0.0)
            self.bus = None

    def request_stop(self) -> None:
        """Ask :meth:`serve` to stop everything and return (signal handlers call this)."""
        if not self._stop.is_set():
            self.notifier.stopping(f"stopping {len(self.plan.processes)} processes")
        self._stop.set()

    async def shutdown(self, reason: str = "down") -> StopReport:
        """Stop every process in reverse dependency order, verify, forget the launch if clean."""
        assert self.runner is not None
        self._log.info("stopping every process", reason=reason)
        if self._reload_task is not None and not self._reload_task.done():  # its next step would start things
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reload_task
        # NATS and etcd last, and only once the leader key is released and the events flushed:
        # stopped first, the next `up` would find this daemon's key in etcd's data and wait it out.
        t0 = time.monotonic()
        infra = {n for n, p in self.runner.procs.items() if p.spec.kind in ("nats", "etcd")}
        unknown = await self.runner.stop_all(reason, only=set(self.runner.procs) - infra)
        self._log.info("workers stopped", seconds=round(time.monotonic() - t0, 1), unknown=unknown)
        await self._let_go_of_etcd_and_nats()
        unknown += await self.runner.stop_all(reason, only=infra)
        report = StopReport(stopped=sorted(n for n in self.runner.procs if n not in unknown), unknown=unknown)
        for name, link in self.links.items():
            if not link.up:
                continue
            left = await self._sweep(link)
            if left:
                report.leftovers[name] = left
        self._log.info("swept the hosts", seconds=round(time.monotonic() - t0, 1), leftovers=report.leftovers)
        self.save()
        if report.clean:
            for link in self.links.values():
                for p in self.plan.on_host(link.name):
                    with contextlib.suppress(DynamoLaunchError):
                        await link.call("forget", name=p.name)
            self.state.remove()
        await self.close()
        self._log.info("stopped", clean=report.clean, unknown=report.unknown, leftovers=report.leftovers)
        return report

    async def _sweep(self, link: HostLink) -> list[int]:
        """Kill whatever still carries the launch id on ``link``'s host; the pids that survive."""
        for _ in range(3):
            try:
                found = await link.call("scan", launch_id=self.launch_id)
            except DynamoLaunchError:
                return []
            if not found:
                return []
            self._log.warning("processes of the launch still running after stop: killing", host=link.name,
                              pids=[f["pid"] for f in found])
            with contextlib.suppress(DynamoLaunchError):
                await link.call("kill_scan", launch_id=self.launch_id, signal="KILL", exclude=[])
            await asyncio.sleep(0.5)
        return [int(f["pid"]) for f in await link.call("scan", launch_id=self.launch_id)]

    async def down(self) -> StopReport:
        """Stop a cluster no daemon supervises: adopt what runs, then stop it all."""
        await self.prepare(preflight=False, start=False)
        return await self.shutdown("down")

    async def close(self) -> None:
        """Let go of everything (processes on the nodes keep running)."""
        if self._save_retry is not None:
            self._save_retry.cancel()
            self._save_retry = None
        if self.runner is not None:
            await self.runner.close()
        await self._let_go_of_etcd_and_nats()
        await asyncio.gather(*(link.close() for link in self.links.values()), return_exceptions=True)
        for t in self.transports.values():
            with contextlib.suppress(Exception):
                await t.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def request_reload(self) -> None:
        """Re-read the inventory and apply the difference (SIGHUP); a bad file changes nothing."""
        if self.runner is None:
            return
        if self._reload_task is not None and not self._reload_task.done():
            self._log.warning("a reload or restart is in progress: reload ignored")
            return
        self._reload_task = asyncio.create_task(self._reload_logged(), name="reload")

    async def _reload_logged(self, path: str | None = None, all_at_once: bool = False) -> reload.Outcome:
        try:
            return await self.reload(path, all_at_once=all_at_once)
        except DynamoLaunchError as e:
            self._notify("", Notify("reload-failed", f"reload failed: {e}"))
            self.notifier.ready(self.status_line())
            return reload.Outcome(halted=str(e))

    def diff(self, path: str | None = None, *, all_at_once: bool = False) -> tuple[Plan, Inventory, PlanDiff]:
        """The new plan of ``path`` (default: the inventory in use) and its difference
        (``all_at_once``: in steps of whole groups)."""
        path = os.path.abspath(path or self.inventory_path)
        try:
            inv, plan = load_plan(path)
        except InventoryError as e:
            raise DynamoLaunchError(f"{path}: not reloaded, nothing changed:\n" + str(e)) from None
        for what in ("cluster", "state_dir", "head"):
            if getattr(plan, what) != getattr(self.plan, what):
                raise DynamoLaunchError(f"{path}: {what} changed ({getattr(self.plan, what)!r} → "
                                        f"{getattr(plan, what)!r}): that needs `down` then `up`; nothing changed")
        return plan, inv, diff_plans(self.plan, plan, all_at_once=all_at_once)

    async def reload(self, path: str | None = None, *, all_at_once: bool = False) -> reload.Outcome:
        """Apply the re-read inventory: see :func:`~dynamo_launch.daemon.reload.apply`."""
        assert self.runner is not None
        plan, inv, d = self.diff(path, all_at_once=all_at_once)
        started = time.monotonic()
        self.notifier.reloading(f"reloading: {len(d.changed)} to restart")
        self._notify("", Notify("reload", f"reload: {len(d.added)} new, {len(d.removed)} removed, "
                                          f"{len(d.changed)} changed, {len(d.unchanged)} unchanged",
                                {"added": list(d.added), "removed": list(d.removed), "changed": list(d.changed)}))
        new_hosts = [h for h in plan.hosts if h.name not in self.links]
        for h in new_hosts:
            self.transports[h.name] = make_transport(h, accept_new_host_keys=self.accept_new_host_keys)
        await self._open_links(new_hosts)
        outcome, running = await reload.apply(self.runner, plan, d)
        if not outcome.halted:
            for name in [n for n in self.links if n not in {h.name for h in plan.hosts}]:
                await self.links.pop(name).close()
        self.plan, self.inv = running, inv
        self.inventory_path = os.path.abspath(path or self.inventory_path)
        self.save()
        self.timings["reload_seconds"] = round(time.monotonic() - started, 3)
        self.timings["reloads"] += 1
        if outcome.halted:
            self._notify("", Notify("reload-halted", f"reload halted: {outcome.halted} (fix it, then reload again: "
                                                     "the rest is taken then)", {"halted": outcome.halted}))
        else:
            self._notify("", Notify("reloaded", f"reload done in {self.timings['reload_seconds']:.1f}s"))
        self.notifier.ready(self.status_line())
        return outcome

    # --- state, events, control ------------------------------------------------------------------------

    def _records_changed(self) -> None:
        """Save once per turn of the event loop, however many copies changed in it: a bring-up
        starts hundreds, and each save writes (fsync) every record and mirrors the status.
        The callback runs before the queued events of those changes are applied."""
        if not self._save_pending:
            self._save_pending = True
            asyncio.get_running_loop().call_soon(self._save_soon)

    def _save_soon(self) -> None:
        self._save_pending = False
        self.save()

    def _probe_state(self, saved: dict[str, Any] | None) -> None:
        """Refuse to start when the state directory cannot take the state file (full, read-only)."""
        size = len(json.dumps(saved or {})) + 1024 * (len(self.plan.processes) + 4)  # a generous state
        try:
            self.state.probe(size)
        except OSError as e:
            raise StateUnwritable(f"cannot write the state file {self.state.path}: {e.strerror or e}; "
                                  "nothing was started (free space or fix the directory, then run up again)") from None

    def save(self) -> None:
        """Write the state file: the launch id and every process's current copy.

        A write that fails (a full or read-only disk) does not stop supervision: it is an event
        and a line in ``status``, and is retried every :data:`SAVE_RETRY` seconds until one works."""
        procs = {}
        if self.runner is not None:
            for name, p in self.runner.procs.items():
                if p.record is not None:
                    procs[name] = {"host": p.spec.host, **{k: p.record.get(k) for k in
                                   ("pid", "start_time", "boot_id", "generation", "started_at", "exit")}}
        try:
            self.state.save({"cluster": self.plan.cluster, "launch_id": self.launch_id,
                             "inventory": self.inventory_path, "daemon_pid": os.getpid(), "processes": procs,
                             "supervision": self.runner.supervision() if self.runner is not None else {}})
        except OSError as e:
            self._save_failed(e)
        else:
            self._save_worked()
        self._mirror()

    def _save_failed(self, e: OSError) -> None:
        reason = f"cannot write {self.state.path}: {e.strerror or e}"
        if self.save_error is None or self.save_error["error"] != reason:
            self.save_error = {"error": reason, "since": time.time()}
            self._notify("", Notify("state-unsaved", f"{reason}; supervision goes on, a daemon restart now "
                                                     f"would not know the latest copies (retried every {SAVE_RETRY:g}s)"))
        if self._save_retry is None and not self._stop.is_set():
            self._save_retry = asyncio.get_running_loop().call_later(SAVE_RETRY, self._retry_save)

    def _retry_save(self) -> None:
        self._save_retry = None
        self.save()

    def _save_worked(self) -> None:
        if self.save_error is not None:
            self._notify("", Notify("state-saved", f"state file written again after "
                                                   f"{time.time() - self.save_error['since']:.0f}s"))
            self.save_error = None

    def _mirror(self) -> None:
        if self.mirror is not None and self.runner is not None:
            self.mirror.publish(snapshot(self))

    def _notify(self, name: str, n: Notify) -> None:
        self._seq += 1
        proc = self.runner.procs.get(name) if self.runner is not None else None
        host = proc.spec.host if proc is not None else n.data.get("host")
        event = {"seq": self._seq, "time": time.time(), "kind": n.kind, "process": name, "host": host,
                 "message": n.message, **{k: v for k, v in n.data.items() if k not in ("host",)}}
        self.events.append(event)
        if self.bus is not None:
            self.bus.publish(event)
        if name == "etcd" and n.kind == "ready" and self.mirror is not None:
            self.mirror.retry_now()  # take the leader key now, before the rest of the cluster starts
        self._mirror()
        level = "warning" if n.kind in ("failed", "gang-failed", "unhealthy", "host-unreachable", "spawn-failed",
                                        "deregister-skipped") else "info"
        generation = proc.machine.generation if proc is not None else n.data.get("generation")
        getattr(self._log, level)(n.message, kind=n.kind, host=host, process=name or None, generation=generation)

    def _on_agent_event(self, host: str, event: dict[str, Any]) -> None:
        if self.runner is not None:
            self.runner.on_agent_event(host, event)

    def _on_lost(self, host: str, why: str) -> None:
        if self.runner is not None:
            self.runner.on_host_lost(host, why)

    async def _on_back(self, host: str, records: list[dict[str, Any]]) -> None:
        if self.runner is not None:
            await self.runner.on_host_back(host, records)

    def start_reload(self, path: str | None = None, *,
                     all_at_once: bool = False) -> tuple[PlanDiff, list[str], asyncio.Task]:
        """Begin a reload of ``path`` (default: the inventory in use) in the background: what it
        will change, what it leaves unavailable meanwhile (:func:`~dynamo_launch.daemon.reload.unavailable`),
        and the task (its result: the :class:`~dynamo_launch.daemon.reload.Outcome`). A bad file,
        or a rollout in progress, raises and changes nothing."""
        plan, _, d = self.diff(path, all_at_once=all_at_once)
        self._no_rollout_running()
        notes = self._unavailable(list(d.units), plan.processes)
        self._reload_task = asyncio.create_task(self._reload_logged(path, all_at_once), name="reload")
        return d, notes, self._reload_task

    def start_restart(self, target: str, *,
                      all_at_once: bool = False) -> tuple[list[tuple[str, ...]], list[str], asyncio.Task]:
        """Begin restarting ``target`` (a process, gang or group) in steps (:func:`~dynamo_launch.plan.diff.steps`):
        the steps, what they leave unavailable meanwhile, and the task (as :meth:`start_reload`)."""
        assert self.runner is not None
        names = self.runner.resolve(target)
        self._no_rollout_running()
        units = steps([p.spec for n, p in self.runner.procs.items() if n in names], all_at_once=all_at_once)
        self._notify("", Notify("restart", f"restart {target}: {len(units)} step(s)", {"steps": [list(u) for u in units]}))
        notes = self._unavailable(units, [p.spec for p in self.runner.procs.values()])
        self._reload_task = asyncio.create_task(self._restart_logged(target, units), name="restart")
        return units, notes, self._reload_task

    def _unavailable(self, units: list[tuple[str, ...]], specs: Any) -> list[str]:
        notes = reload.unavailable(units, specs)
        for note in notes:
            self._notify("", Notify("rollout", note))
        return notes

    async def _restart_logged(self, target: str, units: list[tuple[str, ...]]) -> reload.Outcome:
        assert self.runner is not None
        outcome = await reload.restart(self.runner, units)
        if outcome.halted:
            self._notify("", Notify("restart-halted", f"restart {target} halted: {outcome.halted}",
                                    {"halted": outcome.halted}))
        else:
            self._notify("", Notify("restarted", f"restart {target} done: {len(units)} step(s)"))
        return outcome

    def _no_rollout_running(self) -> None:
        if self._reload_task is not None and not self._reload_task.done():
            raise DynamoLaunchError(f"a {self._reload_task.get_name()} is in progress: wait for it "
                                    "(`dynamo-launch events -f`), then try again")

    async def stop_and_wait(self) -> StopReport:
        """Ask :meth:`serve` to stop everything and wait for its report (``down`` through the socket)."""
        self.request_stop()
        assert self._stopped is not None
        return await asyncio.shield(self._stopped)

    def events_since(self, seq: int) -> list[dict[str, Any]]:
        """The kept events after sequence number ``seq``."""
        return [e for e in self.events if e["seq"] > seq]

    async def read_log(self, name: str, *, lines: int | None = None, offset: int | None = None,
                       max_bytes: int = 1 << 20) -> dict[str, Any]:
        """The last ``lines`` of process ``name``'s log, or (``offset``) the bytes from there on."""
        if self.runner is None or name not in self.runner.procs:
            raise DynamoLaunchError(f"no process called {name!r}")
        spec = self.plan.process(name)
        link = self.links[spec.host]
        if offset is not None:
            return await link.call("read", path=spec.log_file, offset=offset, max_bytes=max_bytes)
        return await link.call("tail", path=spec.log_file, lines=100 if lines is None else lines)


def _believed_running(saved: dict[str, Any] | None, hosts: Mapping[str, str]) -> dict[str, list[dict[str, Any]]]:
    """For ``hosts`` that do not answer: the copies the state file says run there, as records."""
    out: dict[str, list[dict[str, Any]]] = {h: [] for h in hosts}
    for name, r in ((saved or {}).get("processes") or {}).items():
        if r.get("host") in out and r.get("pid") and not r.get("exit"):
            out[r["host"]].append({**r, "name": name, "launch_id": saved.get("launch_id"), "alive": True})  # type: ignore[union-attr]
    return out
