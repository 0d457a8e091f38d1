"""The embedded default end to end, for real: `dynamo-launch up` of inventory.example.toml (with
its ports and paths moved out of the way) runs NATS, etcd, the Dynamo frontend and two mocker
workers on this machine; the OpenAI API answers; SIGTERM stops everything.

Needs Dynamo installed the way scripts/bootstrap does (docs/dynamo-install.md), nats-server and
etcd: skipped with the reason otherwise, failed under CI=true."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

from tests.daemon_harness import scan_launch, wait_until
from tests.demo_cluster import demo_cluster


def _post(url: str, body: dict, timeout: float = 30) -> bytes:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.status == 200
        return r.read()


def test_embedded_default_serves_chat_completions_and_stops_clean(tmp_path):
    t0 = time.monotonic()
    with demo_cluster(tmp_path) as demo:
        ready_s = time.monotonic() - t0  # includes making the tiny model
        snap = demo.status()
        assert [p["name"] for p in snap["processes"]] == ["nats", "etcd", "frontend", "mocker-0", "mocker-1"]
        base, model = demo.base, demo.model

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
        assert len(demo.instances()) == 2
        print(f"embedded default: every process READY {ready_s:.1f}s after `up`")
        demo.proc.send_signal(signal.SIGTERM)
        assert demo.proc.wait(90) == 0
        assert scan_launch(demo.launch) == []
