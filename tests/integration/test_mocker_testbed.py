"""Real Dynamo on three test-bed hosts: the multi-node layouts rehearsed with the CPU mocker.

`dynamo-launch up` (the real CLI, in the root namespace) starts, over SSH, the real nats-server
and etcd, the real `python -m dynamo.frontend` and real `python -m dynamo.mocker` workers on the
bed's hosts (own network, PID and mount namespaces each). The test process talks to the
frontend at h1's bed address like any client of the cluster would.

- Disaggregated, as the 405B reference layout (examples/mocker-disagg-3node.toml): h1 runs
  NATS, etcd, the frontend and the decode worker; h2 and h3 one prefill worker each. A prefill
  worker is killed with SIGKILL while requests flow; the launcher restarts it and it registers
  again. `down` leaves nothing on any host. Then the same with the two Dynamo settings that make
  the kill invisible to clients (frontend `--migration-limit`, a short `ETCD_LEASE_TTL`).
- Aggregated: two mocker workers (h2, h3) behind `--router-mode kv`; a repeated prompt lands on
  the worker that holds its KV blocks.

The model is a tiny directory made by scripts/make-tiny-model under /var/tmp, which every bed
host sees (/tmp is private per host), and removed afterwards. What Dynamo 1.6.1 really does here
(endpoints in `/health`, the 503s while a killed worker's registration lingers) is written up in
docs/multinode.md.

Needs root (the bed), Dynamo installed the way scripts/bootstrap does (docs/dynamo-install.md),
nats-server and etcd: skipped with the reason otherwise, failed under CI=true.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bed_daemon import FAST, InfraCluster, by_name, run_infra
from tests.daemon_harness import PY, ROOT, wait_until
from tests.infra import missing_launcher_servers
from tests.testbed_fixture import in_ci

pytestmark = pytest.mark.testbed

# Bypass any proxy from the environment: the bed's addresses are only reachable directly.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module", autouse=True)
def prerequisites() -> None:
    """Dynamo (frontend, mocker, tokenizers for the tiny model), nats-server and etcd.

    Module-scoped and autouse, so a missing piece skips (or, under CI=true, fails) before any
    bed is built."""
    missing = []
    probe = subprocess.run([PY, "-c", "import dynamo.frontend, dynamo.mocker, tokenizers"],
                           capture_output=True, text=True, timeout=120, check=False)
    if probe.returncode != 0:
        missing.append("Dynamo is not installed in this venv (scripts/bootstrap installs it): "
                       + probe.stderr.strip()[-200:])
    missing += missing_launcher_servers()
    if missing:
        (pytest.fail if in_ci() else pytest.skip)("; ".join(missing) + (" (CI=true: required)" if in_ci() else ""))


@pytest.fixture(scope="module")
def model() -> Iterator[str]:
    """A tiny model directory every bed host sees at the same path; removed afterwards, with the
    copy the frontend keeps under ~/.cache/dynamo/mdc/by-slug/ (root's home is shared too)."""
    path = f"/var/tmp/dl-mocker-model-{uuid.uuid4().hex[:8]}"
    cache = Path(os.path.expanduser("~root")) / ".cache" / "dynamo" / "mdc" / "by-slug"
    slug = cache / path.strip("/").replace("/", "_")
    try:
        subprocess.run([PY, str(ROOT / "scripts" / "make-tiny-model"), path], check=True, capture_output=True,
                       timeout=120)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(slug, ignore_errors=True)
    assert not os.path.exists(path)


@pytest.fixture
def mocker_cluster(bed, tmp_path):
    """``make(workers, router_mode=, migration_limit=, env=) -> InfraCluster``: the launcher runs
    NATS, etcd and the frontend on h1 (random ports below 32768, Dynamo's limit for system ports,
    and below the ephemeral range, where ZMQ and the request plane bind), plus the given
    ``[[workers]]``. Every process of every launch made is killed on every host at teardown,
    pass or fail."""
    made: list[InfraCluster] = []

    def make(workers: str, *, router_mode: str = "kv", migration_limit: int | None = None,
             env: dict[str, str] | None = None, nats_tls: bool = False) -> InfraCluster:
        base = random.randrange(20000, 32000, 8)
        n_port, n_mon, e_port, e_peer, http, system = range(base, base + 6)
        frontend = f'\n[frontend]\nhttp_port = {http}\nrouter_mode = "{router_mode}"\n'
        if migration_limit is not None:
            frontend += f"migration_limit = {migration_limit}\n"
        frontend += FAST.format(table="frontend")
        env_table = "".join(f'{k} = "{v}"\n' for k, v in (env or {}).items())
        env_table = f"\n[env]\n{env_table}" if env_table else ""
        c = InfraCluster(bed, tmp_path, env_table + frontend + workers, run_infra((n_port, n_mon), (e_port, e_peer), nats_tls=nats_tls))
        text = c.path.read_text()
        assert 'metrics = ""' in text
        c.path.write_text(text.replace('metrics = ""', f'metrics = ""\nsystem_port = {system}', 1))
        c.base = f"http://{bed.host('h1').address}:{http}"
        made.append(c)
        return c

    yield make
    for c in made:
        c.cleanup()


def mocker_group(name: str, role: str, model: str, hosts: list[str]) -> str:
    """A ``[[workers]]`` table of the mocker, with quick probes (the restart policy is the default:
    the first restart is immediate)."""
    return (f'\n[[workers]]\nname = "{name}"\nbackend = "mocker"\nrole = "{role}"\nmodel = "{model}"\n'
            f"hosts = {json.dumps(hosts)}\n" + FAST.format(table="workers"))


# --- HTTP ---------------------------------------------------------------------------------------------

def http(url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with _HTTP.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return 0, str(e).encode()


def get_json(url: str) -> dict | None:
    code, body = http(url, timeout=5)
    return json.loads(body) if code == 200 else None


def models(base: str) -> list[str]:
    got = get_json(f"{base}/v1/models")
    return [m["id"] for m in got["data"]] if got else []


def instances(base: str, addresses: dict[str, str]) -> list[tuple[str, str, str, int]]:
    """The frontend's ``/health`` instances as sorted (component, endpoint, host, instance_id);
    the host is found from the address in the instance's TCP transport."""
    got = get_json(f"{base}/health") or {"instances": []}
    out = []
    for i in got["instances"]:
        address = i["transport"]["tcp"].split("/", 1)[0].rsplit(":", 1)[0]
        out.append((i["component"], i["endpoint"], addresses.get(address, address), i["instance_id"]))
    return sorted(out)


def generate(inst: list[tuple]) -> list[tuple[str, str, int]]:
    """The ``generate`` instances as (component, host, instance_id)."""
    return [(c, h, i) for c, e, h, i in inst if e == "generate"]


def chat(base: str, model: str, content: str, max_tokens: int = 8, timeout: float = 10.0) -> tuple[int, dict | str]:
    code, body = http(f"{base}/v1/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
        "nvext": {"extra_fields": ["worker_id"]}}, timeout)
    if code == 200:
        return code, json.loads(body)
    return code, body.decode(errors="replace")[:300]


def wait_served(c: InfraCluster, model: str, want_generate: int, addresses: dict[str, str], timeout: float = 30.0):
    """Until ``/v1/models`` names the model and ``/health`` lists ``want_generate`` generate
    instances (an instance is listed some tens of ms before it is servable)."""
    ok = wait_until(lambda: models(c.base) == [model]
                    and len(generate(instances(c.base, addresses))) == want_generate, timeout, 0.1)
    assert ok, (models(c.base), instances(c.base, addresses), c.log())


def down_leaves_nothing(c: InfraCluster, bed) -> float:
    """`down`: exit 0, the daemon exits 0, no process of the launch and no nats-server, etcd or
    Dynamo process on any host, the frontend gone. Returns how long `down` took."""
    t0 = time.monotonic()
    r = c.cli("down", str(c.path))
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert c.proc.wait(30) == 0, c.log()
    assert c.scan_all() == {"h1": [], "h2": [], "h3": []}
    for h in ("h1", "h2", "h3"):
        # The bracket keeps `sh -c`'s own command line from matching the pattern.
        script = "pgrep -a -f '[d]ynamo[.](frontend|mocker)'; pgrep -a -x nats-server; pgrep -a -x etcd; true"
        ps = bed.exec(h, ["sh", "-c", script], capture_output=True, text=True, timeout=10)
        assert ps.stdout.strip() == "", (h, ps.stdout)
    assert http(f"{c.base}/health", timeout=2)[0] == 0
    return took


# --- the disaggregated layout -------------------------------------------------------------------------

def up_in_place(c: InfraCluster, workers: dict[str, tuple[str, str]]) -> dict[str, dict]:
    """`up`, then every process READY: NATS, etcd and the frontend on h1, each worker on the host
    and in the role given (name → (host, role)). The processes of that status, by name."""
    procs = by_name(c.up(timeout=90))
    expected = {"nats": ("h1", "nats"), "etcd": ("h1", "etcd"), "frontend": ("h1", "frontend"), **workers}
    assert {n: (p["host"], p["role"], p["state"]) for n, p in procs.items()} == \
        {n: (host, role, "READY") for n, (host, role) in expected.items()}, procs
    return procs


def disaggregated(mocker_cluster, model: str, bed, **kw) -> tuple[InfraCluster, dict[str, int], float]:
    """Bring up the 405B layout (decode on h1, prefill on h2 and h3) and check it serves: every
    process READY where the plan puts it, ``/health`` listing exactly what Dynamo 1.6.1 registers,
    a chat completion through a prefill and the decode worker, a streamed completion. Returns the
    cluster, the generate instance id per host, and the seconds from `up` to served."""
    addresses = {h.address: h.name for h in bed.hosts}
    c = mocker_cluster(mocker_group("decode", "decode", model, ["h1"])
                       + mocker_group("prefill", "prefill", model, ["h2", "h3"]), **kw)
    t0 = time.monotonic()
    procs = up_in_place(c, {"decode-0": ("h1", "decode"), "prefill-0": ("h2", "prefill"),
                            "prefill-1": ("h3", "prefill")})
    t_ready = time.monotonic() - t0
    on_hosts = c.scan_all()
    for name, p in procs.items():  # the pid `status` shows runs on that host
        assert [x["pid"] for x in on_hosts[p["host"]] if x["name"] == name] == [p["pid"]], (name, on_hosts)
    text = c.cli("status", "--cluster", c.name)
    assert text.returncode == 0 and "6/6 processes ready" in text.stdout, text.stdout
    wait_served(c, model, 3, addresses)
    t_served = time.monotonic() - t0
    print(f"\ndisaggregated: every process READY {t_ready:.1f}s after `up`, model served at {t_served:.1f}s")

    # What Dynamo 1.6.1 lists: the decode worker registers dynamo.backend.generate only; each
    # prefill worker dynamo.prefill.generate plus its own worker_kv_query_source_<hex> endpoint.
    health = get_json(f"{c.base}/health")
    assert health["status"] == "healthy"
    inst = instances(c.base, addresses)
    gen = generate(inst)
    assert sorted((comp, h) for comp, h, _ in gen) == [("backend", "h1"), ("prefill", "h2"), ("prefill", "h3")], inst
    assert len({i for _, _, i in gen}) == 3
    ids = {h: i for _, h, i in gen}
    kvq = [(comp, h, i) for comp, e, h, i in inst if e.startswith("worker_kv_query_source_")]
    assert sorted(kvq) == sorted([("prefill", "h2", ids["h2"]), ("prefill", "h3", ids["h3"])]), inst
    assert len(inst) == 5, inst
    endpoints = sorted(health["endpoints"])
    assert endpoints[:2] == ["dyn://dynamo.backend.generate", "dyn://dynamo.prefill.generate"], endpoints
    assert len(endpoints) == 4 and all(e.startswith("dyn://dynamo.prefill.worker_kv_query_source_")
                                       for e in endpoints[2:]), endpoints

    # A chat completion goes through a prefill worker and the decode worker.
    code, got = chat(c.base, model, "Say hello in one word.")
    assert code == 200, got
    assert got["choices"][0]["message"]["content"] and got["usage"]["completion_tokens"] == 8
    used = got["nvext"]["worker_id"]
    assert used["decode_worker_id"] == ids["h1"] and used["prefill_worker_id"] in (ids["h2"], ids["h3"]), used
    # A streamed (text) completion.
    code, body = http(f"{c.base}/v1/completions", {"model": model, "prompt": "Once upon a time", "max_tokens": 6,
                                                    "stream": True})
    assert code == 200, body
    chunks = [line[len("data: "):] for line in body.decode().splitlines() if line.startswith("data: ")]
    assert chunks[-1] == "[DONE]" and len(chunks) >= 3, chunks
    assert "".join(json.loads(x)["choices"][0].get("text") or "" for x in chunks[:-1]).strip()
    return c, ids, t_served


class KillRun:
    """What happened after a worker was killed with requests flowing (seconds after the kill)."""

    def __init__(self) -> None:
        self.log: list[tuple[float, int, str]] = []  # (t, HTTP status, prefill instance id or error body)
        self.t_new: float | None = None  # a new instance of the host's worker listed in /health
        self.t_up: float | None = None  # the launcher shows it READY again (new pid)
        self.t_gone: float | None = None  # the killed instance no longer listed in /health
        self.new_id = 0

    @property
    def failed(self) -> list[tuple[float, int, str]]:
        return [(round(t, 2), code, what[:60]) for t, code, what in self.log if code != 200]

    def served_by(self, instance_id: int) -> int:
        return sum(1 for _, code, what in self.log if code == 200 and what == str(instance_id))


def kill_prefill_under_load(c: InfraCluster, model: str, bed, old_id: int, *, budget: float = 45.0,
                            settle: int = 30) -> KillRun:
    """kill -9 prefill-0 on h2 (inside h2) and send chat requests one after the other until the
    launcher has it READY again, its new instance is listed, the old one is gone, and ``settle``
    more requests were sent: at most 1000 requests and ``budget`` seconds. Then checks what the
    launcher did: restarted once (new pid, generation 2, last exit SIGKILL), nothing else touched,
    one copy on h2, a new instance id in /health."""
    addresses = {h.address: h.name for h in bed.hosts}
    before = by_name(c.status())["prefill-0"]
    run = KillRun()
    t_kill = time.monotonic()
    c.kill_on_host("h2", before["pid"])
    after_gone, next_status = 0, 0.0
    for i in range(1000):
        now = time.monotonic()
        stuck = (f"no recovery in {budget}s: new instance {run.t_new}, READY {run.t_up}, old gone {run.t_gone}: "
                 f"{run.log[-10:]} {instances(c.base, addresses)}")
        assert now < t_kill + budget, (stuck, c.log())
        code, got = chat(c.base, model, f"request {i}: tell me something", timeout=10)
        run.log.append((time.monotonic() - t_kill, code,
                        str(got["nvext"]["worker_id"]["prefill_worker_id"]) if code == 200 else got))
        listed = instances(c.base, addresses)
        on_h2 = [x for _, h, x in generate(listed) if h == "h2"]
        if run.t_new is None and any(x != old_id for x in on_h2):
            run.t_new = time.monotonic() - t_kill
        if run.t_gone is None and listed and old_id not in on_h2:  # (empty: /health did not answer)
            run.t_gone = time.monotonic() - t_kill
        if run.t_gone is not None:
            after_gone += 1
        if run.t_up is None and now >= next_status:
            p = by_name(c.status())["prefill-0"]
            if p["pid"] not in (None, before["pid"]) and p["state"] == "READY":
                run.t_up = time.monotonic() - t_kill
            next_status = now + 0.25
        if run.t_new is not None and run.t_up is not None and run.t_gone is not None and after_gone >= settle:
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"1000 requests and still not recovered: {run.log[-10:]}")

    final = by_name(c.status())
    p = final["prefill-0"]
    assert p["pid"] != before["pid"] and p["restarts"] == 1 and p["generation"] == 2 and p["state"] == "READY", p
    assert p["last_exit"] == {"code": None, "signal": signal.SIGKILL}, p
    assert all(q["restarts"] == 0 and q["state"] == "READY" for n, q in final.items() if n != "prefill-0"), final
    assert [x["pid"] for x in c.scan("h2") if x["name"] == "prefill-0"] == [p["pid"]]  # one copy, the new one
    gen = generate(instances(c.base, addresses))
    run.new_id = next(x for _, h, x in gen if h == "h2")
    assert run.new_id != old_id and len(gen) == 3, gen
    print(f"kill -9 prefill-0 on h2 → new instance in /health {run.t_new:.2f}s, READY {run.t_up:.2f}s, "
          f"old instance gone from /health {run.t_gone:.2f}s")
    print(f"requests after the kill: {len(run.log)} in {run.log[-1][0]:.1f}s, failed {len(run.failed)}: "
          f"{run.failed}; prefills served by the new instance: {run.served_by(run.new_id)}")
    return run


