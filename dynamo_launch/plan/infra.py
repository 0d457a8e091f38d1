"""NATS, etcd and the Dynamo frontend on the head (pure recipes)."""

from __future__ import annotations

import json
import posixpath

from ..model import MIGRATION_LIMIT, SecretRef
from ..tomlpos import KeyPath
from .context import Context
from .spec import ProcessSpec

__all__ = ["ETCD_AUTH_BOOT", "ETCD_DYNAMO_ROLE", "NATS_AUTH_CONFIG", "etcd", "frontend", "nats"]

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


ETCD_DYNAMO_ROLE = (("READWRITE", "\0", "/dynamo-launch/"), ("READWRITE", "/dynamo-launch0", "\0"),
                    ("READ", "/dynamo-launch/", "/dynamo-launch0"))
"""The key ranges (permission, key, range end) of the role of etcd's Dynamo user: every key but
the launcher's own ``/dynamo-launch/`` prefix, which it may only read (``status --etcd``) —
a Dynamo process cannot forge the leader key or the mirrored status. ``"\0"`` as range end: to
the last key."""

ETCD_AUTH_BOOT = r'''import hashlib, http.client, json, os, socket, subprocess, sys, time
e, argv = os.environ, sys.argv[2:]
root, user, pw = (e.pop(k) for k in ("DL_ETCD_ROOT_PASSWORD", "DL_ETCD_USER", "DL_ETCD_USER_PASSWORD"))
perms, data = json.loads(sys.argv[1]), argv[argv.index("--data-dir") + 1]
mark, want = os.path.join(data, "dl-auth"), hashlib.sha256(json.dumps([root, user, pw, perms]).encode()).hexdigest()
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.settimeout(5); self.sock.connect("dl-boot:1")
def call(path, body=None, token=None):
    c = Unix("localhost", timeout=5)
    c.request("GET" if body is None else "POST", path, None if body is None else json.dumps(body), {"Authorization": token} if token else {})
    out = json.loads(c.getresponse().read() or b"{}"); c.close()
    return out
def step(path, body, token, ok=("already exist", "already has")):
    error = call("/v3/auth/" + path, body, token).get("error", "")
    if error and not any(o in error for o in ok):
        sys.exit("etcd auth setup: %s: %s" % (path, error))
def b64(s):
    import base64; return base64.b64encode(s.encode()).decode()
def setup():
    os.makedirs(data, mode=0o700, exist_ok=True); os.chdir(data)
    if os.path.exists("dl-boot:1"): os.unlink("dl-boot:1")
    p = subprocess.Popen(argv + ["--listen-client-urls", "unix://dl-boot:1", "--advertise-client-urls", "unix://dl-boot:1"])
    try:
        for _ in range(600):
            if p.poll() is not None: sys.exit("etcd exited during auth setup (code %s)" % p.returncode)
            try:
                if call("/health").get("health") == "true": break
            except (OSError, ValueError): pass
            time.sleep(0.1)
        else: sys.exit("etcd auth setup: etcd did not answer on its setup socket within 60 s")
        r = call("/v3/auth/authenticate", {"name": "root", "password": root})
        token, enabled = r.get("token"), "not enabled" not in r.get("error", "")
        if enabled and not token:
            sys.exit("etcd auth setup: the data dir %s has auth enabled with another root password (%s): restore "
                     "the state dir's credentials/etcd-root-password or remove the data dir" % (data, r.get("error")))
        step("role/add", {"name": "root"}, token)
        for name, secret in (("root", root), (user, pw)):
            step("user/add", {"name": name, "password": secret}, token)
            step("user/changepw", {"name": name, "password": secret}, token)
        step("user/grant", {"user": "root", "role": "root"}, token)
        step("role/add", {"name": user}, token)
        for kind, key, end in perms:
            step("role/grant", {"name": user, "perm": {"permType": kind, "key": b64(key), "range_end": b64(end)}}, token)
        step("user/grant", {"user": user, "role": user}, token)
        if not enabled: step("enable", {}, None)
    finally:
        p.terminate(); p.wait()
        if os.path.exists("dl-boot:1"): os.unlink("dl-boot:1")
    fd = os.open(mark + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.write(fd, want.encode()); os.fsync(fd); os.close(fd); os.replace(mark + ".tmp", mark)
try:
    with open(mark) as f: current = f.read()
except OSError: current = ""
if current != want: setup()
os.execvp(argv[0], argv)
'''
"""Runs etcd with authentication on, set up before it ever listens on the network.

``python -c ETCD_AUTH_BOOT PERMS etcd ...`` (credentials in its environment: ``DL_ETCD_ROOT_PASSWORD``,
``DL_ETCD_USER``, ``DL_ETCD_USER_PASSWORD``) — unless the data dir's ``dl-auth`` marker says
these credentials are set up already — first runs the same etcd listening only on a Unix socket
inside its 0700 data dir, creates the ``root`` user and the Dynamo user with a role over PERMS
(JSON of :data:`ETCD_DYNAMO_ROLE`), enables auth, stops it and writes the marker; then execs etcd
(same pid) with the credentials out of its environment. Nobody on the network or another local
user ever sees this etcd without auth; a restart with the same credentials costs nothing.
"""


