"""Plan values: every process the launcher will run, as data (pure).

A :class:`ProcessSpec` says where a process runs, its exact argv and env, what
it waits for before starting, how its health is judged and how it is restarted.
Nothing here is a shell string: argv is a tuple, and secrets stay
:class:`~dynamo_launch.model.SecretRef` until the daemon resolves them.
"""

from __future__ import annotations

import enum
import functools
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..model import EnvValue, Health, Restart, SecretRef, SshSettings
from ..tomlpos import KeyPath

__all__ = ["Env", "Gang", "Gate", "Plan", "PlanHost", "ProcessSpec", "Probe", "ProbeKind", "Routing", "gangs_of", "work_dir"]


def work_dir(state_dir: str) -> str:
    """The working directory of a process whose inventory names none: ``<state_dir>/work``, made
    0700 by the node's agent. Not the state directory itself, nor anything another user could
    write: ``python -m`` puts the working directory first on ``sys.path``."""
    return posixpath.join(state_dir, "work")


class ProbeKind(str, enum.Enum):
    """How a probe decides health."""

    PROCESS = "process"  # alive (and, for readiness, alive for start_secs)
    TCP = "tcp"  # a TCP connect to address:port succeeds
    HTTP = "http"  # GET url answers 2xx
    COMMAND = "command"  # argv run on the host exits 0
    RAY_NODES = "ray-nodes"  # the Ray cluster at address:port has ≥ expect alive nodes
    RAY_NODE = "ray-node"  # the node at ``member`` is alive in the Ray cluster at address:port


@dataclass(frozen=True)
class Probe:
    """One health check. ``host`` is where a COMMAND or RAY_* probe runs.

    ``address``/``port`` are what is probed: the TCP endpoint, or the Ray cluster's GCS for the
    RAY_* kinds; ``url`` is the HTTP probe's URL; ``member`` the node address a RAY_NODE probe
    looks for. Interval, timeout and threshold default to :class:`~dynamo_launch.model.Health`'s.
    """

    kind: ProbeKind
    host: str = ""
    address: str = ""
    port: int | None = None
    url: str = ""
    command: tuple[str, ...] = ()
    expect: int = 0
    member: str = ""
    ca: str = ""  # HTTPS: the CA file (on the daemon's host) the server's certificate must chain to
    interval: float = Health.interval
    timeout: float = Health.timeout
    failure_threshold: int = Health.failure_threshold

    def describe(self) -> str:
        """One human line, e.g. ``GET http://10.0.0.1:8000/health → 2xx``."""
        if self.kind is ProbeKind.PROCESS:
            return "process alive"
        if self.kind is ProbeKind.TCP:
            return f"tcp {self.address}:{self.port} accepts"
        if self.kind is ProbeKind.HTTP:
            return f"GET {self.url} → 2xx"
        if self.kind is ProbeKind.COMMAND:
            return f"on {self.host}: {' '.join(self.command)} → exit 0"
        if self.kind is ProbeKind.RAY_NODES:
            return f"Ray at {self.address}:{self.port} has {self.expect} nodes alive"
        return f"{self.member} joined Ray at {self.address}:{self.port}"


@dataclass(frozen=True)
class Gate:
    """A start condition: ``process`` is READY, or ``probe`` passes."""

    process: str | None = None
    probe: Probe | None = None

    def describe(self) -> str:
        """``decode-0 ready`` or the probe's description."""
        return f"{self.process} ready" if self.process else (self.probe.describe() if self.probe else "")


@dataclass(frozen=True)
class Routing:
    """How the daemon tells that the frontend routes to a Dynamo worker, and which discovery
    instance the worker is (routing-aware readiness; removal of a dead instance).

    ``metrics_url`` is the worker's system-status ``/metrics``, whose ``worker_id`` label names its
    instance (the id of the etcd lease it registered under); ``frontend_url`` is the ``/health``
    of the frontend process ``frontend``, which lists every instance that frontend routes to.
    """

    metrics_url: str
    frontend: str = ""
    frontend_url: str = ""


