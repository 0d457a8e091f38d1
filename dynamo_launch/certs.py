"""The certificates the daemon generates for the NATS and etcd it runs with ``tls = true`` (on the head).

In ``<state_dir>/credentials/`` next to the generated passwords (directory 0700, files 0600,
the daemon's user's): a cluster CA (``ca.pem``, ``ca-key.pem``; made once, reused by every later
daemon of the cluster, so running processes keep trusting it) and the head's server certificate
(``server.pem``, ``server-key.pem``) signed by it, naming the head's address, its inventory name,
``nats.bind`` and the loopback addresses. The server certificate is made again when those names
change (the CA stays). The CA's key never leaves the head; processes get ``ca.pem`` (and the
servers their certificate) through the agent's spawn request (see ``files`` of
:class:`~dynamo_launch.plan.spec.ProcessSpec`).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat

from .credentials import check_private, ensure_dir
from .errors import SecretError
from .model import Inventory

__all__ = ["ensure", "server_names"]

_VALID = datetime.timedelta(days=3650)


def server_names(inv: Inventory) -> list[str]:
    """What the head's server certificate names (its subject alternative names), sorted."""
    names = {inv.head.address, inv.head.name, "127.0.0.1", "localhost"}
    if inv.nats.bind and inv.nats.bind not in ("0.0.0.0", "::"):
        names.add(inv.nats.bind)
    return sorted(names)


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SecretError(f"{path}: cannot read it (a symlink?): {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(f"{path}: not a regular file: refusing it as a certificate")
        check_private(path, st, "credential")
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise SecretError(f"{path}: cannot write a certificate: {e.strerror or e}") from None


def _san(names: list[str]):  # noqa: ANN202 (cryptography's types, imported lazily)
    from cryptography import x509

    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(out)


def _certificate(subject: str, key, issuer_name, issuer_key, *, ca: bool, names: list[str] = ()):  # noqa: ANN001, ANN202
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)  # clocks of other nodes
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + _VALID)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                                          encipher_only=False, decipher_only=False), critical=True)
    else:
        b = b.add_extension(_san(list(names)), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def _pem_key(key) -> bytes:  # noqa: ANN001
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _current_names(pem: bytes, ca_cert) -> list[str] | None:  # noqa: ANN001
    """The names of the server certificate ``pem`` when ``ca_cert`` signed it, else None."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem)
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, Exception):  # any doubt: make a new one
        return None
    return sorted([str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName))


def ensure(inv: Inventory) -> list[str]:
    """Make the cluster CA and the head's server certificate when ``[etcd]`` or ``[nats]`` has
    ``tls = true`` (the state directory exists, the daemon holds its lock); the paths written.
    :class:`SecretError` (one line, naming the path) when a file there is not the daemon's own
    and private, or not a certificate."""
    if not (inv.etcd_tls and inv.etcd.external is None) and not inv.nats_tls:
        return []
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_path, (cert_path, key_path) = inv.cluster_ca.ref, (r.ref for r in inv.server_cert)
    ca_key_path = os.path.join(os.path.dirname(ca_path), "ca-key.pem")
    ensure_dir(os.path.dirname(ca_path))
    written = []
    ca_pem, ca_key_pem = _read(ca_path), _read(ca_key_path)
    if ca_pem is None or ca_key_pem is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _certificate(f"dynamo-launch {inv.cluster.name} CA", ca_key, None, None, ca=True)
        _write(ca_key_path, _pem_key(ca_key))
        _write(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM))
        written += [ca_key_path, ca_path]
    else:
        try:
            ca_cert = x509.load_pem_x509_certificate(ca_pem)
            ca_key = serialization.load_pem_private_key(ca_key_pem, None)
        except (ValueError, TypeError):
            raise SecretError(f"{ca_path}: not the cluster CA's certificate and key (remove both "
                              "to make a new CA; every process then needs a restart)") from None
    names = server_names(inv)
    cert_pem = _read(cert_path)
    if written or cert_pem is None or _read(key_path) is None or _current_names(cert_pem, ca_cert) != names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(inv.head.name if len(inv.head.name) < 64 else "head", key, ca_cert.subject, ca_key,
                            ca=False, names=names)
        _write(key_path, _pem_key(key))
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        written += [key_path, cert_path]
    return written
