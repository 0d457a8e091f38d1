"""Inventory loading: TOML text → validated, frozen :class:`~dynamo_launch.model.Inventory`.

Every problem is collected and reported at once, each with file, line and key
path. Cross-field rules (host references, GPU arithmetic, ports) live in
:mod:`dynamo_launch.rules`; this module handles shape, types and secrets. What can only be
checked on the plan (derived process names, ports per host) is checked after the plan is
built: :func:`dynamo_launch.load.load_plan` does both.
"""

from __future__ import annotations

import os.path
import re
import tomllib
from typing import Any

from . import rules
from .addresses import split_hostport, valid_address
from .errors import InventoryError, Problem
from .model import (
    WORKER_STARTUP_TIMEOUT,
    Backend,
    Cluster,
    DpLoadBalancing,
    EnvValue,
    EtcdSettings,
    Executor,
    Frontend,
    GenericProcess,
    Health,
    Host,
    Inventory,
    NatsSettings,
    RayCluster,
    Restart,
    RestartPolicy,
    Role,
    SecretRef,
    SshSettings,
    WorkerGroup,
)
from .reader import ENV_NAME, HOSTNAME, NAME, Reader
from .secret_shapes import SECRET_VALUE  # well-known token shapes, refused under any name
from .tomlpos import KeyPath, LineMap
from .versions import SUPPORTED_DYNAMO_VERSIONS

__all__ = ["load", "parse", "read_text"]

_TOP = {"cluster", "ssh", "env", "hosts", "nats", "etcd", "frontend", "workers", "ray", "processes"}
_SSH = {"user", "port", "key_file", "known_hosts", "connect_timeout", "keepalive_interval", "keepalive_count_max"}
_RESTART = {"policy", "backoff_initial", "backoff_max", "reset_after", "max_restarts", "restart_window", "stop_timeout"}
_HEALTH = {"check", "port", "path", "command", "startup_timeout", "start_secs", "interval", "timeout", "failure_threshold"}
_CHECKS = ("auto", "process", "tcp", "http", "command")
# A Linux interface name (IFNAMSIZ is 16 with the NUL): it lands in GLOO/NCCL_SOCKET_IFNAME.
_IFNAME = r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}"

# Names that say "this is a credential": a literal value under such a name is refused.
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW(OR)?D|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL|AUTH|(^|_)KEY$", re.IGNORECASE)
_ENV_REF = re.compile(r"\$\{(" + ENV_NAME + r")\}")


def load(path: str) -> Inventory:
    """Read and validate the inventory file at ``path`` (the plan-level checks are
    :func:`dynamo_launch.load.load_plan`'s).

    Raises :class:`~dynamo_launch.errors.InventoryError` with every problem found.
    """
    return parse(read_text(path), path)


def read_text(path: str) -> str:
    """The UTF-8 text of the inventory file at ``path``, or :class:`InventoryError`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InventoryError([Problem(0, "", f"cannot read: {e.strerror or e}", path)]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InventoryError([Problem(1, "", f"not UTF-8 text ({e.reason} at byte {e.start})", path)]) from None


def parse(text: str, source: str = "inventory.toml") -> Inventory:
    """Validate inventory ``text``; ``source`` names it in messages and anchors relative paths."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = _decode_error_line(str(e))
        message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(e))
        raise InventoryError([Problem(line, "", f"TOML syntax: {message}", source)]) from None
    except RecursionError:
        raise InventoryError([Problem(1, "", "TOML syntax: arrays or tables nested too deeply", source)]) from None
    r = Reader(LineMap(text), source)
    base_dir = os.path.dirname(os.path.abspath(source)) if source else ""
    inventory = _Loader(r, base_dir).inventory(raw, source)
    if inventory is not None:  # a model despite local problems (typos): check it too, report all at once
        rules.validate(inventory, r)
    if r.problems:
        raise InventoryError(r.problems)
    assert inventory is not None
    return inventory


def _decode_error_line(message: str) -> int:
    m = re.search(r"at line (\d+)", message)
    if m:
        return int(m.group(1))
    return message.count("\n") + 1 if "end of document" not in message else 1


