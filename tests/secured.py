"""Helpers for tests of the launcher's secured NATS and etcd: its generated credentials, and raw
clients (etcd's v3 JSON gateway, the NATS text protocol) that try with or without them."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.error
import urllib.request

__all__ = ["b64", "credential", "etcd_call", "etcd_token", "nats_hello"]


def credential(state_dir: str, name: str) -> str:
    """A credential the daemon generated in ``state_dir`` (``nats-token``, ``etcd-root-password``, …)."""
    with open(os.path.join(state_dir, "credentials", name)) as f:
        return f.read().strip()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def etcd_call(endpoint: str, path: str, body: dict, token: str | None = None, *, context=None) -> dict:
    """POST ``/v3/<path>`` of etcd's JSON gateway (``kv/put``, ``kv/range``, ``lease/grant``…);
    the answer, or ``{"error": …}`` when etcd refuses (keys and values base64). ``context``: the
    ``ssl.SSLContext`` of an https etcd."""
    headers = {"Content-Type": "application/json", **({"Authorization": token} if token else {})}
    req = urllib.request.Request(f"{endpoint}/v3/{path}", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"{}") or {"error": f"HTTP {e.code}"}


def etcd_token(endpoint: str, user: str, password: str, *, context=None) -> str:
    """An auth token of etcd's ``user`` (raises when etcd refuses the password)."""
    r = etcd_call(endpoint, "auth/authenticate", {"name": user, "password": password}, context=context)
    assert "token" in r, r
    return r["token"]


def nats_hello(address: str, port: int, token: str | None = None, publish: str | None = None,
               connect: dict | None = None) -> bytes:
    """Connect (with ``token``, or the CONNECT options ``connect``, when given), optionally publish
    to ``publish``, PING; what the server answered (``…PONG`` when it accepted us,
    ``-ERR 'Authorization Violation'`` when not)."""
    options = {"verbose": False, **({"auth_token": token} if token else {}), **(connect or {})}
    with socket.create_connection((address, port), timeout=5) as s:
        s.recv(4096)  # INFO
        s.sendall(f"CONNECT {json.dumps(options)}\r\n".encode()
                  + (f"PUB {publish} 2\r\n{{}}\r\n".encode() if publish else b"") + b"PING\r\n")
        deadline, got = time.monotonic() + 5, b""
        while b"PONG" not in got and b"-ERR" not in got and time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return got
