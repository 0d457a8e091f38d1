"""The credentials the daemon generates for the NATS and etcd it runs (on the head).

One random value per file in ``<state_dir>/credentials/`` (the directory 0700, each file 0600,
both owned by the daemon's user), made once per cluster and reused by every later daemon of it,
so processes that keep running across a daemon restart keep working. The plan refers to them as
``generated:`` secret references (:meth:`~dynamo_launch.model.Inventory.generated`); only
:mod:`dynamo_launch.secrets` reads them, right before a spawn. A value never goes on a command
line, into the plan, status, events or logs.
"""

from __future__ import annotations

import os
import secrets as _random
import stat
from collections.abc import Mapping

from .errors import SecretError
from .etcd import TLS
from .model import Inventory, SecretRef
from .plan.spec import Env
from .secrets import resolve

__all__ = ["check_private", "ensure", "ensure_dir", "etcd_client_auth", "etcd_client_tls", "generated_refs", "nats_client_ca"]


def generated_refs(inv: Inventory) -> list[SecretRef]:
    """Every generated credential ``inv``'s cluster uses."""
    refs = [v for _, v in (*inv.nats_auth, *inv.etcd_auth) if isinstance(v, SecretRef)]
    if inv.etcd_root is not None:
        refs.append(inv.etcd_root)
    return list(dict.fromkeys(r for r in refs if r.kind == "generated"))


def check_private(path: str, st: os.stat_result, kind: str) -> None:
    """:class:`SecretError` unless ``st`` (of ``path``) is the daemon's user's and nobody else's."""
    if st.st_uid != os.geteuid():
        raise SecretError(f"{path}: owned by uid {st.st_uid}, not by the daemon's user (uid {os.geteuid()}): "
                          f"refusing a {kind} someone else may have planted")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise SecretError(f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets others in; it must be private "
                          f"({'0700' if kind == 'directory' else '0600'})")


def ensure_dir(path: str) -> None:
    """Make the credentials directory ``path`` (0700) or check the one there: a real directory, private, ours."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise SecretError(f"{path}: cannot create the credentials directory: {e.strerror or e}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise SecretError(f"{path}: not a directory (a symlink?): refusing to keep credentials there")
    check_private(path, st, "directory")


def _ensure_file(path: str) -> bool:
    """Create ``path`` with a fresh random value unless it is there; True when created."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(f"{path}: not a regular file (a symlink?): refusing it as a credential") from None
        check_private(path, st, "credential")
        if st.st_size == 0:
            raise SecretError(f"{path}: empty; remove it and the cluster's etcd data dir to start over") from None
        return False
    except OSError as e:
        raise SecretError(f"{path}: cannot create a credential: {e.strerror or e}") from None
    try:
        os.write(fd, (_random.token_urlsafe(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def ensure(inv: Inventory) -> list[str]:
    """Make every generated credential of ``inv`` that is missing (the state directory exists,
    the daemon holds its lock); the paths created. :class:`SecretError` (one line, naming the
    path) when one is not the daemon's own and private."""
    refs = generated_refs(inv)
    created = []
    for d in dict.fromkeys(os.path.dirname(r.ref) for r in refs):
        ensure_dir(d)
    for r in refs:
        if _ensure_file(r.ref):
            created.append(r.ref)
    if created:
        directory = os.path.dirname(created[0])
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the files survive a crash before the processes that use them start
        finally:
            os.close(fd)
    return created


def etcd_client_auth(inv: Inventory, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(user, password)`` for the daemon's own etcd client: ``root`` of the etcd the launcher
    runs; for an external etcd, ``ETCD_AUTH_USERNAME``/``_PASSWORD`` from the inventory's
    ``[env]`` when it names both (else None: no auth)."""
    if inv.etcd_root is not None:
        return "root", resolve((Env("p", inv.etcd_root),), environ)["p"]
    given = dict(inv.env)
    if "ETCD_AUTH_USERNAME" in given and "ETCD_AUTH_PASSWORD" in given:
        env = resolve(tuple(Env(k, given[k]) for k in ("ETCD_AUTH_USERNAME", "ETCD_AUTH_PASSWORD")), environ)
        return env["ETCD_AUTH_USERNAME"], env["ETCD_AUTH_PASSWORD"]
    return None


def etcd_client_tls(inv: Inventory, environ: Mapping[str, str] | None = None) -> TLS | None:
    """What the daemon's own etcd client trusts (and shows) for an ``https`` etcd: the cluster CA
    (``tls = true``) or an external etcd's ``ca``/``cert``/``key``; None for plain http."""
    files = dict(inv.etcd_tls)
    if not files:
        return None
    values = resolve(tuple(Env(k, v) for k, v in files.items()), environ)
    ca, cert, key = (values.get(k) for k in ("ETCD_AUTH_CA", "ETCD_AUTH_CLIENT_CERT", "ETCD_AUTH_CLIENT_KEY"))
    return TLS(*(None if v is None else (v + "\n").encode() for v in (ca, cert, key)))


def nats_client_ca(inv: Inventory) -> str | None:
    """The CA file (on the head) the daemon's NATS client trusts: the cluster CA with ``[nats] tls``."""
    return inv.cluster_ca.ref if inv.nats_tls else None
