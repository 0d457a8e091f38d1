"""What an API client sees while the launcher replaces workers, on the real embedded default (real
NATS, etcd, Dynamo frontend, two mocker workers behind KV routing), under a closed-loop load of
8 clients (docs/supervision.md, "What an API client sees"):

- a worker replica is READY only once the frontend routes to it (its instance, read from its own
  /metrics, is in the frontend's /health), and status says so;
- kill -9 of a replica under load: no request fails (the frontend moves the dead worker's requests
  to the other one, `--migration-limit 3` being the default behind two replicas), and the dead
  instance leaves the frontend's routing within a second (the daemon revokes its lease);
- `reload` of the changed group and `restart` of the group, under load: replaced one replica at a
  time, each new one routed before the next goes down; no request fails.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request

from tests.daemon_harness import wait_until
from tests.demo_cluster import Demo, closed_loop, demo_cluster


def _instance_from_metrics(demo: Demo, name: str) -> int:
    port = 20000 + os.getpid() % 10000 + int(name[-1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        ids = set(re.findall(r'worker_id="([0-9a-f]+)"', r.read().decode()))
    assert len(ids) == 1, ids
    return int(ids.pop(), 16)


def test_no_client_sees_an_error_when_a_worker_dies_or_is_replaced(tmp_path):
    with demo_cluster(tmp_path) as demo:
        frontend = demo.process("frontend")
        assert frontend["state"] == "READY"
        argv = demo.cli("plan", str(demo.inventory)).stdout
        assert "--migration-limit 3" in argv  # two replicas behind the frontend: migration on

        # Routing-aware readiness: each replica is READY as the instance the frontend routes to.
        for name in ("mocker-0", "mocker-1"):
            row = demo.process(name)
            instance = _instance_from_metrics(demo, name)
            assert row["instance"] == f"{instance:x}" and instance in demo.instances()
            assert row["routing"] == f"the frontend routes to instance {instance:x}"
        table = demo.cli("status").stdout
        assert re.search(r"mocker-0 .* READY .*the frontend routes to instance [0-9a-f]+", table), table

        # kill -9 of one replica under load.
        victim = demo.process("mocker-0")
        dead = int(victim["instance"], 16)
        seq = demo.events()[-1]["seq"]
        gone: dict[str, float] = {}

        def kill() -> None:
            t = time.monotonic()
            os.kill(victim["pid"], signal.SIGKILL)  # the daemon's worker: this test started it
            wait_until(lambda: dead not in demo.instances(), 10, 0.01)
            gone["after"] = time.monotonic() - t

        run = closed_loop(demo.base, demo.model, seconds=7, fault=kill)
        assert run.failed == [], run.failed[:5]
        assert len(run.log) > 50
        assert gone["after"] < 1.0, gone  # out of routing within a second (Dynamo alone: ~25 s)
        events = demo.events(seq)
        removed = [e for e in events if e["kind"] == "deregistered" and e["process"] == "mocker-0"]
        assert removed and removed[0]["instance"] == f"{dead:x}", events
        assert wait_until(lambda: demo.process("mocker-0")["state"] == "READY", 30, 0.1)
        again = demo.process("mocker-0")
        assert again["instance"] != victim["instance"] and int(again["instance"], 16) in demo.instances()

        # A rolling reload of the changed group under load.
        changed = tmp_path / "changed.toml"
        changed.write_text(demo.inventory.read_text().replace("replicas = 2", 'replicas = 2\nenv = { CHANGED = "1" }'))
        seq = demo.events()[-1]["seq"]
        done: dict[str, str] = {}

        def reload() -> None:
            r = demo.cli("reload", str(changed), "--wait")
            done["out"], done["code"] = r.stdout + r.stderr, str(r.returncode)

        run = closed_loop(demo.base, demo.model, seconds=9, fault=reload)
        assert done["code"] == "0", done
        assert "step 1/2: mocker-0 READY (generation 3)" in done["out"], done
        assert "step 2/2: mocker-1 READY (generation 2)" in done["out"], done
        assert run.failed == [], run.failed[:5]
        order = [(e["kind"], e["process"]) for e in demo.events(seq) if e["kind"] in ("ready", "stopping")]
        assert order == [("stopping", "mocker-0"), ("ready", "mocker-0"), ("stopping", "mocker-1"),
                         ("ready", "mocker-1")], order  # the second goes down only once the first is back

        # A rolling restart of the group under load.
        done.clear()

        def restart() -> None:
            r = demo.cli("restart", "mocker", "--wait")
            done["out"], done["code"] = r.stdout + r.stderr, str(r.returncode)

        run = closed_loop(demo.base, demo.model, seconds=9, fault=restart)
        assert done["code"] == "0" and "restarting mocker in 2 step(s): mocker-0; mocker-1" in done["out"], done
        assert run.failed == [], run.failed[:5]


def test_a_group_taken_down_whole_says_so(tmp_path):
    with demo_cluster(tmp_path) as demo:
        r = demo.cli("restart", "mocker", "--all-at-once", "--wait")
        assert r.returncode == 0, r.stderr
        assert "note: mocker-0, mocker-1: every replica goes down at once: its model is unavailable" in r.stdout
        assert "step 1/1: mocker-0 READY (generation 2), mocker-1 READY (generation 2)" in r.stdout
        r = demo.cli("restart", "mocker-1")  # one replica of two: nothing to warn about, and no waiting
        assert r.returncode == 0 and "note:" not in r.stdout and "--wait" in r.stdout, r.stdout