# --- the tests ----------------------------------------------------------------------------------------

def test_disaggregated_405b_layout_on_three_hosts_survives_a_prefill_kill(mocker_cluster, model, bed):
    t0 = time.monotonic()
    c, ids, _ = disaggregated(mocker_cluster, model, bed)
    run = kill_prefill_under_load(c, model, bed, ids["h2"])
    # The daemon revokes the dead worker's etcd lease as soon as its exit is reported, so the
    # prefill router stops choosing it at once (Dynamo alone keeps it for 25-30 s), and the
    # frontend moves a request that met it to another worker (`--migration-limit 3`, the default
    # behind more than one replica): no client sees an error. The new instance takes prefill work.
    assert run.failed == [], run.failed
    assert run.t_gone < 1.0, run.t_gone
    assert run.served_by(run.new_id) >= 1
    assert "--migration-limit 3" in c.cli("plan", str(c.path)).stdout
    took = down_leaves_nothing(c, bed)
    print(f"down: {took:.1f}s; total {time.monotonic() - t0:.1f}s")


def test_disaggregated_without_migration_the_dead_worker_still_leaves_routing_at_once(mocker_cluster, model, bed):
    """``migration_limit = 0`` (Dynamo's own default): the daemon's removal of the dead instance
    alone. Only a request the dead worker had in hand can fail (503, "Remote prefill failed");
    nothing fails once it is out of routing, which takes well under a second."""
    t0 = time.monotonic()
    c, ids, _ = disaggregated(mocker_cluster, model, bed, migration_limit=0)
    assert "--migration-limit" not in c.cli("plan", str(c.path)).stdout
    run = kill_prefill_under_load(c, model, bed, ids["h2"], budget=30.0)
    assert run.t_gone < 1.0, run.t_gone
    assert all(code == 503 for _, code, _ in run.failed) and len(run.failed) <= 1, run.failed
    assert all(code == 200 for t, code, _ in run.log if t > run.t_gone + 0.5)
    assert run.served_by(run.new_id) >= 1
    out = c.cli("events", "--json", "--cluster", c.name).stdout
    removed = [e for e in map(json.loads, out.splitlines()) if e["kind"] == "deregistered"]
    assert [(e["process"], e["reason"], e["instance"]) for e in removed] == [("prefill-0", "exited", f"{ids['h2']:x}")]
    took = down_leaves_nothing(c, bed)
    print(f"down: {took:.1f}s; total {time.monotonic() - t0:.1f}s")


