"""The typed, frozen inventory model that the loader produces and the planner reads.

Everything here is plain data: no parsing, no I/O. Every key's default is the default of its
field here, and only here: the loader, the planner and the state machines read it from these
classes (``Restart.stop_timeout``, ``Health.interval``, …) instead of restating it.
"""

from __future__ import annotations

import enum
import functools
import posixpath
from dataclasses import dataclass, field

from .versions import SUPPORTED_DYNAMO_VERSIONS

CREDENTIALS_DIR = "credentials"
"""Where, under the state directory on the head, the daemon keeps the credentials it generates (0700; files 0600)."""

TLS_DIR = "tls"
"""Where, under the state directory on every node, the agent writes the TLS files a process there
needs (0700; files 0600), from the head's copies, at each spawn."""

TLS_FILES = {"ETCD_AUTH_CA": "etcd-ca.pem", "ETCD_AUTH_CLIENT_CERT": "etcd-client.pem",
             "ETCD_AUTH_CLIENT_KEY": "etcd-client-key.pem", "NATS_TLS_CA_CERT_PATH": "nats-ca.pem"}
"""The file, in :data:`TLS_DIR` on a node, behind each TLS variable Dynamo reads (a path)."""

ETCD_DYNAMO_USER = "dynamo"
"""The etcd user Dynamo processes authenticate as (the daemon itself is ``root``)."""

__all__ = [
    "CREDENTIALS_DIR",
    "ETCD_DYNAMO_USER",
    "TLS_DIR",
    "TLS_FILES",
    "WORKER_STARTUP_TIMEOUT",
    "Backend",
    "Cluster",
    "DpLoadBalancing",
    "EnvValue",
    "EtcdSettings",
    "Executor",
    "Frontend",
    "GenericProcess",
    "Health",
    "Host",
    "Inventory",
    "NatsSettings",
    "RayCluster",
    "Restart",
    "RestartPolicy",
    "Role",
    "SecretRef",
    "SshSettings",
    "WorkerGroup",
]


class Backend(str, enum.Enum):
    """Inference engine a worker group runs."""

    VLLM = "vllm"
    SGLANG = "sglang"
    TRTLLM = "trtllm"
    MOCKER = "mocker"


class Role(str, enum.Enum):
    """What a worker does in the Dynamo graph."""

    AGGREGATED = "aggregated"
    PREFILL = "prefill"
    DECODE = "decode"


class Executor(str, enum.Enum):
    """vLLM's distributed executor for a model that spans hosts."""

    MP = "mp"
    RAY = "ray"


class DpLoadBalancing(str, enum.Enum):
    """How a data-parallel replica that spans hosts spreads requests over its DP ranks.

    ``hybrid`` (the Dynamo operator's form, and what Dynamo 1.6.1's vLLM worker recommends):
    every node runs a full Dynamo worker serving its own local ranks, and Dynamo's router
    balances across them. ``internal``: only the leader is a Dynamo worker; vLLM's engine core
    there balances over every rank, the other nodes run ``--headless``.
    """

    HYBRID = "hybrid"
    INTERNAL = "internal"


class RestartPolicy(str, enum.Enum):
    """When the supervisor restarts a process that ended."""

    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


@dataclass(frozen=True)
class SecretRef:
    """A secret given by reference, resolved on the head at launch time.

    ``kind`` is ``"env"`` (``${NAME}``: the daemon's environment), ``"file"`` (``file:/path``:
    the file's content, trailing newline dropped) or ``"generated"`` (a credential the daemon
    generates once per cluster in ``<state_dir>/credentials/``, then read like a file; never
    written by the operator).
    """

    kind: str
    ref: str

    def __str__(self) -> str:
        if self.kind == "env":
            return f"${{{self.ref}}}"
        return f"{self.kind}:{self.ref}"


EnvValue = str | SecretRef
"""An environment value: a literal string, or a secret reference."""


@dataclass(frozen=True)
class SshSettings:
    """How the daemon reaches a host over SSH (defaults, then per-host overrides)."""

    user: str = "root"
    port: int = 22
    key_file: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    connect_timeout: float = 10.0
    keepalive_interval: float = 5.0
    keepalive_count_max: int = 3


@dataclass(frozen=True)
class Host:
    """One machine of the cluster."""

    name: str
    address: str
    gpus: int
    ssh: SshSettings
    local: bool = False
    python: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, EnvValue], ...] = ()  # this host's processes only; over [env], under a group's env
    network_interface: str | None = None  # overrides the cluster's: the NIC ranks talk over here


@dataclass(frozen=True)
class Restart:
    """Restart policy and backoff for a process or gang (DESIGN §4)."""

    policy: RestartPolicy = RestartPolicy.ALWAYS
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    reset_after: float = 600.0
    max_restarts: int = 5
    restart_window: float = 600.0
    stop_timeout: float = 30.0


WORKER_STARTUP_TIMEOUT = 7200.0
"""A worker group's default ``health.startup_timeout``: loading a 405B/671B model takes far longer
than any other process needs to come up (the Dynamo operator gives workers 2 h); every other
process keeps :attr:`Health.startup_timeout`."""


