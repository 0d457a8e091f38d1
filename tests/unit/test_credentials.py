"""The credentials the daemon generates for its NATS and etcd (dynamo_launch/credentials.py)."""

from __future__ import annotations

import os
import stat

import pytest

from dynamo_launch import credentials
from dynamo_launch.errors import SecretError
from dynamo_launch.inventory import parse
from dynamo_launch.plan import build
from dynamo_launch.plan.render import to_json, to_text
from dynamo_launch.secrets import resolve
from tests.inventory_keys import ONE_HOST

INVENTORY = ONE_HOST + "\n[frontend]\n"


def _inv(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return parse(INVENTORY.format(state=state), "inv.toml"), state


def test_credentials_are_generated_once_private_and_reused(tmp_path):
    inv, state = _inv(tmp_path)
    made = credentials.ensure(inv)
    folder = state / "credentials"
    assert sorted(os.path.basename(p) for p in made) == ["etcd-dynamo-password", "etcd-root-password", "nats-token"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    values = {}
    for name in made:
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600
        values[name] = open(name).read().strip()
        assert len(values[name]) >= 40
    assert len(set(values.values())) == 3
    assert credentials.ensure(inv) == []  # a later daemon reuses them
    assert {n: open(n).read().strip() for n in made} == values
    assert credentials.etcd_client_auth(inv) == ("root", values[str(folder / "etcd-root-password")])
    plan = build(inv)
    env = resolve(plan.process("frontend").env)
    assert env["NATS_AUTH_TOKEN"] == values[str(folder / "nats-token")]
    assert env["ETCD_AUTH_PASSWORD"] == values[str(folder / "etcd-dynamo-password")]
    text = to_text(plan) + to_json(plan)
    assert not any(v in text for v in values.values())  # the plan names them, never shows them


def test_planted_or_loose_credentials_are_refused(tmp_path):
    inv, state = _inv(tmp_path)
    folder = state / "credentials"
    folder.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_text("attacker's token\n")
    (folder / "nats-token").symlink_to(target)
    with pytest.raises(SecretError, match="nats-token: not a regular file"):
        credentials.ensure(inv)
    (folder / "nats-token").unlink()
    (folder / "nats-token").write_text("guessable\n")
    os.chmod(folder / "nats-token", 0o644)
    with pytest.raises(SecretError, match="nats-token: mode 0644 lets others in"):
        credentials.ensure(inv)
    os.chmod(folder / "nats-token", 0o600)
    credentials.ensure(inv)
    os.chmod(folder, 0o777)
    with pytest.raises(SecretError, match="credentials: mode 0777"):
        credentials.ensure(inv)
    if os.geteuid() == 0:  # a directory another user made first
        os.chmod(folder, 0o700)
        os.chown(folder, 65534, 65534)
        with pytest.raises(SecretError, match="owned by uid 65534"):
            credentials.ensure(inv)


def test_external_nats_and_etcd_get_no_generated_credentials(tmp_path):
    inv, state = _inv(tmp_path)
    text = INVENTORY.format(state=state) + '[nats]\nexternal = "nats://n:4222"\n[etcd]\nexternal = "http://e:2379"\n'
    assert credentials.ensure(parse(text, "inv.toml")) == []
    assert credentials.etcd_client_auth(parse(text, "inv.toml")) is None
    assert not (state / "credentials").exists()