def nats(ctx: Context) -> ProcessSpec:
    """``nats-server -js -sd DIR -m 8222`` bound to the head's cluster address (or ``nats.bind``).

    It requires ``nats.token`` (or user and password), else a generated token
    (:attr:`~dynamo_launch.model.Inventory.nats_auth`): see :data:`NATS_AUTH_CONFIG`.
    """
    n, head = ctx.inv.nats, ctx.head
    store = n.store_dir or posixpath.join(ctx.inv.cluster.state_dir, "nats")
    origin: KeyPath = ("nats",)
    argv = [n.binary, "-js", "-sd", store, "-m", str(n.monitor_port), "-a", n.bind or head.address, "-p", str(n.port)]
    files = _server_files(ctx) if n.tls else []
    if files:  # clients must use TLS (tls://); the monitoring port stays plain http (the probes)
        argv += ["--tls", "--tlscert", files[0][0], "--tlskey", files[1][0]]
    auth = ctx.inv.nats_auth
    if auth:
        conf = posixpath.join(ctx.inv.cluster.state_dir, "nats.conf")
        argv = [ctx.python(head.name), "-c", NATS_AUTH_CONFIG, conf, argv[0], "-c", conf, *argv[1:]]
    return ctx.spec(
        name="nats",
        host=head.name,
        kind="nats",
        argv=argv,
        env=auth,
        files=files,
        origin=origin,
        restart=n.restart,
        health=n.health,
        readiness=ctx.http(n.health, head.address, n.monitor_port, "/healthz?js-enabled-only=true"),
        liveness=ctx.http(n.health, head.address, n.monitor_port, "/healthz?js-enabled-only=true"),
        never_give_up=True,
        ports=[(n.port, origin + ("port",)), (n.monitor_port, origin + ("monitor_port",))],
    )


def etcd(ctx: Context) -> ProcessSpec:
    """A single-member etcd whose clients reach it on the head's cluster address, with auth on
    (:data:`ETCD_AUTH_BOOT`): the daemon is its ``root``, Dynamo processes its Dynamo user."""
    e, head, name = ctx.inv.etcd, ctx.head, ctx.inv.cluster.name
    data = e.data_dir or posixpath.join(ctx.inv.cluster.state_dir, "etcd")
    scheme = "https" if e.tls else "http"
    client = f"{scheme}://{head.address}:{e.client_port}"
    listen = client if head.address in ("127.0.0.1", "localhost") else f"{client},{scheme}://127.0.0.1:{e.client_port}"
    files = _server_files(ctx) if e.tls else []
    tls = ["--cert-file", files[0][0], "--key-file", files[1][0]] if files else []
    ca = ctx.inv.cluster_ca if e.tls else None
    peer = f"http://127.0.0.1:{e.peer_port}"
    origin: KeyPath = ("etcd",)
    root, dynamo = ctx.inv.etcd_root, dict(ctx.inv.etcd_auth)
    assert root is not None  # the launcher's own etcd
    perms = json.dumps(ETCD_DYNAMO_ROLE, separators=(",", ":"))
    return ctx.spec(
        name="etcd",
        host=head.name,
        kind="etcd",
        env=[("DL_ETCD_ROOT_PASSWORD", root), ("DL_ETCD_USER", dynamo["ETCD_AUTH_USERNAME"]),
             ("DL_ETCD_USER_PASSWORD", dynamo["ETCD_AUTH_PASSWORD"])],
        argv=[
            ctx.python(head.name), "-c", ETCD_AUTH_BOOT, perms, e.binary, "--name", name, "--data-dir", data,
            "--advertise-client-urls", client, "--listen-client-urls", listen,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}",
            # The daemon's heartbeat rewrites a key every few seconds and etcd < 3.5 keeps every
            # revision by default: compact hourly so the data dir stays small for months.
            "--auto-compaction-retention", "1", *tls,
        ],  # fmt: skip
        files=files,
        origin=origin,
        restart=e.restart,
        health=e.health,
        readiness=ctx.http(e.health, head.address, e.client_port, "/health", ca=ca),
        liveness=ctx.http(e.health, head.address, e.client_port, "/health", ca=ca),
        never_give_up=True,
        ports=[(e.client_port, origin + ("client_port",)), (e.peer_port, origin + ("peer_port",))],
    )


def _server_files(ctx: Context) -> list[tuple[str, SecretRef]]:
    """The head's generated server certificate and key, as files on the head (``tls = true``)."""
    cert, key = ctx.inv.server_cert
    return [(ctx.tls_path("server.pem"), cert), (ctx.tls_path("server-key.pem"), key)]


def frontend(ctx: Context, *, replicas: int = 0) -> ProcessSpec:
    """``python -m dynamo.frontend --http-host A --http-port P --router-mode M [--migration-limit N]``;
    ready on ``/health``.

    It listens on its host's cluster address (Dynamo's default is every interface), or on
    ``frontend.bind``. With more than one worker ``replicas`` behind it, a request whose worker
    dies is retried on another (:data:`~dynamo_launch.model.MIGRATION_LIMIT` times) unless
    ``frontend.migration_limit`` says otherwise (0: off, as Dynamo's default)."""
    f = ctx.inv.frontend
    assert f is not None
    address = ctx.inv.host(f.host).address
    origin: KeyPath = ("frontend",)
    listen = f.bind or address
    probe = ctx.http(f.health, ctx.frontend_address, f.http_port, f.health.path)
    migration = f.migration_limit if f.migration_limit is not None else (MIGRATION_LIMIT if replicas > 1 else 0)
    return ctx.spec(
        name="frontend",
        host=f.host,
        kind="frontend",
        argv=[ctx.python(f.host), "-m", "dynamo.frontend", "--http-host", listen, "--http-port",
              str(f.http_port), "--router-mode", f.router_mode,
              *(["--migration-limit", str(migration)] if migration else []), *f.extra_args],
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
