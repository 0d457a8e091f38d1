"""NATS, etcd and the Dynamo frontend on the head (pure recipes)."""

from __future__ import annotations

import posixpath

from ..tomlpos import KeyPath
from .context import Context
from .spec import ProcessSpec

__all__ = ["NATS_AUTH_CONFIG", "etcd", "frontend", "nats"]

NATS_AUTH_CONFIG = (
    'import json, os, sys; e = os.environ; '
    'a = [(k, v) for k, v in (("token", "NATS_AUTH_TOKEN"), ("user", "NATS_AUTH_USERNAME"), '
    '("password", "NATS_AUTH_PASSWORD")) if v in e]; '
    'e.update({"DL_QUOTED_" + v: json.dumps(e[v], ensure_ascii=False) for k, v in a}); '
    'open(sys.argv[1], "w").write("authorization {\\n" + "".join("  %s: $DL_QUOTED_%s\\n" % p for p in a) + "}\\n"); '
    'os.execvp(sys.argv[2], sys.argv[2:])'
)
"""Runs nats-server with authentication and no credential on its command line.

``python -c NATS_AUTH_CONFIG CONF nats-server -c CONF ...`` writes CONF, which holds no secret
(``authorization { token: $DL_QUOTED_NATS_AUTH_TOKEN }``), puts each credential of its
environment into ``DL_QUOTED_<name>`` as a quoted config string, and execs nats-server (same
pid), which takes ``$NAME`` in its config from the environment. The quoting matters: nats-server
parses a variable's value as config syntax, so a bare ``12k`` would be a number and ``a b``
an error.
"""


def nats(ctx: Context) -> ProcessSpec:
    """``nats-server -js -sd DIR -m 8222`` bound to the head's cluster address (or ``nats.bind``).

    With ``nats.token`` (or user and password) the server requires them: see :data:`NATS_AUTH_CONFIG`.
    """
    n, head = ctx.inv.nats, ctx.head
    store = n.store_dir or posixpath.join(ctx.inv.cluster.state_dir, "nats")
    origin: KeyPath = ("nats",)
    argv = [n.binary, "-js", "-sd", store, "-m", str(n.monitor_port), "-a", n.bind or head.address, "-p", str(n.port)]
    if n.auth:
        conf = posixpath.join(ctx.inv.cluster.state_dir, "nats.conf")
        argv = [ctx.python(head.name), "-c", NATS_AUTH_CONFIG, conf, argv[0], "-c", conf, *argv[1:]]
    return ctx.spec(
        name="nats",
        host=head.name,
        kind="nats",
        argv=argv,
        env=n.auth,
        origin=origin,
        restart=n.restart,
        health=n.health,
        readiness=ctx.http(n.health, head.address, n.monitor_port, "/healthz?js-enabled-only=true"),
        liveness=ctx.http(n.health, head.address, n.monitor_port, "/healthz?js-enabled-only=true"),
        never_give_up=True,
        ports=[(n.port, origin + ("port",)), (n.monitor_port, origin + ("monitor_port",))],
    )


def etcd(ctx: Context) -> ProcessSpec:
    """A single-member etcd whose clients reach it on the head's cluster address."""
    e, head, name = ctx.inv.etcd, ctx.head, ctx.inv.cluster.name
    data = e.data_dir or posixpath.join(ctx.inv.cluster.state_dir, "etcd")
    client = f"http://{head.address}:{e.client_port}"
    listen = client if head.address in ("127.0.0.1", "localhost") else f"{client},http://127.0.0.1:{e.client_port}"
    peer = f"http://127.0.0.1:{e.peer_port}"
    origin: KeyPath = ("etcd",)
    return ctx.spec(
        name="etcd",
        host=head.name,
        kind="etcd",
        argv=[
            e.binary, "--name", name, "--data-dir", data,
            "--advertise-client-urls", client, "--listen-client-urls", listen,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}",
            # The daemon's heartbeat rewrites a key every few seconds and etcd < 3.5 keeps every
            # revision by default: compact hourly so the data dir stays small for months.
            "--auto-compaction-retention", "1",
        ],  # fmt: skip
        origin=origin,
        restart=e.restart,
        health=e.health,
        readiness=ctx.http(e.health, head.address, e.client_port, "/health"),
        liveness=ctx.http(e.health, head.address, e.client_port, "/health"),
        never_give_up=True,
        ports=[(e.client_port, origin + ("client_port",)), (e.peer_port, origin + ("peer_port",))],
    )


def frontend(ctx: Context) -> ProcessSpec:
    """``python -m dynamo.frontend --http-port P --router-mode M``; ready on ``/health``."""
    f = ctx.inv.frontend
    assert f is not None
    address = ctx.inv.host(f.host).address
    origin: KeyPath = ("frontend",)
    probe = ctx.http(f.health, address, f.http_port, f.health.path)
    return ctx.spec(
        name="frontend",
        host=f.host,
        kind="frontend",
        argv=[ctx.python(f.host), "-m", "dynamo.frontend", "--http-port", str(f.http_port), "--router-mode", f.router_mode, *f.extra_args],
        origin=origin,
        restart=f.restart,
        health=f.health,
        readiness=probe,
        liveness=probe,
        # where workers stream responses back to: the head's cluster address, not its default route
        env=[*ctx.dynamo_env(), ("DYN_TCP_RESPONSE_STREAM_HOST", address)],
        user_env=f.env,
        depends_on=ctx.infra_gates(),
        ports=[(f.http_port, origin + ("http_port",))],
    )
