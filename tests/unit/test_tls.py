"""TLS for NATS and etcd: the inventory keys, the plan, the certificates the daemon generates
(dynamo_launch/certs.py) and the daemon's client settings (dynamo_launch/credentials.py)."""

from __future__ import annotations

import os
import ssl

import pytest

from dynamo_launch import certs, credentials
from dynamo_launch.errors import InventoryError, MirrorError, SecretError
from dynamo_launch.etcd import EtcdClient
from dynamo_launch.inventory import parse
from dynamo_launch.plan import build
from tests.inventory_keys import ONE_HOST

BASE = ONE_HOST + """
[[hosts]]
name = "b"
address = "10.0.0.2"
gpus = 0

[[processes]]
name = "w"
hosts = ["b"]
command = ["sleep", "1000"]
dynamo = true
"""


def _problems(extra: str) -> str:
    with pytest.raises(InventoryError) as e:
        parse(BASE.format(state="/srv/dl") + extra, "inv.toml")
    return str(e.value)


@pytest.mark.parametrize("extra, message", [
    ('[etcd]\nexternal = "https://e:2379"\ntls = true\n', "etcd.tls: tls = true is for the etcd the launcher runs"),
    ('[nats]\nexternal = "tls://n:4222"\ntls = true\n', "nats.tls: tls = true is for the NATS the launcher runs"),
    ('[etcd]\nca = "file:/etc/ca.pem"\n', "etcd.ca: ca is for an external https:// etcd"),
    ('[etcd]\nexternal = "http://e:2379"\nca = "file:/etc/ca.pem"\n', "etcd.ca: ca is for an external https:// etcd"),
    ('[etcd]\nexternal = "https://e:2379"\ncert = "file:/etc/c.pem"\n', "etcd.key: cert and key go together"),
    ('[etcd]\nexternal = "https://e:2379"\nkey = "-----BEGIN PRIVATE KEY-----"\ncert = "file:/c"\n',
     "etcd.key: inline secret"),
    ('[etcd]\ntls = "yes"\n', "etcd.tls"),
])
def test_tls_keys_are_validated_with_located_one_line_errors(extra, message):
    text = _problems(extra)
    assert message in text and "inv.toml:" in text


MOCKER = '\n[frontend]\n\n[[workers]]\nname = "m"\nbackend = "mocker"\nmodel = "/m"\nhosts = ["a"]\n'


@pytest.mark.parametrize("etcd, key", [
    ("[etcd]\ntls = true\n", "etcd.tls"),
    ('[etcd]\nexternal = "https://e:2379"\nca = "file:/etc/ca.pem"\n', "etcd.ca"),
])
def test_etcd_with_a_private_ca_is_refused_next_to_dynamo_processes(etcd, key):
    """ai-dynamo 1.6.1 trusts a private CA for etcd only without a password (measured): its
    processes would retry forever, so validate says so instead."""
    text = _problems(etcd + MOCKER)
    assert "inv.toml:" in text and f"{key}: Dynamo 1.6.1's etcd client" in text
    parse(BASE.format(state="/srv/dl") + "[nats]\ntls = true\n" + MOCKER, "inv.toml")  # NATS TLS: fine


def test_the_plan_points_every_client_at_tls_and_ships_only_references():
    inv = parse(BASE.format(state="/srv/dl") + "[nats]\ntls = true\n[etcd]\ntls = true\n", "inv.toml")
    plan = build(inv)
    assert (plan.nats_url, plan.etcd_url) == ("tls://10.0.0.1:4222", "https://10.0.0.1:2379")
    w = plan.process("w")
    env = {e.name: e.value for e in w.env}
    assert env["ETCD_AUTH_CA"] == "/srv/dl/tls/etcd-ca.pem" and env["NATS_TLS_CA_CERT_PATH"] == "/srv/dl/tls/nats-ca.pem"
    assert {f.name: str(f.value) for f in w.files} == {"/srv/dl/tls/etcd-ca.pem": "generated:/srv/dl/credentials/ca.pem",
                                                       "/srv/dl/tls/nats-ca.pem": "generated:/srv/dl/credentials/ca.pem"}
    etcd = plan.process("etcd")
    assert etcd.readiness.url == "https://10.0.0.1:2379/health" and etcd.readiness.ca == "/srv/dl/credentials/ca.pem"
    assert "--cert-file" in etcd.argv and "server-key.pem" in " ".join(etcd.argv)
    assert "--tls" in plan.process("nats").argv
    assert {os.path.basename(f.name) for f in etcd.files} == {"server.pem", "server-key.pem"}


