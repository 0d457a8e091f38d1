"""What the metrics endpoint serves (issue 13, item 12): the daemon's families from a status snapshot
through prometheus-client, negotiated as its own server does (text 0.0.4 or OpenMetrics, gzip, HEAD),
scraped over real HTTP from the real server on loopback; and that only the daemon pays for the
library. How the server withstands hostile clients is tests/unit/test_control_hostile.py's.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from dynamo_launch import __version__
from dynamo_launch.metrics import MetricsServer, registry
from tests.snapshots import proc, snap

# Every family the daemon exposed before prometheus-client, with its type and label set: dashboards
# and alerts query these, so they change only on purpose.
FAMILIES = {
    "dynamo_launch_process_state": ("gauge", {"cluster", "host", "process", "state"}),
    "dynamo_launch_process_restarts_total": ("counter", {"cluster", "host", "process"}),
    "dynamo_launch_process_generation": ("gauge", {"cluster", "host", "process"}),
    "dynamo_launch_process_last_exit_code": ("gauge", {"cluster", "host", "process"}),
    "dynamo_launch_process_last_exit_signal": ("gauge", {"cluster", "host", "process"}),
    "dynamo_launch_probe_seconds": ("gauge", {"cluster", "host", "process"}),
    "dynamo_launch_process_uptime_seconds": ("gauge", {"cluster", "host", "process"}),
    "dynamo_launch_process_tree_processes": ("gauge", {"cluster", "host", "process"}),
    "dynamo_launch_process_memory_bytes": ("gauge", {"cluster", "host", "process"}),
    "dynamo_launch_gang_state": ("gauge", {"cluster", "gang", "state"}),
    "dynamo_launch_gang_restarts_total": ("counter", {"cluster", "gang"}),
    "dynamo_launch_host_up": ("gauge", {"cluster", "host"}),
    "dynamo_launch_up_seconds": ("gauge", {"cluster"}),
    "dynamo_launch_reload_seconds": ("gauge", {"cluster"}),
    "dynamo_launch_reloads_total": ("counter", {"cluster"}),
    "dynamo_launch_build_info": ("gauge", {"cluster", "version", "python_version", "dynamo_version"}),  # new
}
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def _busy() -> dict:
    """A snapshot with a value in every family: a crash-looping worker, a ready frontend, a gang."""
    return snap(
        proc("frontend", "READY", pid=7, uptime=50.0, probe_seconds=0.0123, tree_procs=3, memory_bytes=1234567891),
        proc("worker-0", "BACKOFF", host="node2", restarts=2, generation=3, group="g",
             last_exit={"code": 1, "signal": None}),
        proc("worker-1", "STOPPED", host="node3", generation=3, group="g", last_exit={"code": None, "signal": 9}),
        cluster='prod "a"', hosts=[{"name": "node1", "up": True}, {"name": "node2", "up": False}],
        gangs=[{"name": "g", "state": "BACKOFF", "restarts": 1}],
        timings={"reloads": 2, "up_seconds": 42.5, "reload_seconds": 1.25})


Response = tuple[int, dict[str, str], bytes]


def _request(port: int, method: str = "GET", target: str = "/metrics", **headers: str) -> Response:
    """One request with a real HTTP client: status, headers (lower-cased names), body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, headers={k.replace("_", "-"): v for k, v in headers.items()})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _scrape(snapshot: Callable[[], dict], *requests: dict, on_error: Callable[[str], None] | None = None,
            dynamo_version: str = "1.6.1") -> list[Response]:
    """Serve ``snapshot`` on a free loopback port (the daemon's way: snapshots taken on the loop)
    and send ``requests`` (keyword arguments of :func:`_request`), one after another."""

    async def main() -> list[Response]:
        reg = registry(snapshot, dynamo_version=dynamo_version, loop=asyncio.get_running_loop())
        server = MetricsServer("127.0.0.1", 0, reg, on_error=on_error)
        await server.start()
        try:
            return [await asyncio.to_thread(_request, server.port, **r) for r in requests]
        finally:
            await server.close()

    return asyncio.run(main())