# --- the aggregated layout ----------------------------------------------------------------------------

def test_aggregated_kv_routing_on_two_hosts_reuses_the_cache(mocker_cluster, model, bed):
    addresses = {h.address: h.name for h in bed.hosts}
    c = mocker_cluster(mocker_group("agg", "aggregated", model, ["h2", "h3"]))
    t0 = time.monotonic()
    up_in_place(c, {"agg-0": ("h2", "worker"), "agg-1": ("h3", "worker")})
    t_ready = time.monotonic() - t0
    wait_served(c, model, 2, addresses)
    gen = generate(instances(c.base, addresses))
    assert sorted((comp, h) for comp, h, _ in gen) == [("backend", "h2"), ("backend", "h3")], gen
    ids = {i: h for _, h, i in gen}

    # Long enough for several KV blocks (64 tokens each); the same prompt every time.
    prompt = " ".join(f"The launcher starts worker number {k} on its host and watches it." for k in range(30))
    code, first = chat(c.base, model, prompt)
    assert code == 200, first
    assert first["choices"][0]["message"]["content"] and first["usage"]["prompt_tokens"] > 256
    worker = first["nvext"]["worker_id"]["decode_worker_id"]
    assert worker in ids, (worker, ids)
    time.sleep(0.5)  # the worker's KV events reach the frontend's router over ZMQ
    repeats = []
    for _ in range(3):
        code, again = chat(c.base, model, prompt)
        assert code == 200, again
        repeats.append((again["nvext"]["worker_id"]["decode_worker_id"],
                        again["usage"]["prompt_tokens_details"]["cached_tokens"]))
    print(f"\naggregated: every process READY {t_ready:.1f}s after `up`; prompt of "
          f"{first['usage']['prompt_tokens']} tokens on {ids[worker]} (cached "
          f"{first['usage']['prompt_tokens_details']['cached_tokens']}), then {[(ids.get(w), n) for w, n in repeats]}")
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert all(w == worker and n > 0 for w, n in repeats), repeats
    took = down_leaves_nothing(c, bed)
    print(f"down: {took:.1f}s; total {time.monotonic() - t0:.1f}s")