class _Loader:
    def __init__(self, r: Reader, base_dir: str):
        self.r = r
        self.base_dir = base_dir

    def inventory(self, raw: dict[str, Any], source: str) -> Inventory | None:
        r = self.r
        r.table(raw, (), _TOP)
        if "cluster" not in raw:
            r.problem(("cluster",), "missing: the [cluster] table is required")
        elif not isinstance(raw["cluster"], dict):
            r.table(raw["cluster"], ("cluster",), None)  # reports what it is instead
        # Without a [cluster] table its keys are not reported one by one: the table is.
        cluster = self.cluster(raw["cluster"]) if isinstance(raw.get("cluster"), dict) else _NO_CLUSTER
        ssh = self.ssh(r.table(raw.get("ssh", {}), ("ssh",), _SSH), ("ssh",), SshSettings())
        env = self.env(raw.get("env", {}), ("env",))
        hosts = tuple(self.host(t, ("hosts", i), ssh) for i, t in enumerate(r.tables(raw.get("hosts"), ("hosts",))))
        if not hosts and "hosts" not in raw:
            r.problem(("hosts",), "missing: at least one [[hosts]] entry is required")
        nats = self.nats(raw.get("nats", {}), ("nats",))
        etcd = self.etcd(raw.get("etcd", {}), ("etcd",))
        frontend = self.frontend(raw["frontend"], ("frontend",), cluster.head) if "frontend" in raw else None
        workers = tuple(self.worker(t, ("workers", i)) for i, t in enumerate(r.tables(raw.get("workers"), ("workers",))))
        ray = self.ray(raw["ray"], ("ray",)) if "ray" in raw else None
        processes = tuple(
            self.process(t, ("processes", i)) for i, t in enumerate(r.tables(raw.get("processes"), ("processes",)))
        )
        return Inventory(
            source=source,
            cluster=cluster,
            ssh=ssh,
            hosts=hosts,
            nats=nats,
            etcd=etcd,
            env=env,
            frontend=frontend,
            workers=workers,
            ray=ray,
            processes=processes,
        )

    # -- sections ----------------------------------------------------------------------

    def cluster(self, t: dict[str, Any]) -> Cluster:
        r, p = self.r, ("cluster",)
        r.table(t, p, {"name", "head", "state_dir", "python", "dynamo_version", "system_port", "vllm_cache_root", "metrics",
                       "network_interface"})  # fmt: skip
        name = r.get(t, p, "name", str, pattern=NAME)
        version = r.get(t, p, "dynamo_version", str, Cluster.dynamo_version)
        if isinstance(version, str) and version not in SUPPORTED_DYNAMO_VERSIONS:
            # Flag spellings differ between releases; only versions whose real parsers the
            # conformance suite runs are rendered (dynamo_launch/versions.py).
            r.problem(p + ("dynamo_version",), f"{version!r} is not a verified Dynamo release; accepted: "
                                               f"{', '.join(SUPPORTED_DYNAMO_VERSIONS)}")
        return Cluster(
            name=name,
            head=r.get(t, p, "head", str),
            state_dir=self.path(t, p, "state_dir", f"/var/lib/dynamo-launch/{name or 'cluster'}", absolute=True),
            python=r.get(t, p, "python", str, Cluster.python),
            dynamo_version=version,
            system_port=r.port(t, p, "system_port", Cluster.system_port),
            vllm_cache_root=self.path(t, p, "vllm_cache_root", None, absolute=True),
            metrics=self.metrics(t, p),
            network_interface=r.get(t, p, "network_interface", str, None, pattern=_IFNAME),
        )

    def metrics(self, t: dict[str, Any], p: KeyPath) -> str:
        value = self.r.get(t, p, "metrics", str, Cluster.metrics)
        if value and split_hostport(value) is None:
            self.r.problem(p + ("metrics",), f'must be host:port like "127.0.0.1:9400" ("[::1]:9400" for IPv6; "" for no '
                                             f"metrics endpoint), got {value!r}")
        return value

    def ssh(self, t: dict[str, Any], p: KeyPath, base: SshSettings) -> SshSettings:
        r = self.r
        key_file = self.path(t, p, "key_file", base.key_file)
        return SshSettings(
            user=r.get(t, p, "user", str, base.user, pattern=r"[A-Za-z_][A-Za-z0-9._-]*"),
            port=r.port(t, p, "port", base.port),
            key_file=key_file,
            known_hosts=self.path(t, p, "known_hosts", base.known_hosts),
            connect_timeout=r.get(t, p, "connect_timeout", float, base.connect_timeout, minimum=0.1),
            keepalive_interval=r.get(t, p, "keepalive_interval", float, base.keepalive_interval, minimum=0.1),
            keepalive_count_max=r.get(t, p, "keepalive_count_max", int, base.keepalive_count_max, minimum=1),
        )

    def host(self, t: dict[str, Any], p: KeyPath, ssh: SshSettings) -> Host:
        r = self.r
        r.table(t, p, {"name", "address", "gpus", "local", "python", "labels", "ssh", "env", "network_interface"})
        address = r.get(t, p, "address", str)
        if address and not valid_address(address):
            r.problem(p + ("address",), f"{address!r} is neither an IP address nor a host name")
        labels = r.table(t.get("labels", {}), p + ("labels",), None)
        for k, v in labels.items():
            if not isinstance(v, str):
                r.problem(p + ("labels", k), f"label values must be strings, got {type(v).__name__}")
        return Host(
            name=r.get(t, p, "name", str, pattern=HOSTNAME),
            address=address,
            gpus=r.get(t, p, "gpus", int, 0, minimum=0, maximum=1024),
            ssh=self.ssh(r.table(t.get("ssh", {}), p + ("ssh",), _SSH), p + ("ssh",), ssh),
            local=r.get(t, p, "local", bool, False),
            python=r.get(t, p, "python", str, None),
            labels=tuple(sorted((k, v) for k, v in labels.items() if isinstance(v, str))),
            env=self.env(t.get("env", {}), p + ("env",)),
            network_interface=r.get(t, p, "network_interface", str, None, pattern=_IFNAME),
        )

    def nats(self, raw: Any, p: KeyPath) -> NatsSettings:
        r = self.r
        t = r.table(raw, p, {"port", "monitor_port", "store_dir", "external", "binary", "bind", "token", "user", "password",
                             "tls", "restart", "health"})  # fmt: skip
        external = self.url(t, p, "external", ("nats", "tls"))
        bind = self.bind(t, p)
        token, user = self.secret(t, p, "token", "NATS_TOKEN"), self.env_key(t, p, "user")
        password = self.secret(t, p, "password", "NATS_PASSWORD")
        if "token" in t and ("user" in t or "password" in t):
            r.problem(p + ("token",), "give either token or user and password, not both")
        elif ("user" in t) != ("password" in t):
            r.problem(p + ("password" if "user" in t else "user",), "user and password go together: give both")
        tls = r.get(t, p, "tls", bool, False)
        if tls and external is not None:
            r.problem(p + ("tls",), "tls = true is for the NATS the launcher runs; for an external one give a tls:// "
                                    "URL and its CA as NATS_TLS_CA_CERT_PATH in [env]")
        return NatsSettings(
            port=r.port(t, p, "port", NatsSettings.port),
            monitor_port=r.port(t, p, "monitor_port", NatsSettings.monitor_port),
            store_dir=self.path(t, p, "store_dir", None, absolute=True),
            external=external,
            binary=r.get(t, p, "binary", str, NatsSettings.binary),
            bind=bind,
            token=token,
            user=user,
            password=password,
            tls=tls,
            restart=self.restart(t, p),
            health=self.health(t, p),
        )

    def etcd(self, raw: Any, p: KeyPath) -> EtcdSettings:
        r = self.r
        t = r.table(raw, p, {"client_port", "peer_port", "data_dir", "external", "binary", "tls", "ca", "cert", "key",
                             "restart", "health"})  # fmt: skip
        external = self.url(t, p, "external", ("http", "https"))
        tls = r.get(t, p, "tls", bool, False)
        files = {k: self.secret(t, p, k, f"ETCD_{k.upper()}") for k in ("ca", "cert", "key")}
        if tls and external is not None:
            r.problem(p + ("tls",), "tls = true is for the etcd the launcher runs; for an external one give an "
                                    "https:// URL (and its ca, cert, key)")
        for k in ("ca", "cert", "key"):
            if k in t and (external is None or not external.startswith("https://")):
                r.problem(p + (k,), f"{k} is for an external https:// etcd (etcd.external); the etcd the launcher "
                                    "runs gets a generated CA with tls = true")
                break
        if ("cert" in t) != ("key" in t):
            r.problem(p + ("key" if "cert" in t else "cert",), "cert and key go together: give both")
        return EtcdSettings(
            client_port=r.port(t, p, "client_port", EtcdSettings.client_port),
            peer_port=r.port(t, p, "peer_port", EtcdSettings.peer_port),
            data_dir=self.path(t, p, "data_dir", None, absolute=True),
            external=external,
            binary=r.get(t, p, "binary", str, EtcdSettings.binary),
            tls=tls,
            ca=files["ca"],
            cert=files["cert"],
            key=files["key"],
            restart=self.restart(t, p),
            health=self.health(t, p),
        )

    def bind(self, t: dict[str, Any], p: KeyPath) -> str | None:
        """A ``bind`` address (``None``: the host's own address)."""
        bind = self.r.get(t, p, "bind", str, None)
        if bind is not None and not valid_address(bind):
            self.r.problem(p + ("bind",), f"{bind!r} is neither an IP address nor a host name (\"0.0.0.0\": every interface)")
        return bind

    def frontend(self, raw: Any, p: KeyPath, head: str) -> Frontend:
        r = self.r
        t = r.table(raw, p, {"host", "http_port", "bind", "router_mode", "migration_limit", "extra_args", "env",
                                   "restart", "health"})
        return Frontend(
            host=r.get(t, p, "host", str, head),
            http_port=r.port(t, p, "http_port", Frontend.http_port),
            bind=self.bind(t, p),
            router_mode=r.get(t, p, "router_mode", str, Frontend.router_mode, choices=("kv", "round-robin", "random")),
            migration_limit=r.get(t, p, "migration_limit", int, None, minimum=0, maximum=2**32 - 1),
            extra_args=r.strings(t, p, "extra_args", ()),
            env=self.env(t.get("env", {}), p + ("env",)),
            restart=self.restart(t, p),
            health=self.health(t, p),
        )

    def worker(self, t: dict[str, Any], p: KeyPath) -> WorkerGroup:
        r = self.r
        r.table(
            t,
            p,
            {
                "name", "backend", "role", "model", "hosts", "tensor_parallel_size", "pipeline_parallel_size",
                "data_parallel_size", "replicas", "executor", "master_port", "ray_port", "dp_rpc_port",
                "dp_load_balancing", "max_unavailable", "extra_args", "env", "restart", "health",
            },
        )  # fmt: skip
        return WorkerGroup(
            name=r.get(t, p, "name", str, pattern=NAME),
            backend=r.choice(t, p, "backend", Backend),
            role=r.choice(t, p, "role", Role, Role.AGGREGATED),
            model=r.get(t, p, "model", str),
            hosts=self.hosts(t, p),
            tensor_parallel_size=r.get(t, p, "tensor_parallel_size", int, WorkerGroup.tensor_parallel_size, minimum=1,
                                       maximum=4096),
            pipeline_parallel_size=r.get(t, p, "pipeline_parallel_size", int, WorkerGroup.pipeline_parallel_size, minimum=1,
                                         maximum=4096),
            data_parallel_size=r.get(t, p, "data_parallel_size", int, WorkerGroup.data_parallel_size, minimum=1,
                                     maximum=4096),
            replicas=r.get(t, p, "replicas", int, None, minimum=1, maximum=4096),
            executor=r.choice(t, p, "executor", Executor, WorkerGroup.executor),
            master_port=r.port(t, p, "master_port", WorkerGroup.master_port),
            ray_port=r.port(t, p, "ray_port", WorkerGroup.ray_port),
            dp_rpc_port=r.port(t, p, "dp_rpc_port", WorkerGroup.dp_rpc_port),
            dp_load_balancing=r.choice(t, p, "dp_load_balancing", DpLoadBalancing, WorkerGroup.dp_load_balancing),
            max_unavailable=r.get(t, p, "max_unavailable", int, WorkerGroup.max_unavailable, minimum=1, maximum=4096),
            extra_args=r.strings(t, p, "extra_args", ()),
            env=self.env(t.get("env", {}), p + ("env",)),
            restart=self.restart(t, p),
            health=self.health(t, p, startup_timeout=WORKER_STARTUP_TIMEOUT),
        )

    def ray(self, raw: Any, p: KeyPath) -> RayCluster:
        r = self.r
        t = r.table(
            raw,
            p,
            {"head", "workers", "port", "num_cpus", "num_gpus", "object_store_memory", "extra_args", "head_args",
             "worker_args", "env", "restart", "health"},
        )
        return RayCluster(
            head=r.get(t, p, "head", str),
            workers=r.strings(t, p, "workers", ()),
            port=r.port(t, p, "port", RayCluster.port),
            num_cpus=r.get(t, p, "num_cpus", int, None, minimum=0),
            num_gpus=r.get(t, p, "num_gpus", int, None, minimum=0),
            object_store_memory=r.get(t, p, "object_store_memory", int, None, minimum=78643200),
            extra_args=r.strings(t, p, "extra_args", ()),
            head_args=r.strings(t, p, "head_args", ()),
            worker_args=r.strings(t, p, "worker_args", ()),
            env=self.env(t.get("env", {}), p + ("env",)),
            restart=self.restart(t, p),
            health=self.health(t, p),
        )

    def process(self, t: dict[str, Any], p: KeyPath) -> GenericProcess:
        r = self.r
        r.table(t, p, {"name", "host", "hosts", "command", "cwd", "env", "depends_on", "gang", "dynamo", "restart", "health"})
        if "host" in t and "hosts" in t:
            r.problem(p + ("hosts",), "give either host or hosts, not both")
        hosts = (r.get(t, p, "host", str),) if "host" in t else r.strings(t, p, "hosts")
        if "host" not in t and "hosts" in t and not hosts:
            r.problem(p + ("hosts",), "must name at least one host")
        command = r.strings(t, p, "command")
        if "command" in t and not command:
            r.problem(p + ("command",), "must not be empty")
        return GenericProcess(
            name=r.get(t, p, "name", str, pattern=NAME),
            hosts=hosts,
            command=command,
            cwd=self.path(t, p, "cwd", None, absolute=True),
            env=self.env(t.get("env", {}), p + ("env",)),
            depends_on=r.strings(t, p, "depends_on", ()),
            gang=r.get(t, p, "gang", str, None, pattern=NAME),
            dynamo=r.get(t, p, "dynamo", bool, False),
            restart=self.restart(t, p),
            health=self.health(t, p),
        )

    def hosts(self, t: dict[str, Any], p: KeyPath) -> tuple[str, ...]:
        hosts = self.r.strings(t, p, "hosts")
        if t.get("hosts") == []:
            self.r.problem(p + ("hosts",), "must name at least one host")
        return hosts

    # -- shared sub-tables -----------------------------------------------------------

    def restart(self, parent: dict[str, Any], p: KeyPath) -> Restart:
        r = self.r
        p = p + ("restart",)
        t = r.table(parent.get("restart", {}), p, _RESTART)
        restart = Restart(
            policy=r.choice(t, p, "policy", RestartPolicy, Restart.policy),
            backoff_initial=r.get(t, p, "backoff_initial", float, Restart.backoff_initial, minimum=0),
            backoff_max=r.get(t, p, "backoff_max", float, Restart.backoff_max, minimum=0),
            reset_after=r.get(t, p, "reset_after", float, Restart.reset_after, minimum=0),
            max_restarts=r.get(t, p, "max_restarts", int, Restart.max_restarts, minimum=0),
            restart_window=r.get(t, p, "restart_window", float, Restart.restart_window, minimum=0),
            stop_timeout=r.get(t, p, "stop_timeout", float, Restart.stop_timeout, minimum=0),
        )
        if restart.backoff_max < restart.backoff_initial:
            r.problem(p + ("backoff_max",), f"must be ≥ backoff_initial ({restart.backoff_initial:g})")
        return restart

    def health(self, parent: dict[str, Any], p: KeyPath, *, startup_timeout: float = Health.startup_timeout) -> Health:
        r = self.r
        p = p + ("health",)
        t = r.table(parent.get("health", {}), p, _HEALTH)
        health = Health(
            check=r.get(t, p, "check", str, Health.check, choices=_CHECKS),
            port=r.port(t, p, "port", Health.port),
            path=r.get(t, p, "path", str, Health.path, pattern=r"/[^\s]*"),
            command=r.strings(t, p, "command", Health.command),
            startup_timeout=r.get(t, p, "startup_timeout", float, startup_timeout, minimum=0),
            start_secs=r.get(t, p, "start_secs", float, Health.start_secs, minimum=0),
            interval=r.get(t, p, "interval", float, Health.interval, minimum=0.05),
            timeout=r.get(t, p, "timeout", float, Health.timeout, minimum=0.05),
            failure_threshold=r.get(t, p, "failure_threshold", int, Health.failure_threshold, minimum=1),
        )
        if health.check in ("tcp", "http") and health.port is None:
            r.problem(p + ("port",), f"check = {health.check!r} needs a port")
        if health.check == "command" and not health.command:
            r.problem(p + ("command",), "check = 'command' needs a command")
        return health

    def env(self, raw: Any, p: KeyPath) -> tuple[tuple[str, EnvValue], ...]:
        r = self.r
        t = r.table(raw, p, None)
        out: list[tuple[str, EnvValue]] = []
        for name, value in t.items():
            where = p + (name,)
            if not re.fullmatch(ENV_NAME, name):
                r.problem(where, "not a valid environment variable name")
                continue
            if not isinstance(value, str):
                r.problem(where, f"must be a string, got {type(value).__name__} (quote it: {name} = \"{value}\")")
                continue
            out.append((name, self.env_value(value, where, name)))
        return tuple(out)

    def env_value(self, value: str, where: KeyPath, name: str) -> EnvValue:
        ref = _ENV_REF.fullmatch(value)
        if ref:
            return SecretRef("env", ref.group(1))
        if value.startswith("file:"):
            path = value[len("file:") :]
            if not path.startswith("/"):
                self.r.problem(where, f"file: reference must be an absolute path, got {path!r}")
            return SecretRef("file", path)
        if SECRET_VALUE.match(value) or (value and _SECRET_NAME.search(name)):
            self.r.problem(
                where,
                f"inline secret: give it by reference, e.g. {name} = \"${{{name}}}\" (from the daemon's "
                f"environment) or {name} = \"file:/etc/dynamo-launch/{name.lower()}\"",
            )
            return SecretRef("env", name)
        return value

    def secret(self, t: dict[str, Any], p: KeyPath, key: str, var: str) -> SecretRef | None:
        """A credential key: a reference (``${VAR}`` or ``file:/path``) and nothing else."""
        value = self.env_key(t, p, key)
        if value is None or isinstance(value, SecretRef):
            return value
        if value:  # an empty one is reported by env_key
            self.r.problem(p + (key,), f'inline secret: give it by reference, e.g. {key} = "${{{var}}}" (from the '
                                       f'daemon\'s environment) or {key} = "file:/etc/dynamo-launch/{var.lower()}"')
        return None

    def env_key(self, t: dict[str, Any], p: KeyPath, key: str) -> EnvValue | None:
        """A plain string or a secret reference (as in ``env`` tables), or None when absent."""
        value = self.r.get(t, p, key, str, None)
        if value is None:
            return None
        ref = _ENV_REF.fullmatch(value)
        if ref:
            return SecretRef("env", ref.group(1))
        if value.startswith("file:"):
            path = value[len("file:") :]
            if not path.startswith("/"):
                self.r.problem(p + (key,), f"file: reference must be an absolute path, got {path!r}")
            return SecretRef("file", path)
        if not value:
            self.r.problem(p + (key,), "must not be empty")
        return value

    def path(self, t: dict[str, Any], p: KeyPath, key: str, default: Any, *, absolute: bool = False) -> Any:
        value = self.r.get(t, p, key, str, default)
        if key not in t or not isinstance(value, str):
            return value
        if not value:
            self.r.problem(p + (key,), "must not be empty")
        elif absolute and not value.startswith("/"):
            self.r.problem(p + (key,), f"must be an absolute path (it is used on every node), got {value!r}")
        elif not absolute and not value.startswith(("/", "~")):
            value = os.path.normpath(os.path.join(self.base_dir, value))  # relative to the inventory file
        return value

    def url(self, t: dict[str, Any], p: KeyPath, key: str, schemes: tuple[str, ...]) -> str | None:
        value = self.r.get(t, p, key, str, None)
        if value is not None and "@" in value:  # never echo it: it may hold a credential
            how = "as nats.token, or nats.user and nats.password" if p == ("nats",) else "elsewhere"
            self.r.problem(p + (key,), f"credentials in the URL would show in the plan, status and logs; give them {how}")
            return None
        if value is not None and not re.fullmatch(r"(%s)://[^\s/]+(:\d+)?/?(,(%s)://[^\s/,]+(:\d+)?/?)*" % ("|".join(schemes), "|".join(schemes)), value):
            self.r.problem(p + (key,), f"must be a URL like {schemes[0]}://host:port, got {value!r}")
        return value


_NO_CLUSTER = Cluster(name="", head="", state_dir="/var/lib/dynamo-launch/cluster")
"""Stands in for a missing or malformed [cluster] table (already reported) so the rest is still checked."""