def _ours(text: str) -> list[str]:
    """The sample lines of our own families (not process_*/python_*, which change between scrapes)."""
    return [line for line in text.splitlines() if line.startswith("dynamo_launch_")]


def test_every_family_keeps_its_name_type_and_labels_in_the_text_format() -> None:
    [(status, headers, body)] = _scrape(_busy, {})
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    ours = {f.name: f for f in parse_text(text) if f.name.startswith("dynamo_launch_")}
    # the text parser names counters without _total: map them back to the exposed names
    got = {(n + "_total" if f.type == "counter" else n): (f.type, {k for s in f.samples for k in s.labels})
           for n, f in ours.items()}
    assert got == FAMILIES
    for name, (kind, _) in FAMILIES.items():  # exactly as before: counters' HELP/TYPE keep their _total
        assert f"# TYPE {name} {kind}\n" in text


def test_the_samples_say_what_the_snapshot_says() -> None:
    [(_, _, body)] = _scrape(_busy, {})
    lines = set(_ours(body.decode()))
    c = 'cluster="prod \\"a\\""'
    assert {f'dynamo_launch_process_state{{{c},host="node1",process="frontend",state="READY"}} 1.0',
            f'dynamo_launch_process_state{{{c},host="node1",process="frontend",state="STARTING"}} 0.0',
            f'dynamo_launch_process_restarts_total{{{c},host="node2",process="worker-0"}} 2.0',
            f'dynamo_launch_process_generation{{{c},host="node2",process="worker-0"}} 3.0',
            f'dynamo_launch_process_last_exit_code{{{c},host="node2",process="worker-0"}} 1.0',
            f'dynamo_launch_process_last_exit_signal{{{c},host="node3",process="worker-1"}} 9.0',
            f'dynamo_launch_probe_seconds{{{c},host="node1",process="frontend"}} 0.0123',
            f'dynamo_launch_process_uptime_seconds{{{c},host="node1",process="frontend"}} 50.0',
            f'dynamo_launch_process_tree_processes{{{c},host="node1",process="frontend"}} 3.0',
            # every digit (the hand-written text printed 6 significant ones: 1.23457e+09)
            f'dynamo_launch_process_memory_bytes{{{c},host="node1",process="frontend"}} 1.234567891e+09',
            f'dynamo_launch_gang_state{{{c},gang="g",state="BACKOFF"}} 1.0',
            f'dynamo_launch_gang_restarts_total{{{c},gang="g"}} 1.0',
            f'dynamo_launch_host_up{{{c},host="node2"}} 0.0',
            f'dynamo_launch_up_seconds{{{c}}} 42.5',
            f'dynamo_launch_reload_seconds{{{c}}} 1.25',
            f'dynamo_launch_reloads_total{{{c}}} 2.0'} <= lines
    states = [x for x in lines if x.startswith("dynamo_launch_process_state{") and 'process="worker-1"' in x]
    assert len(states) == 9 and sum(x.endswith(" 1.0") for x in states) == 1  # one-hot over every state
    # absent, not 0, where the snapshot has no value: no exit yet, no probe, not running
    assert not [x for x in lines if "last_exit_code" in x and "frontend" in x]
    assert not [x for x in lines if ("uptime" in x or "probe_seconds" in x) and "worker-" in x]


def test_build_info_and_the_daemon_process_come_with_the_families() -> None:
    [(_, _, body)] = _scrape(_busy, {}, dynamo_version="1.6.1")
    text = body.decode()
    python = ".".join(map(str, sys.version_info[:3]))
    assert (f'dynamo_launch_build_info{{cluster="prod \\"a\\"",dynamo_version="1.6.1",python_version="{python}",'
            f'version="{__version__}"}} 1.0') in text
    names = {f.name for f in parse_text(text)}
    assert {"process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds", "process_start_time_seconds",
            "python_info", "python_gc_collections"} <= names