@dataclass(frozen=True)
class Env:
    """One environment variable; ``value`` may be a secret reference."""

    name: str
    value: EnvValue

    @property
    def secret(self) -> bool:
        """True when the value must never be shown."""
        return isinstance(self.value, SecretRef)


@dataclass(frozen=True)
class ProcessSpec:
    """Everything about one process the launcher runs."""

    name: str
    host: str
    address: str
    kind: str
    argv: tuple[str, ...]
    env: tuple[Env, ...]
    cwd: str
    log_file: str
    readiness: Probe
    restart: Restart
    liveness: Probe | None = None
    depends_on: tuple[Gate, ...] = ()
    group: str | None = None
    leader: bool = False
    generation: int = 1
    startup_timeout: float = Health.startup_timeout
    start_secs: float = Health.start_secs
    gpus: tuple[int, ...] = ()
    never_give_up: bool = False
    origin: str = ""
    ports: tuple[tuple[int, KeyPath], ...] = field(default=(), compare=False)
    files: tuple[Env, ...] = ()
    """TLS files the node's agent writes (0600, in ``<state_dir>/tls/``) before each start: ``name``
    the path on the node, ``value`` the head's copy (a secret reference)."""
    max_unavailable: int = field(default=1, compare=False)
    """How many replicas of its inventory entry a rollout (reload, restart) takes down at once."""
    routing: Routing | None = field(default=None, compare=False)
    """A Dynamo worker's instance and the frontend that routes to it (derived: a moved frontend
    changes it, which restarts no worker)."""


@dataclass(frozen=True)
class Gang:
    """Processes that live and die together: a multi-node model replica."""

    name: str
    members: tuple[str, ...]
    restart: Restart


@dataclass(frozen=True)
class PlanHost:
    """A host as the transport needs it."""

    name: str
    address: str
    local: bool
    ssh: SshSettings
    python: str


@dataclass(frozen=True)
class Plan:
    """The whole launch: hosts, processes in start order, gangs."""

    cluster: str
    head: str
    state_dir: str
    nats_url: str
    etcd_url: str
    hosts: tuple[PlanHost, ...]
    processes: tuple[ProcessSpec, ...]
    gangs: tuple[Gang, ...]

    @property
    def work_dir(self) -> str:
        """The default working directory of processes (:func:`work_dir`)."""
        return work_dir(self.state_dir)

    def process(self, name: str) -> ProcessSpec:
        """The process called ``name``."""
        return self._by_name[name]

    def on_host(self, host: str) -> tuple[ProcessSpec, ...]:
        """Processes of ``host``, in start order."""
        return self._by_host.get(host, ())

    # Indexes built on first use (the plan is frozen): per-host and per-name lookups over all
    # processes made rendering and checking plans of hundreds of hosts quadratic.
    @functools.cached_property
    def _by_name(self) -> dict[str, ProcessSpec]:
        return {p.name: p for p in reversed(self.processes)}  # first wins, as a scan would

    @functools.cached_property
    def _by_host(self) -> dict[str, tuple[ProcessSpec, ...]]:
        grouped: dict[str, list[ProcessSpec]] = {}
        for p in self.processes:
            grouped.setdefault(p.host, []).append(p)
        return {host: tuple(procs) for host, procs in grouped.items()}


def gangs_of(processes: Iterable[ProcessSpec]) -> tuple[Gang, ...]:
    """The gangs ``processes`` form (their ``group``s), members in the order given; a gang's
    restart policy is its first member's."""
    members: dict[str, list[ProcessSpec]] = {}
    for p in processes:
        if p.group:
            members.setdefault(p.group, []).append(p)
    return tuple(Gang(name, tuple(p.name for p in ps), ps[0].restart) for name, ps in members.items())