def test_an_external_https_etcd_passes_its_ca_and_client_files_to_every_dynamo_process():
    inv = parse(BASE.format(state="/srv/dl") + '[etcd]\nexternal = "https://e1:2379"\nca = "file:/etc/dl/ca.pem"\n'
                'cert = "file:/etc/dl/c.pem"\nkey = "${ETCD_KEY_PEM}"\n', "inv.toml")
    w = build(inv).process("w")
    env = {e.name: e.value for e in w.env}
    assert env["ETCD_ENDPOINTS"] == "https://e1:2379"
    assert (env["ETCD_AUTH_CA"], env["ETCD_AUTH_CLIENT_CERT"], env["ETCD_AUTH_CLIENT_KEY"]) == (
        "/srv/dl/tls/etcd-ca.pem", "/srv/dl/tls/etcd-client.pem", "/srv/dl/tls/etcd-client-key.pem")
    assert sorted(str(f.value) for f in w.files) == ["${ETCD_KEY_PEM}", "file:/etc/dl/c.pem", "file:/etc/dl/ca.pem"]


def _tls_inv(tmp_path, address="10.0.0.1"):
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    text = BASE.format(state=state).replace('address = "10.0.0.1"', f'address = "{address}"')
    return parse(text + "[etcd]\ntls = true\n", "inv.toml")


def test_the_cluster_ca_is_made_once_private_and_the_server_certificate_follows_the_heads_address(tmp_path):
    from cryptography import x509

    inv = _tls_inv(tmp_path)
    made = certs.ensure(inv)
    creds = os.path.dirname(inv.cluster_ca.ref)
    assert sorted(os.path.basename(p) for p in made) == ["ca-key.pem", "ca.pem", "server-key.pem", "server.pem"]
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for p in made) and os.stat(creds).st_mode & 0o777 == 0o700
    cert = x509.load_pem_x509_certificate(open(inv.server_cert[0].ref, "rb").read())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(map(str, san.get_values_for_type(x509.IPAddress))) == ["10.0.0.1", "127.0.0.1"]
    assert sorted(san.get_values_for_type(x509.DNSName)) == ["a", "localhost"]
    ssl.create_default_context(cafile=inv.cluster_ca.ref)  # a CA file Python (and so Dynamo's clients) can load
    ca = open(inv.cluster_ca.ref).read()
    assert certs.ensure(inv) == []  # reused
    moved = _tls_inv(tmp_path, "10.0.0.9")
    assert sorted(os.path.basename(p) for p in certs.ensure(moved)) == ["server-key.pem", "server.pem"]
    assert open(inv.cluster_ca.ref).read() == ca  # the CA stays: running processes keep trusting it
    assert credentials.etcd_client_tls(moved).ca == ca.encode()


def test_a_planted_or_loose_ca_is_refused(tmp_path):
    inv = _tls_inv(tmp_path)
    creds = os.path.dirname(inv.cluster_ca.ref)
    os.mkdir(creds, 0o700)
    os.symlink("/etc/passwd", inv.cluster_ca.ref)
    with pytest.raises(SecretError, match="ca.pem"):
        certs.ensure(inv)
    os.unlink(inv.cluster_ca.ref)
    certs.ensure(inv)
    os.chmod(inv.cluster_ca.ref, 0o644)
    with pytest.raises(SecretError, match="mode 0644"):
        certs.ensure(inv)


def test_nothing_is_generated_without_tls(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    assert certs.ensure(parse(BASE.format(state=state), "inv.toml")) == []
    assert not (state / "credentials").exists()


def test_the_etcd_client_refuses_mixed_schemes_in_one_line():
    with pytest.raises(MirrorError, match="mix http:// and https://"):
        EtcdClient("http://a:2379,https://b:2379")
    assert EtcdClient("https://a:2379,https://b").endpoints == "https://a:2379,https://b:2379"