def test_openmetrics_when_asked_with_counters_named_as_openmetrics_names_them() -> None:
    [(status, headers, body)] = _scrape(_busy, {"Accept": OPENMETRICS})
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text; version=1.0.0;")
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}  # the parser refuses anything not OpenMetrics
    # the family loses _total, its samples keep it: a query sees the same series as with the text format
    assert "# TYPE dynamo_launch_process_restarts counter\n" in text
    assert families["dynamo_launch_process_restarts"].samples[0].name == "dynamo_launch_process_restarts_total"
    assert families["dynamo_launch_build"].type == "info"
    [(_, _, plain)] = _scrape(_busy, {})
    assert sorted(_ours(text)) == sorted(_ours(plain.decode()))  # the same series and values either way


def test_head_answers_get_s_headers_without_a_body_and_gzip_when_asked() -> None:
    got, head, zipped = _scrape(_busy, {}, {"method": "HEAD"}, {"Accept_Encoding": "gzip, deflate"})
    assert head[0] == 200 and head[2] == b""
    assert head[1]["content-type"] == got[1]["content-type"]
    assert int(head[1]["content-length"]) > 0
    assert "content-encoding" not in got[1] and zipped[1]["content-encoding"] == "gzip"
    assert int(zipped[1]["content-length"]) == len(zipped[2])
    assert _ours(gzip.decompress(zipped[2]).decode()) == _ours(got[2].decode())


def test_name_filter_and_other_paths() -> None:
    picked, other = _scrape(_busy, {"target": "/metrics?name[]=dynamo_launch_host_up&name[]=dynamo_launch_build_info"},
                            {"target": "/"})
    assert {f.name for f in parse_text(picked[2].decode())} == {"dynamo_launch_host_up", "dynamo_launch_build_info"}
    assert other[0] == 404


def test_each_scrape_takes_a_fresh_snapshot_on_the_loop_thread() -> None:
    states = iter(["STARTING", "READY"])
    threads: list[int] = []

    def snapshot() -> dict:
        threads.append(threading.get_ident())
        return snap(proc("web", next(states), restarts=len(threads)))

    loop_thread: list[int] = []

    async def main() -> list[Response]:
        loop_thread.append(threading.get_ident())
        server = MetricsServer("127.0.0.1", 0, registry(snapshot, loop=asyncio.get_running_loop()))
        await server.start()
        try:
            return [await asyncio.to_thread(_request, server.port) for _ in range(2)]
        finally:
            await server.close()

    first, second = (_ours(r[2].decode()) for r in asyncio.run(main()))
    assert threads == loop_thread * 2  # never read from the encoding thread while the loop changes it
    assert 'dynamo_launch_process_state{cluster="c",host="node1",process="web",state="STARTING"} 1.0' in first
    assert 'dynamo_launch_process_state{cluster="c",host="node1",process="web",state="READY"} 1.0' in second
    assert 'dynamo_launch_process_restarts_total{cluster="c",host="node1",process="web"} 2.0' in second


def test_a_failing_snapshot_is_a_500_and_the_next_scrape_is_served() -> None:
    calls: list[int] = []
    errors: list[str] = []

    def snapshot() -> dict:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("runner")
        return _busy()

    failed, served = _scrape(snapshot, {}, {}, on_error=errors.append)
    assert failed[0] == 500 and served[0] == 200
    assert errors == ["KeyError: 'runner'"]


@pytest.mark.parametrize("module, loaded", [("dynamo_launch.metrics", True), ("", False)])
def test_only_serving_metrics_imports_prometheus_client(module: str, loaded: bool) -> None:
    # Every module of the package but metrics (the CLI and every command's lazy imports, the daemon
    # that `down` builds included): none may load prometheus-client; importing metrics must (so the
    # check cannot pass for a wrong reason).
    code = ("import importlib, pkgutil, sys, dynamo_launch\n"
            "for m in pkgutil.walk_packages(dynamo_launch.__path__, 'dynamo_launch.'):\n"
            "    if m.name not in ('dynamo_launch.metrics', 'dynamo_launch.__main__'):\n"
            "        importlib.import_module(m.name)\n"
            f"if {module!r}:\n"
            f"    importlib.import_module({module!r})\n"
            "print('prometheus_client' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(loaded)