def test_the_real_frontend_and_mocker_serve_over_tls_nats_with_the_cluster_ca(mocker_cluster, model, bed):
    """Dynamo itself, not a stand-in, trusts the generated cluster CA for NATS through the variable
    the launcher sets (NATS_TLS_CA_CERT_PATH, a file the agent wrote on each node) and serves across
    hosts. (etcd TLS with a private CA is refused next to Dynamo: docs/security.md.)"""
    addresses = {h.address: h.name for h in bed.hosts}
    c = mocker_cluster(mocker_group("agg", "aggregated", model, ["h2", "h3"]), nats_tls=True)
    try:
        up_in_place(c, {"agg-0": ("h2", "worker"), "agg-1": ("h3", "worker")})
    except AssertionError:
        for name in ("frontend", "agg-0"):
            print(c.cli("logs", name, "--cluster", c.name, "-n", "30").stdout)
        raise
    plan = json.loads(c.cli("plan", "--json", str(c.path)).stdout)
    assert plan["nats_url"].startswith("tls://"), plan["nats_url"]
    wait_served(c, model, 2, addresses)
    code, answer = chat(c.base, model, "Hello over TLS")
    assert code == 200 and answer["choices"][0]["message"]["content"], answer
    down_leaves_nothing(c, bed)


def test_a_partitioned_worker_host_leaves_routing_once_it_is_declared_lost(mocker_cluster, model, bed):
    """h2 (prefill-0) cut off the network: once the daemon declares h2 lost, it asks prefill-0 from
    the head, gets no answer, and revokes its lease; the frontend stops routing to it and requests
    are served by decode-0 and prefill-1. What was in flight to h2 is reported, not asserted away."""
    addresses = {h.address: h.name for h in bed.hosts}
    c, ids, _ = disaggregated(mocker_cluster, model, bed)
    log: list[tuple[float, int]] = []
    bed.link("h2", False)
    t_cut = time.monotonic()
    t_gone = None
    try:
        while time.monotonic() - t_cut < 25:
            code, _ = chat(c.base, model, "during the partition", timeout=10)
            log.append((time.monotonic() - t_cut, code))
            if t_gone is None and ids["h2"] not in [x for _, _, x in generate(instances(c.base, addresses))]:
                t_gone = time.monotonic() - t_cut
            if t_gone is not None and time.monotonic() - t_cut > t_gone + 3:
                break
    finally:
        bed.link("h2", True)
    assert t_gone is not None and t_gone < 12, (t_gone, log)
    after = [code for t, code in log if t > t_gone + 0.5]
    assert after and all(code == 200 for code in after), log
    events = [json.loads(x) for x in c.cli("events", "--json", "--cluster", c.name).stdout.splitlines()]
    removed = [(e["process"], e["reason"]) for e in events if e["kind"] == "deregistered"]
    assert ("prefill-0", "host unreachable") in removed, events[-15:]
    failed = [(round(t, 2), code) for t, code in log if code != 200]
    print(f"\npartition of h2: prefill-0 out of routing {t_gone:.2f}s after the cut; "
          f"{len(log)} requests, failed {failed}")
    # Healed: exactly one prefill-0 again, READY (its old copy exited when its lease was revoked).
    snap = c.wait(lambda s: by_name(s)["prefill-0"]["state"] == "READY", 60)
    assert [x["pid"] for x in c.scan("h2") if x["name"] == "prefill-0"] == [by_name(snap)["prefill-0"]["pid"]]
    down_leaves_nothing(c, bed)