@dataclass(frozen=True)
class Health:
    """Readiness and liveness settings.

    ``check`` is ``auto`` (the recipe's natural probe), ``process``, ``tcp``,
    ``http`` or ``command``; ``port``/``path``/``command`` feed the explicit kinds.
    """

    check: str = "auto"
    port: int | None = None
    path: str = "/health"
    command: tuple[str, ...] = ()
    startup_timeout: float = 600.0
    start_secs: float = 1.0
    interval: float = 5.0
    timeout: float = 3.0
    failure_threshold: int = 3


@dataclass(frozen=True)
class NatsSettings:
    """NATS server on the head, or an external endpoint.

    ``bind`` is the address nats-server listens on (default: the head's address). ``token``, or
    ``user`` + ``password``, turn on authentication: the server requires them and every Dynamo
    process gets them (:attr:`auth`); secrets are references only.
    """

    port: int = 4222
    monitor_port: int = 8222
    store_dir: str | None = None
    external: str | None = None
    binary: str = "nats-server"
    bind: str | None = None
    token: SecretRef | None = None
    user: EnvValue | None = None
    password: SecretRef | None = None
    tls: bool = False
    restart: Restart = Restart()
    health: Health = Health()

    @property
    def auth(self) -> tuple[tuple[str, EnvValue], ...]:
        """The credentials as Dynamo reads them (``NATS_AUTH_TOKEN`` or ``NATS_AUTH_USERNAME``/``_PASSWORD``)."""
        if self.token is not None:
            return (("NATS_AUTH_TOKEN", self.token),)
        if self.user is not None and self.password is not None:
            return (("NATS_AUTH_USERNAME", self.user), ("NATS_AUTH_PASSWORD", self.password))
        return ()


@dataclass(frozen=True)
class EtcdSettings:
    """etcd on the head, or an external endpoint.

    ``tls``: the etcd the launcher runs serves https with a certificate of the cluster's
    generated CA. ``ca``/``cert``/``key`` (references only): an external ``https://`` etcd's CA
    and the client certificate and key it may require.
    """

    client_port: int = 2379
    peer_port: int = 2380
    data_dir: str | None = None
    external: str | None = None
    binary: str = "etcd"
    tls: bool = False
    ca: SecretRef | None = None
    cert: SecretRef | None = None
    key: SecretRef | None = None
    restart: Restart = Restart()
    health: Health = Health()


@dataclass(frozen=True)
class Frontend:
    """The Dynamo HTTP frontend (OpenAI-compatible API)."""

    host: str
    http_port: int = 8000
    bind: str | None = None  # the API's listening address; None: the host's own (not every interface)
    router_mode: str = "kv"
    migration_limit: int | None = None  # None: MIGRATION_LIMIT when more than one worker replica serves, else off
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, EnvValue], ...] = ()
    restart: Restart = Restart()
    health: Health = Health()


MIGRATION_LIMIT = 3
"""The frontend's ``--migration-limit`` when ``[frontend] migration_limit`` is not set and more than
one worker replica is behind it: a request whose worker dies is retried on another up to 3 times."""


@dataclass(frozen=True)
class WorkerGroup:
    """A set of identical model replicas of one backend and role."""

    name: str
    backend: Backend
    role: Role
    model: str
    hosts: tuple[str, ...]
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    replicas: int | None = None
    executor: Executor = Executor.MP
    master_port: int = 29500
    ray_port: int = 6379
    dp_rpc_port: int = 13445
    dp_load_balancing: DpLoadBalancing = DpLoadBalancing.HYBRID
    max_unavailable: int = 1  # replicas (a gang counts as one) a rolling restart or reload takes down at once
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, EnvValue], ...] = ()
    restart: Restart = Restart()
    health: Health = Health()

    @property
    def world_size(self) -> int:
        """GPUs one data-parallel rank needs: TP × PP."""
        return self.tensor_parallel_size * self.pipeline_parallel_size


@dataclass(frozen=True)
class RayCluster:
    """A bare Ray cluster for the operator's own Ray workloads."""

    head: str
    workers: tuple[str, ...]
    port: int = 6379
    num_cpus: int | None = None
    num_gpus: int | None = None
    object_store_memory: int | None = None
    extra_args: tuple[str, ...] = ()
    head_args: tuple[str, ...] = ()  # the head's `ray start` only (e.g. --dashboard-host)
    worker_args: tuple[str, ...] = ()  # every worker's `ray start` only
    env: tuple[tuple[str, EnvValue], ...] = ()
    restart: Restart = Restart()
    health: Health = Health()


@dataclass(frozen=True)
class GenericProcess:
    """A process given by its full command, run on one or more hosts."""

    name: str
    hosts: tuple[str, ...]
    command: tuple[str, ...]
    cwd: str | None = None
    env: tuple[tuple[str, EnvValue], ...] = ()
    depends_on: tuple[str, ...] = ()
    gang: str | None = None
    dynamo: bool = False
    restart: Restart = Restart()
    health: Health = Health()


