"""The embedded default end to end, for real: `dynamo-launch up` of inventory.example.toml (with
its ports and paths moved out of the way) runs NATS, etcd, the Dynamo frontend and two mocker
workers on this machine; the OpenAI API answers; SIGTERM stops everything.

Needs Dynamo installed the way scripts/bootstrap does (docs/dynamo-install.md), nats-server and
etcd: skipped with the reason otherwise, failed under CI=true."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dynamo_launch import control
from tests.daemon_harness import ROOT, free_port, scan_launch, wait_until
from tests.testbed_fixture import in_ci


def _require_dynamo() -> None:
    probe = subprocess.run([sys.executable, "-c", "import dynamo.frontend, dynamo.mocker, tokenizers"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        reason = "Dynamo is not installed in this venv (scripts/bootstrap installs it): " + probe.stderr.strip()[-200:]
        (pytest.fail if in_ci() else pytest.skip)(reason)


def _post(url: str, body: dict, timeout: float = 30) -> bytes:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.status == 200
        return r.read()


def test_embedded_default_serves_chat_completions_and_stops_clean(tmp_path):
    _require_dynamo()
    model = tmp_path / "model"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make-tiny-model"), str(model)], check=True,
                   capture_output=True, timeout=120)
    ports = {name: free_port() for name in ("http", "nats", "mon", "etcd", "peer")}
    system = 20000 + os.getpid() % 10000  # two consecutive ports, ≤ 32767 as Dynamo requires
    text = (ROOT / "inventory.example.toml").read_text()
    text = text.replace('state_dir = "/tmp/dynamo-launch-demo"', f'state_dir = "{tmp_path / "state"}"\n'
                        f'system_port = {system}\nmetrics = ""')
    text = text.replace("http_port = 8000", f"http_port = {ports['http']}")
    text = text.replace('model = "/tmp/dynamo-launch-demo/model"', f'model = "{model}"')
    text += (f"\n[nats]\nport = {ports['nats']}\nmonitor_port = {ports['mon']}\n"
             f"\n[etcd]\nclient_port = {ports['etcd']}\npeer_port = {ports['peer']}\n")
    inv = tmp_path / "demo.toml"
    inv.write_text(text)
    env = {**os.environ, "DYNAMO_LAUNCH_RUNTIME_DIR": str(tmp_path / "run"), "PYTHONPATH": str(ROOT)}
    sock = str(tmp_path / "run" / "demo.sock")
    err = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "dynamo_launch.cli", "up", str(inv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    launch = ""
    base = f"http://127.0.0.1:{ports['http']}"
    try:
        def status() -> dict | None:
            try:
                return control.request(sock, "status", timeout=5)
            except control.ControlError:
                return None

        def all_ready() -> bool:
            s = status()
            return bool(s) and all(p["state"] == "READY" for p in s["processes"])

        t0 = time.monotonic()
        assert wait_until(lambda: all_ready() or proc.poll() is not None, 120, 0.2), (tmp_path / "up.log").read_text()
        assert proc.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
        ready_s = time.monotonic() - t0
        snap = status()
        launch = snap["launch_id"]
        assert [p["name"] for p in snap["processes"]] == ["nats", "etcd", "frontend", "mocker-0", "mocker-1"]

        def models() -> list[str]:
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=5) as r:
                    return [m["id"] for m in json.loads(r.read())["data"]]
            except OSError:
                return []

        assert wait_until(lambda: models() == [str(model)], 30, 0.2), models()
        chat = json.loads(_post(f"{base}/v1/chat/completions", {
            "model": str(model), "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}))
        assert chat["choices"][0]["message"]["content"] and chat["usage"]["completion_tokens"] == 8
        stream = _post(f"{base}/v1/chat/completions", {
            "model": str(model), "messages": [{"role": "user", "content": "stream please"}], "max_tokens": 8,
            "stream": True}).decode()
        chunks = [line for line in stream.splitlines() if line.startswith("data: ")]
        assert chunks[-1] == "data: [DONE]" and len(chunks) >= 3
        with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
            health = json.loads(r.read())
        assert len({i["instance_id"] for i in health["instances"] if i["endpoint"] == "generate"}) == 2
        print(f"embedded default: every process READY {ready_s:.1f}s after `up`")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
        assert scan_launch(launch) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
        if launch:
            for p in scan_launch(launch):
                os.kill(p["pid"], signal.SIGKILL)
        # the frontend keeps a copy of every model's files under ~/.cache/dynamo/mdc/by-slug/
        slug = Path.home() / ".cache" / "dynamo" / "mdc" / "by-slug" / str(model).strip("/").replace("/", "_")
        shutil.rmtree(slug, ignore_errors=True)
