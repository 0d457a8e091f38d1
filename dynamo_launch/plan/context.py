"""Shared helpers for the recipes: endpoints, env merging, probes, ports (pure)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..model import TLS_DIR, TLS_FILES, EnvValue, Health, Host, Inventory, Restart, SecretRef
from ..tomlpos import KeyPath, format_path
from .spec import Env, Gate, Probe, ProbeKind, ProcessSpec, Routing, work_dir

__all__ = ["Context"]


@dataclass
class Context:
    """What every recipe needs to know about the cluster, plus the system-port allocator."""

    inv: Inventory
    _system_ports: dict[str, int] = field(default_factory=dict)

    @property
    def head(self) -> Host:
        """The head host."""
        return self.inv.head

    @property
    def nats_url(self) -> str:
        """``NATS_SERVER`` for every Dynamo process."""
        n = self.inv.nats
        return n.external or f"{'tls' if n.tls else 'nats'}://{_hostport(self.head.address, n.port)}"

    @property
    def etcd_url(self) -> str:
        """``ETCD_ENDPOINTS`` for every Dynamo process."""
        e = self.inv.etcd
        return e.external or f"{'https' if e.tls else 'http'}://{_hostport(self.head.address, e.client_port)}"

    def tls_path(self, name: str) -> str:
        """Where the TLS file ``name`` lies on every node (written there by the agent at each start)."""
        return posixpath.join(self.inv.cluster.state_dir, TLS_DIR, name)

    def tls_env(self) -> list[tuple[str, EnvValue]]:
        """The TLS variables of every NATS and etcd client (``ETCD_AUTH_CA``, ``NATS_TLS_CA_CERT_PATH``, …):
        paths on the node; :meth:`spec` adds the files behind them."""
        return [(var, self.tls_path(TLS_FILES[var])) for var, _ in (*self.inv.etcd_tls, *self.inv.nats_tls)]

    @property
    def _tls_sources(self) -> dict[str, SecretRef]:
        """Path on a node → the head's copy, for every TLS file a client may get."""
        return {self.tls_path(TLS_FILES[var]): ref for var, ref in (*self.inv.etcd_tls, *self.inv.nats_tls)}

    @property
    def frontend_address(self) -> str:
        """Where the frontend is reached: its ``bind`` address, or its host's when it listens on
        every interface (or binds nothing)."""
        f = self.inv.frontend
        assert f is not None
        listen = f.bind or self.inv.host(f.host).address
        return self.inv.host(f.host).address if listen in ("0.0.0.0", "::") else listen

    def routing(self, address: str, system_port: int, *, wait: bool = True) -> Routing:
        """The :class:`Routing` of a Dynamo process whose system-status server is ``address:system_port``;
        ``wait``: its readiness waits until the frontend routes to it (a worker the launcher planned)."""
        routing = Routing(metrics_url=f"http://{_hostport(address, system_port)}/metrics")
        f = self.inv.frontend
        if f is None or not wait:
            return routing
        url = f"http://{_hostport(self.frontend_address, f.http_port)}/health"
        return Routing(routing.metrics_url, frontend="frontend", frontend_url=url)

    def infra_gates(self) -> tuple[Gate, ...]:
        """NATS and etcd ready, for the ones the launcher runs itself."""
        gates = []
        if self.inv.nats.external is None:
            gates.append(Gate(process="nats"))
        if self.inv.etcd.external is None:
            gates.append(Gate(process="etcd"))
        return tuple(gates)

    def python(self, host: str) -> str:
        """The interpreter to use on ``host``."""
        return self.inv.host(host).python or self.inv.cluster.python

    def tool(self, host: str, name: str) -> str:
        """A console script installed next to the host's python (e.g. ``ray``)."""
        python = self.python(host)
        return posixpath.join(posixpath.dirname(python), name) if "/" in python else name

    def log_file(self, name: str) -> str:
        """Where a process's output goes on its node."""
        return posixpath.join(self.inv.cluster.state_dir, "logs", f"{name}.log")

    def system_port(self, host: str) -> int:
        """Next free Dynamo system-status port on ``host`` (``DYN_SYSTEM_PORT``)."""
        port = self._system_ports.get(host, self.inv.cluster.system_port)
        self._system_ports[host] = port + 1
        return port

    def network_env(self, host: str, *, nixl: bool = False) -> list[tuple[str, EnvValue]]:
        """Pin cross-node traffic of ``host``'s ranks to the cluster network.

        gloo and NCCL pick an interface by resolving the hostname, which on stock Debian/Ubuntu
        is 127.0.1.1: multi-node init then hangs. With ``network_interface`` set they bind that
        interface. ``nixl``: vLLM's NIXL side channel (KV transfer between disaggregated
        workers) listens on the node's inventory address rather than whatever it guesses.
        """
        out: list[tuple[str, EnvValue]] = []
        ifname = self.inv.network_interface(host)
        if ifname:
            out += [("GLOO_SOCKET_IFNAME", ifname), ("NCCL_SOCKET_IFNAME", ifname)]
        if nixl:
            out.append(("VLLM_NIXL_SIDE_CHANNEL_HOST", self.inv.host(host).address))
        return out

    def dynamo_env(self) -> list[tuple[str, EnvValue]]:
        """Discovery endpoints every Dynamo process gets, and the NATS and etcd credentials (secret references)."""
        return [("NATS_SERVER", self.nats_url), ("ETCD_ENDPOINTS", self.etcd_url), *self.inv.nats_auth,
                *self.inv.etcd_auth, *self.tls_env()]

    def spec(
        self,
        *,
        name: str,
        host: str,
        kind: str,
        argv: Iterable[str],
        origin: KeyPath,
        restart: Restart,
        health: Health,
        readiness: Probe,
        liveness: Probe | None = None,
        env: Iterable[tuple[str, EnvValue]] = (),
        user_env: Iterable[tuple[str, EnvValue]] = (),
        cwd: str | None = None,
        ports: Iterable[tuple[int, KeyPath]] = (),
        files: Iterable[tuple[str, SecretRef]] = (),
        **extra: object,
    ) -> ProcessSpec:
        """A :class:`ProcessSpec` with the common parts filled in.

        Env precedence, lowest first: the recipe's ``env``, the cluster's
        ``[env]``, the host's ``env``, then ``user_env`` (the group's own
        ``env``) — what the operator wrote wins over what the launcher derives,
        and the narrower scope wins over the wider.

        ``files``: (path on the node, head's copy) the agent writes before each start; a TLS file
        the env names (:meth:`tls_env`) is added by itself.
        """
        merged: dict[str, EnvValue] = {}
        for k, v in (*env, *self.inv.env, *self.inv.host(host).env, *user_env):
            merged.pop(k, None)  # re-insert so the final order shows precedence
            merged[k] = v
        sources = self._tls_sources
        wanted = dict(files)
        wanted.update({v: sources[v] for v in merged.values() if isinstance(v, str) and v in sources})
        return ProcessSpec(
            name=name,
            host=host,
            address=self.inv.host(host).address,
            kind=kind,
            argv=tuple(argv),
            env=tuple(Env(k, v) for k, v in merged.items()),
            cwd=cwd or work_dir(self.inv.cluster.state_dir),
            log_file=self.log_file(name),
            readiness=readiness,
            liveness=liveness,
            restart=restart,
            startup_timeout=health.startup_timeout,
            start_secs=health.start_secs,
            origin=format_path(origin),
            ports=tuple(ports),
            files=tuple(Env(path, ref) for path, ref in sorted(wanted.items())),
            **extra,  # type: ignore[arg-type]
        )

    @staticmethod
    def probe(kind: ProbeKind, health: Health, **fields: object) -> Probe:
        """A probe with the interval/timeout/threshold of ``health``."""
        return Probe(
            kind=kind,
            interval=health.interval,
            timeout=health.timeout,
            failure_threshold=health.failure_threshold,
            **fields,  # type: ignore[arg-type]
        )

    def http(self, health: Health, address: str, port: int, path: str, *, ca: SecretRef | None = None) -> Probe:
        """An HTTP GET probe of ``http://address:port/path``; with ``ca`` (the head's copy of the
        CA that signed the server's certificate) ``https://``, the certificate verified."""
        scheme = "https" if ca is not None else "http"
        return self.probe(ProbeKind.HTTP, health, address=address, port=port, url=f"{scheme}://{_hostport(address, port)}{path}",
                          ca=ca.ref if ca is not None else "")

    def tcp(self, health: Health, address: str, port: int) -> Probe:
        """A TCP connect probe."""
        return self.probe(ProbeKind.TCP, health, address=address, port=port)

    def alive(self, health: Health) -> Probe:
        """Readiness by staying alive for ``start_secs``."""
        return self.probe(ProbeKind.PROCESS, health)


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