@dataclass(frozen=True)
class Cluster:
    """Cluster-wide settings.

    ``metrics`` is ``host:port`` of the daemon's Prometheus endpoint (``[::1]:9400`` for IPv6),
    or ``""``: none. ``network_interface`` names the interface that carries the hosts'
    ``address``es: multi-node ranks bind gloo/NCCL to it (a host can override it).
    """

    name: str
    head: str
    state_dir: str
    python: str = "python3"
    dynamo_version: str = SUPPORTED_DYNAMO_VERSIONS[-1]
    system_port: int = 9090
    vllm_cache_root: str | None = None
    metrics: str = "127.0.0.1:9400"
    network_interface: str | None = None  # the NIC cross-node ranks use (GLOO/NCCL_SOCKET_IFNAME)


@dataclass(frozen=True)
class Inventory:
    """A whole validated inventory: the only input of the planner."""

    source: str
    cluster: Cluster
    ssh: SshSettings
    hosts: tuple[Host, ...]
    nats: NatsSettings
    etcd: EtcdSettings
    env: tuple[tuple[str, EnvValue], ...] = ()
    frontend: Frontend | None = None
    workers: tuple[WorkerGroup, ...] = ()
    ray: RayCluster | None = None
    processes: tuple[GenericProcess, ...] = field(default=())

    def host(self, name: str) -> Host:
        """The host called ``name`` (validated inventories always have it)."""
        return self._hosts_by_name[name]

    @functools.cached_property
    def _hosts_by_name(self) -> dict[str, Host]:
        # The planner looks hosts up per process: a linear scan made plans of hundreds of hosts
        # quadratic. First entry wins, as the scan did (duplicates are a validation problem).
        return {h.name: h for h in reversed(self.hosts)}

    def network_interface(self, host: str) -> str | None:
        """The interface ranks on ``host`` talk over: the host's own, else the cluster's."""
        return self.host(host).network_interface or self.cluster.network_interface

    @property
    def head(self) -> Host:
        """The head host: NATS, etcd and the daemon live here."""
        return self.host(self.cluster.head)

    def generated(self, name: str) -> SecretRef:
        """The credential ``name`` the daemon generates in ``<state_dir>/credentials/`` (see :attr:`nats_auth`)."""
        return SecretRef("generated", posixpath.join(self.cluster.state_dir, CREDENTIALS_DIR, name))

    @property
    def nats_auth(self) -> tuple[tuple[str, EnvValue], ...]:
        """NATS credentials every Dynamo process gets: the inventory's, else — for the NATS the
        launcher runs — a generated token (an external NATS keeps the operator's settings)."""
        if self.nats.auth or self.nats.external is not None:
            return self.nats.auth
        return (("NATS_AUTH_TOKEN", self.generated("nats-token")),)

    @property
    def etcd_auth(self) -> tuple[tuple[str, EnvValue], ...]:
        """etcd credentials every Dynamo process gets (``ETCD_AUTH_USERNAME``/``_PASSWORD``, as
        Dynamo reads them) for the etcd the launcher runs, which has auth enabled; none for an
        external etcd (the operator passes its own in ``[env]``)."""
        if self.etcd.external is not None:
            return ()
        return (("ETCD_AUTH_USERNAME", ETCD_DYNAMO_USER), ("ETCD_AUTH_PASSWORD", self.generated("etcd-dynamo-password")))

    @property
    def etcd_root(self) -> SecretRef | None:
        """The generated password of etcd's ``root`` user (the daemon's own client); None for an external etcd."""
        return None if self.etcd.external is not None else self.generated("etcd-root-password")

    @property
    def cluster_ca(self) -> SecretRef:
        """The certificate of the CA the daemon generates for the cluster (``[etcd]``/``[nats]`` ``tls``)."""
        return self.generated("ca.pem")

    @property
    def server_cert(self) -> tuple[SecretRef, SecretRef]:
        """The head's generated server certificate and key (etcd and NATS with ``tls``)."""
        return self.generated("server.pem"), self.generated("server-key.pem")

    @property
    def etcd_tls(self) -> tuple[tuple[str, SecretRef], ...]:
        """The TLS files every etcd client gets, by the variable Dynamo reads each from
        (``ETCD_AUTH_CA``, ``_CLIENT_CERT``, ``_CLIENT_KEY``): the cluster CA for the etcd the
        launcher runs with ``tls``; an external etcd's ``ca``/``cert``/``key``."""
        e = self.etcd
        if e.external is None:
            return (("ETCD_AUTH_CA", self.cluster_ca),) if e.tls else ()
        given = (("ETCD_AUTH_CA", e.ca), ("ETCD_AUTH_CLIENT_CERT", e.cert), ("ETCD_AUTH_CLIENT_KEY", e.key))
        return tuple((name, ref) for name, ref in given if ref is not None)

    @property
    def nats_tls(self) -> tuple[tuple[str, SecretRef], ...]:
        """The TLS files every NATS client gets (``NATS_TLS_CA_CERT_PATH``: the cluster CA) for the
        NATS the launcher runs with ``tls``."""
        return (("NATS_TLS_CA_CERT_PATH", self.cluster_ca),) if self.nats.tls and self.nats.external is None else ()
