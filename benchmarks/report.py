"""Render a results JSON (``benchmarks/run.py``) as docs/benchmarks.md and the bring-up plot.

    .venv/bin/python -m benchmarks.report [RESULTS.json] [--docs DIR]

Every number in the page comes from the JSON; the prose around it (method, fairness, caveats)
is fixed text kept next to the scenario code it describes. Missing or failed scenarios are shown
as such, never left out silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.common import ROOT

PLOT = "img/benchmarks-bringup.png"


# --- formatting -------------------------------------------------------------------------------------

def secs(s: dict | None, unit: str = "s") -> str:
    """``1.23 s (1.10–1.40)`` from a summary; ``ms`` renders milliseconds."""
    if not s or s.get("median") is None:
        return "—"
    k, fmt = (1000.0, "{:.0f}") if unit == "ms" else (1.0, "{:.1f}" if unit == "CPU-s" else "{:.2f}")
    med, lo, hi = (fmt.format(s[x] * k) for x in ("median", "min", "max"))
    return f"{med} {unit}" + (f" ({lo}–{hi})" if s.get("n", 0) > 1 else "")


def num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def failed(sc: dict | None) -> str | None:
    """A line for a scenario that did not run or failed, else None."""
    if sc is None:
        return "_Not run in this result set._\n"
    if "error" in sc:
        return f"_Failed in this run: `{sc['error']}`._\n"
    return None


def med(s: dict | None) -> float | None:
    return None if not s else s.get("median")


# --- the targets ------------------------------------------------------------------------------------

def targets(sc: dict) -> list[tuple[str, str, str, bool | None]]:
    """(what, measured, target, met) for every target of issue 6 that the results cover."""
    rows: list[tuple[str, str, str, bool | None]] = []

    def add(what: str, value: float | None, shown: str, limit: float, target: str, above: bool = False) -> None:
        ok = None if value is None else (value >= limit if above else value <= limit)
        rows.append((what, shown, target, ok))

    b = sc.get("bringup") or {}
    if b.get("scaling") is not None:
        sizes = b.get("sizes", [])
        add(f"bring-up N={sizes[-1]['n']} vs N={sizes[0]['n']}", b["scaling"], f"{b['scaling']:.2f}×", 1.5, "≤ 1.5×")
    r = sc.get("ray_up") or {}
    if r.get("speedup") is not None:
        add("`ray up` time / dynamo-launch time (4 hosts)", r["speedup"], f"{r['speedup']:.1f}×", 3.0, "≥ 3×", True)
    f = sc.get("failure") or {}
    single = f.get("single") or {}
    if single:
        add("kill -9 → exit recorded (median)", med(single.get("detect")), secs(single.get("detect"), "ms"), 0.5, "≤ 0.5 s")
        add("kill -9 → running again (median)", med(single.get("running")), secs(single.get("running"), "ms"), 1.5, "≤ 1.5 s")
    fp = sc.get("footprint") or {}
    if fp.get("rss_mb"):
        where = f"{fp.get('hosts')} hosts × 3 processes, idle"
        add(f"daemon RSS, {where}", fp["rss_mb"]["max"], f"{fp['rss_mb']['max']:.0f} MB (max)", 120, "≤ 120 MB")
        add(f"daemon CPU, {where}", fp["cpu_pct"], f"{fp['cpu_pct']:.2f} % of a core", 3.0, "≤ 3 %")
    sv = serving_targets(sc.get("serving") or {})
    rows += sv
    o = sc.get("overhead") or {}
    if o.get("dynamo_launch") and med(o["dynamo_launch"]) is not None:
        limit = o.get("target", 0.5)
        add("`up`, 1 host → all READY (fixed overhead, median)", med(o["dynamo_launch"]), secs(o["dynamo_launch"]),
            limit, f"≤ {limit} s")
    cl = sc.get("cli_latency") or {}
    for key, what, limit in (("status", f"`status`, {cl.get('hosts')} hosts", 0.4),
                             ("validate", f"`validate`, {cl.get('inventory_hosts')}-host inventory", 0.5),
                             ("plan", f"`plan`, {cl.get('inventory_hosts')}-host inventory", 0.5)):
        if cl.get(key):
            add(what + " (wall)", med(cl[key]["wall"]), secs(cl[key]["wall"]), limit, f"≤ {limit} s")
    return rows


def _runs(case: dict, side: str) -> list[dict]:
    """The runs of ``side`` in a serving case that measured something (not failed)."""
    return [r for r in (case.get("runs") or {}).get(side, []) if "error" not in r]


def serving_targets(sv: dict) -> list[tuple[str, str, str, bool | None]]:
    """Issue 12's targets from the serving scenario: what "after" measured (and "before" said)."""
    cases = sv.get("cases") or []
    if not cases or "after" not in (sv.get("sides") or {}):
        return []
    rows: list[tuple[str, str, str, bool | None]] = []
    goal = [c for c in cases if c.get("goal")]
    after = [r for c in goal for r in _runs(c, "after")]
    before = [r for c in goal for r in _runs(c, "before")]
    missing = [c["name"] for c in goal if not _runs(c, "after")]
    if after:
        failed = sum(r["failed"] for r in after)
        where = [f"{c['name']}: {n}" for c in goal if (n := sum(r["failed"] for r in _runs(c, "after")))]
        shown = f"{failed} in {len(goal) - len(missing)} cases" + (f" ({', '.join(where)})" if where else "")
        if before:
            shown += f"; before: {sum(r['failed'] for r in before)}"
        rows.append(("serving: failed requests, every fault but the frontend's death", shown, "0",
                     None if missing else failed == 0))
    kills = [c for c in cases if c.get("routing")]
    worst = _worst([r["out_of_routing"] for c in kills for r in _runs(c, "after")])
    if worst is not None:
        old = _worst([r["out_of_routing"] for c in kills for r in _runs(c, "before")])
        shown = _when(worst) + " (worst)" + ("" if old is None else f"; before: {_when(old)}")
        rows.append(("serving: a killed worker out of routing", shown, "≤ 1 s",
                     isinstance(worst, (int, float)) and worst <= 1.0))
    return rows


def _worst(values: list[float | str | None]) -> float | str | None:
    """The largest of some times; a value that is not a number (never happened) is the worst."""
    if not values:
        return None
    late = [x for x in values if not isinstance(x, (int, float))]
    return late[0] if late else max(values)  # type: ignore[type-var]


# --- the fixed prose (the full method is each scenario module's docstring) -------------------------

METHOD = {
    "bringup": """Workload: 3 tiny TCP listeners per host (`benchmarks/workload.py`, started with `python -I -S`),
each ready when its port accepts. dynamo-launch: from launching the real `up` CLI to the last
`ready` event (cross-checked by a 20 ms status poll). The SSH loops do what the reference guides
amount to by hand or by script: for each host in turn, `ssh host 'nohup … &'` with OpenSSH (no
connection sharing), once per process or once per host for all three, then wait until every port
accepts. Tools are interleaved and their order rotated every repeat. The loops do no preflight, no
health checks and no supervision. `benchmarks/bringup.py`.
""",
    "ray_up": """The same 4-host bare Ray cluster (1 CPU and 80 MB object store per node, every port pinned, the
same `ray` of the same environment, no setup commands) brought up by `ray up` with Ray's on-prem
`local` provider (v1 autoscaler: `RAY_UP_enable_autoscaler_v2=0`; `-y --no-config-cache`; its own
`RAY_TMPDIR`; an empty private home on each host so it does not pay this machine's `.bashrc`) and by
dynamo-launch's `[ray]` table. Both are timed from launching the tool to the moment Ray's GCS lists
all 4 hosts alive, seen by one observer on the head polling every 100 ms
(`benchmarks/ray_poll.py`). `benchmarks/ray_up.py`.
""",
    "failure": """kill -9 from the root namespace (exact timestamp) of a supervised stand-in, then the daemon's
events: *exit recorded* (`exited`), *running again* (`started`: the record is on disk and the pid
known), *READY again* (`ready`: the first readiness probe passed). Each process is killed at most
once per `reset_after`, so every restart is the immediate first one of a streak (later ones back off
on purpose). For the gang, one member of a 3-host gang is killed and the times are until every
member runs, and is READY, at the next generation. `benchmarks/failure.py`.
""",
    "footprint": """The daemon supervises the light workload on every host (TCP liveness probe every 5 s); once all
are READY and settled, its `/proc` entries are sampled every second for the idle window. The
same window is measured again with probes off (`check = "process"`) on the same hosts: the
difference is the cost of probing. `benchmarks/footprint.py`.
""",
    "serving": """Real Dynamo 1.6.1 (frontend with KV routing, `dynamo.mocker` workers on a tiny generated model),
real NATS and etcd, started over SSH on the bed by the real `dynamo-launch up`. *Single host*: h1
runs NATS, etcd, the frontend and 2 aggregated replicas. *3 hosts, disaggregated*: h1 runs NATS,
etcd and the frontend; a decode and a prefill group of 2 replicas each on h2 and h3; a third
decode replica is a 2-host gang (`[[processes]]` with one `gang`: a mocker leader on h2 with a
worker's system port and addresses, a sleeping rank on h3, as a `--headless` rank; the mocker
cannot span hosts itself). 8 clients in a closed loop send chat completions (`max_tokens` 8) to
the frontend, each the next as soon as the answer is in (10 s timeout; 0.1 s pause after a
failure); a request *failed* unless it ended in HTTP 200. A watcher reads the frontend's `/health`
every 0.1 s; a worker's instance is the `worker_id` of its system port's `/metrics`. Every case
runs on a fresh cluster with every process READY and every instance routed: ~4 s of load, the
fault, then load until the cluster has settled (every process READY, as many instances routed as
before and none of the dead) and at least 20 s after the fault. *Failure window*: first failed
request's start to the last one's end, relative to the fault. *Out of routing*: the fault → the dead
instance gone from `/health`. *Back in routing*: the fault → as many instances routed as before,
none of the dead. The partition cuts h3's link for 30 s, then restores it. *Before* is the launcher at the baseline revision (run from an exported tree,
its node agent checked on the head), *after* this checkout; same venv, bed and inventory,
alternating per case. `benchmarks/serving.py`, `benchmarks/loadgen.py`.
""",
    "overhead": """What every bring-up pays, whatever the number of hosts: scenario 1's method at one host (the
same 3 listeners, the same two SSH loops interleaved, order rotated), repeated more, with the time
of each phase of every run. Phases, as seconds after the CLI was launched: *first log line* (the
CLI started, imported what `up` needs and read the inventory), *agents up* (SSH connection and
node agent), *preflight passed*, *first start* (first `starting` event), *last started*, *all
READY* (last `ready` event). The floor under the first phase is measured as subprocesses, 10 runs
each. `benchmarks/overhead.py`.
""",
    "cli_latency": """Wall and CPU time of the real CLI as a subprocess, 10 runs each: `status` against a daemon
supervising 32 hosts × 3 processes, and `validate`/`plan` of a generated 256-host inventory (8 GPUs
per host, multi-node vLLM, SGLang and TRT-LLM groups, a Ray-executor group, two processes per host:
771 processes in 96 gangs). `benchmarks/cli_latency.py`.
""",
}

FIXES = """Targets that were missed were profiled (py-spy on the daemon, pyinstrument on the CLI, per-step
timing on the hosts) and what dominated was fixed. Before/after, each measured A/B in one run:

| what dominated | fix | measured | before | after |
|---|---|---|---|---|
| 4 SSH channels per host at bring-up (preflight; agent check, upload, start), each a login shell and an interpreter | one channel runs a bootstrap that checks, receives and starts the agent; preflight asks through the agents | bring-up of 32 hosts, machine's home (3 runs each, interleaved) | 30.8 s (N=1: 2.18 s) | 14.2 s (N=1: 1.48 s) |
| the same | (the agent's start alone) | agent start, 32 hosts, loaded machine | 20.5 s | 7.7 s |
| every spawn saved and mirrored the whole state (N² at bring-up) | saves coalesce to one per loop turn | daemon CPU in `save`, 16 hosts | 0.8 s | one save per turn |
| each shim compiled the 900-line agent | shims import it as a module (bytecode cached) | one shim's start (CPU) | 70 ms | 45 ms |
| each Ray worker's join probe started its own python loading Ray on the head | probes of one cluster share a node-table read (0.5 s) | 4-node Ray bring-up, loaded machine (2 runs each) | 29.7 / 25.9 s, 44 / 40 CPU-s on the hosts | 21.5 / 14.9 s, 29 / 25 CPU-s |
| `ray.init()` in the Ray probe | Ray's GCS client only | one probe | 1.4–1.8 s | 0.6–0.9 s |
| the CLI: a line map of the whole file on success, the plan built twice, linear lookups, eager imports | line map only on error, plan once, indexed lookups, lazy imports | CPU time, median of 10 (`validate` / `plan` 256 hosts, `status` 32 hosts) | 0.48 / 0.53 / 0.33 s | 0.31 / 0.37 / 0.14 s |
| each spawn started a fresh interpreter for its shim (forking the threaded agent is unsafe), ~0.1 s of CPU per process: half of a 32-host bring-up | a fork server, forked before the agent's first thread, forks the shims | bring-up of 32 hosts / its start phase (3 runs each, same bed) | 11.0 s / 5.2 s | 8.6 s / 2.5 s |
| the same | | kill -9 → running again (20 kills) / gang of 3 all running (5 kills) | 75 ms / 172 ms | 21 ms / 76 ms |
| `up` of one host (issue 13): 1.42 s to all READY, 0.72 s of it before the first log line | the rows below | 1 host to all READY, the commit before them against them, interleaved (2 × 7 runs each, same bed; quiet machine, and in brackets with a load average of 3) | 0.79 s, per-host SSH loop 0.27 s (0.96 s, loop 0.29 s) | 0.50 s, loop 0.25 s (0.63 s, loop 0.29 s) |
| the CLI the benchmark launched compiled its modules at every start (`PYTHONDONTWRITEBYTECODE`), as no installed package does | `benchmarks/run.py` writes the package's bytecode first | imports of `up` (fresh interpreter, median of 10) | 0.31 s | 0.19 s |
| `up` loaded gRPC (etcd) and nats-py inside the event loop and took the etcd leader key before connecting to any host | the key is taken while the hosts connect; neither client is loaded while its server refuses connections, and otherwise in a thread | daemon CPU before the first SSH packet | 75 ms (27 + 48) | 0 |
| asyncssh's import made ctypes run gcc and ld, looking for liboqs | only ldconfig's cache is asked during that import | import of the SSH transport (median of 7) | 0.21 s | 0.17 s |
| the first channel of every SSH connection waited out a delayed ACK: sshd keeps Nagle's algorithm on until a session starts | each read acknowledged at once until then (`transport/acks.py`) | first command after connecting (median of 7) | 52 ms | 7 ms |
| the agent's interpreter loaded the environment's site-packages, and every fresh node compiled the agent's 1700 lines | `python -I -S`; the agent's bytecode travels with it and is cached on the node | interpreter start on a bed host / SSH connect → agent's `hello` (12 runs each) | 23 / 99 ms | 8 / 85 ms |
| an agent `exec` (preflight's facts program) was answered at `Popen.wait`'s next look, up to 50 ms late | a pidfd says when the command ends | `exec` of a 90 ms command through the agent (median of 15) | 117 ms | 102 ms |
| preflight's facts program imported `concurrent.futures` and ran `nvidia-smi` and `ip` one after the other | plain threads; both commands started first, read last | the facts program on a bed host (median of 9) | 0.13 s | 0.11 s |
| a failed readiness probe was retried after 100 ms, 200 ms, … | TCP and HTTP probes (a connect from the head) after 20 ms, doubling; command and Ray probes as before | last started → all READY, 1 host | 0.11 s | 0.05 s |
"""

CAVEATS = """All N "hosts" share this machine's cores: every per-host cost (sshd's handshake, the user's
login shell for the one SSH channel per host, the agent's interpreter, one shim per process, the
workload itself) is paid N times on the same 2 cores, which real hosts each pay on their own. The
bring-up curve is therefore an upper bound for a real cluster; the daemon's own share of the CPU is
what the footprint measures. On this machine root's `~/.bashrc` runs `pyenv init` (≈ 0.2 s of CPU for
every SSH command, on every tool that uses SSH alike); a fresh Debian's does not.
"""


# --- sections ---------------------------------------------------------------------------------------

def section_machine(res: dict) -> str:
    m = res.get("machine", {})
    v = m.get("versions", {})
    rows = [["date", m.get("date", "")], ["CPU", f"{m.get('cores')} cores, {m.get('cpu', '')}"],
            ["memory", f"{m.get('memory_gib')} GiB"], ["kernel", m.get("kernel", "")],
            ["Python", m.get("python", "")], ["OpenSSH", m.get("openssh", "")],
            ["versions", ", ".join(f"{k} {x}" for k, x in v.items() if x)], ["commit", m.get("git", "")],
            ["test bed", f"{res.get('bed_hosts')} hosts (own network, PID and mount namespaces; own sshd)"],
            ["hosts' home", "an empty one each, as fresh nodes have" if res.get("private_homes")
             else "this machine's `/root` (its `.bashrc` runs for every SSH command)"],
            ["repeats", str(res.get("options", {}).get("repeats"))]]
    several = runs(res)
    if len(several) > 1:  # `--update` merged runs: which scenario comes from which (the facts: the first's)
        rows = rows[:-1]  # each section says its repeats
        rows.insert(8, ["runs merged here", "; ".join(f"{', '.join(names)}: {date}" + (f" at {git}" if git else "")
                                                     for (date, git), names in several.items())])
    elif res.get("bytecode"):
        rows.append(["bytecode", "the package's, written before the run, as installing it does"])
    return table(["", ""], rows)


def section_bringup(sc: dict | None) -> str:
    bad = failed(sc)
    if bad:
        return bad
    assert sc is not None
    rows = []
    for s in sc["sizes"]:
        dl = s.get("dynamo_launch")
        loops = [s.get("ssh_loop_per_process"), s.get("ssh_loop_per_host")]
        rows.append([str(s["n"]), str(s["n"] * sc.get("per_host", 3)), secs(dl), *(secs(x) for x in loops),
                     *(num(med(x) / med(dl) if med(x) and med(dl) else None, "{:.1f}×") for x in loops)])
    out = table(["hosts", "processes", "dynamo-launch `up` → all READY", "SSH loop, one ssh per process",
                 "SSH loop, one ssh per host", "per-process loop ÷ launcher", "per-host loop ÷ launcher"], rows)
    if sc.get("scaling") is not None:
        out += (f"\nN={sc['sizes'][-1]['n']} takes **{sc['scaling']:.2f}×** the time of N={sc['sizes'][0]['n']} "
                f"for dynamo-launch; {num(sc.get('scaling_ssh_loop_per_host'), '{:.1f}')}× for the per-host SSH loop "
                f"and {num(sc.get('scaling_ssh_loop_per_process'), '{:.1f}')}× for the per-process one.\n")
    out += f"\n![bring-up time against the number of hosts]({PLOT})\n"
    phases = [p for p in ("logging", "agents", "preflight", "first_start", "last_started", "all_ready")
              if any((s.get("phases") or {}).get(p) for s in sc["sizes"])]
    if phases:
        out += "\nWhere dynamo-launch's time goes (median seconds after the CLI was launched):\n\n"
        out += table(["hosts", *phases, "SSH connections per host", "sshd sessions per host"],
                     [[str(s["n"]), *(num(med(s["phases"].get(p))) for p in phases),
                       str(s.get("connections_per_host", {}).get("daemon_tcp_max", "—")),
                       str(s.get("connections_per_host", {}).get("sshd_sessions_max", "—"))] for s in sc["sizes"]])
    busy = [s for s in sc["sizes"] if s.get("cpu_busy")]
    if busy:
        out += ("\nHow busy the machine's cores were from launch to all ready (1.00 = every core, all the time; "
                "every bed host runs on them):\n\n")
        tools = [("dynamo_launch", "dynamo-launch"), ("ssh_loop_per_process", "SSH loop, per process"),
                 ("ssh_loop_per_host", "SSH loop, per host")]
        out += table(["hosts", *(label for _, label in tools)],
                     [[str(s["n"]), *(num(med(s["cpu_busy"].get(t))) for t, _ in tools)] for s in busy])
    return out


def section_ray(sc: dict | None) -> str:
    bad = failed(sc)
    if bad:
        return bad
    assert sc is not None
    tools = [("ray_up", "`ray up` (local provider)"), ("dynamo_launch", "dynamo-launch `up` (`[ray]` table)"),
             ("dynamo_launch_cheap_probe", "dynamo-launch, no join probe (diagnostic)")]
    rows = [[label, secs(sc.get(t)), secs(sc.get(f"{t}_head_alive")), secs((sc.get("last_ray_start") or {}).get(t)),
             secs((sc.get("host_cpu") or {}).get(t), "CPU-s")] for t, label in tools if sc.get(t)]
    out = table(["tool", f"all {sc.get('hosts', 4)} nodes alive", "head alive", "last `ray start` launched",
                 "CPU spent on the hosts"], rows)
    if sc.get("speedup") is not None:
        out += f"\ndynamo-launch is **{sc['speedup']:.1f}×** faster than `ray up` (ratio of medians, same run).\n"
    out += "".join(f"\n- {n}" for n in sc.get("notes", [])) + "\n"
    if sc.get("config"):
        out += "\nThe `ray up` cluster config:\n\n```yaml\n" + sc["config"].strip() + "\n```\n"
    if sc.get("inventory_body"):
        out += "\nThe dynamo-launch inventory's `[ray]` table:\n\n```toml\n" + sc["inventory_body"].strip() + "\n```\n"
    return out


def section_failure(sc: dict | None) -> str:
    bad = failed(sc)
    if bad:
        return bad
    assert sc is not None
    s, g = sc.get("single", {}), sc.get("gang", {})
    rows = [["one process (kill -9)", secs(s.get("detect"), "ms"), secs(s.get("running"), "ms"), secs(s.get("ready"), "ms")],
            [f"gang of {g.get('members', 3)} across hosts (kill -9 one member)", secs(g.get("detect"), "ms"),
             secs(g.get("all_running"), "ms"), secs(g.get("all_ready"), "ms")]]
    return table(["after the kill", "exit recorded", "running again (every member)", "READY again (every member)"], rows)


def section_footprint(sc: dict | None) -> str:
    bad = failed(sc)
    if bad:
        return bad
    assert sc is not None
    p, a = sc.get("probing", {}), sc.get("agents", {})
    off = sc.get("windows", {}).get("probes_off", {})
    rows = [["daemon RSS (sampled every 1 s)", f"{med(sc['rss_mb']):.1f} MB median, {sc['rss_mb']['max']:.1f} MB max",
             f"{med(off.get('rss_mb')) or 0:.1f} MB median"],
            ["daemon CPU over the window", f"{sc['cpu_pct']:.2f} % of a core", f"{p.get('cpu_pct_probes_off', 0):.2f} %"],
            ["probes per second", f"{p.get('probes_per_second', 0):.1f} (TCP, every {p.get('probe_interval')} s)", "0"],
            ["node agent RSS (per host)", f"{med(a.get('rss_mb')) or 0:.1f} MB median", ""],
            ["node agent CPU (per host)", _agent_cpu((a.get("cpu_pct") or {}).get("max"), sc["idle_seconds"]), ""]]
    out = table([f"{sc['hosts']} hosts × 3 processes, {sc['idle_seconds']:.0f} s idle", "probes on", "probes off"], rows)
    out += (f"\nHealth probing costs **{p.get('cpu_pct_per_host', 0):.3f} % of a core per host** "
            f"({num(p.get('cpu_ms_per_probe'))} ms of daemon CPU per probe): the difference between the two "
            "windows, everything else equal.\n")
    return out


def _agent_cpu(pct: float | None, window: float) -> str:
    if pct is None:
        return "—"
    if pct == 0:  # /proc counts 10 ms ticks
        return f"< {100 * 0.01 / window:.3f} % (not one 10 ms tick in {window:.0f} s)"
    return f"{pct:.3f} % max"


def section_cli(sc: dict | None) -> str:
    bad = failed(sc)
    if bad:
        return bad
    assert sc is not None
    labels = {"python_startup": "`python -c pass` (the floor)", "import": "`import dynamo_launch.cli`",
              "import_daemon": "`import dynamo_launch.daemon` (`up`)",
              "import_metrics": "`import dynamo_launch.daemon, dynamo_launch.metrics` (`up` serving metrics)",
              "status": f"`dynamo-launch status` ({sc.get('hosts')} hosts, 3 processes each)",
              "status_json": "`dynamo-launch status --json`",
              "validate": f"`dynamo-launch validate` ({sc.get('inventory_hosts')} hosts)",
              "plan": f"`dynamo-launch plan` ({sc.get('inventory_hosts')} hosts)"}
    rows = [[label, secs(sc[k]["wall"]), secs(sc[k]["cpu"])] for k, label in labels.items() if k in sc]
    out = table(["command", "wall time", "CPU time (user + sys)"], rows)
    if sc.get("validate_says"):
        out += f"\nThe generated inventory, as `validate` sums it up: `{sc['validate_says'].split(': ', 1)[-1]}`\n"
    return out


def _when(x: float | str | None) -> str:
    if x is None:
        return "—"
    if not isinstance(x, (int, float)):
        return "not in the run"
    return f"{x:.2f} s"


def _serving_cell(runs: list[dict], what: str) -> str:
    """One side's value in the serving table (several runs: each, separated by a slash)."""
    if not runs:
        return "—"
    out = []
    for r in runs:
        if what == "failed":
            out.append(f"{r['failed']} of {r['requests']}")
        elif what == "window":
            w = r.get("failure_window")
            out.append("—" if not w else f"{w[0]:.2f} … {w[1]:.2f} s")
        elif what == "after_exit":
            each = [x for x in (r.get("out_after_exit") or {}).values() if x is not None]
            out.append(_when(max(each)) if each else "—")
        else:
            out.append(_when(r.get(what)))
    return " / ".join(out)


def _quoted(text: str) -> str:
    """``text`` as inline code in a table cell (an answer may hold backticks or pipes)."""
    return "`" + text.replace("`", "'").replace("|", "/") + "`"


def section_serving(sc: dict | None) -> str:
    bad = failed(sc)
    if bad:
        return bad
    assert sc is not None
    sides = sc.get("sides") or {}
    names = [n for n in ("before", "after") if n in sides]
    label = {n: f"{n} (`{sides[n]['rev']}`)" for n in names}
    out = ((f"Measured {sc['date']}. " if sc.get("date") else "")
           + "Each cell: " + " → ".join(label[n] for n in names) + ". "
           + ("" if "before" in names else "No baseline in this run. ")
           + f"{sc.get('clients')} clients, requests time out after {sc.get('request_timeout'):g} s"
           + (" (quick run: short windows)" if sc.get("quick") else "") + ".\n\n")
    layouts = {"single": "Single host (h1: NATS, etcd, frontend, 2 aggregated replicas)",
               "disagg": "3 hosts, disaggregated (h1: NATS, etcd, frontend; h2, h3: 2 decode, 2 prefill "
                         "replicas and a 2-host decode gang)"}
    for layout in dict.fromkeys(c["layout"] for c in sc.get("cases", [])):
        rows = []
        for c in (c for c in sc["cases"] if c["layout"] == layout):
            errors = [f"{n}: {r['error'][:100]}" for n in names for r in c["runs"].get(n, []) if "error" in r]
            cells = [" → ".join(_serving_cell(_runs(c, n), what) for n in names)
                     for what in ("failed", "window", "out_of_routing", "after_exit", "back_in_routing", "settled")]
            title = c["title"] + ("" if c.get("goal") else " (not a target)")
            if errors:
                title += " — failed: " + "; ".join(errors)
            rows.append([title, *cells])
        out += ("" if out.endswith("\n\n") else "\n") + f"{layouts.get(layout, layout)}:\n\n" + table(
            ["fault", "failed requests", "failure window", "dead instance out of routing (from the fault)",
             "… from its exit (worst)", "back in routing", "settled"], rows)
    kinds = []
    for c in sc.get("cases", []):
        for n in names:
            got: dict[str, int] = {}
            for r in _runs(c, n):
                for kind, count in r.get("errors", []):
                    got[kind] = got.get(kind, 0) + count
            if got:
                kinds.append([c["name"], n, "; ".join(f"{count} × {_quoted(kind)}" for kind, count in
                                                     sorted(got.items(), key=lambda kv: -kv[1]))])
    if kinds:
        out += "\nWhat the failed requests got:\n\n" + table(["case", "side", "answers"], kinds)
    return out


PHASE_NAMES = {"logging": "first log line", "agents": "agents up", "preflight": "preflight passed",
               "first_start": "first start", "last_started": "last started", "all_ready": "all READY"}


def section_overhead(sc: dict | None) -> str:
    bad = failed(sc)
    if bad:
        return bad
    assert sc is not None
    dl = sc.get("dynamo_launch")
    tools = [("dynamo_launch", "dynamo-launch `up` → all READY"), ("ssh_loop_per_process", "SSH loop, one ssh per process"),
             ("ssh_loop_per_host", "SSH loop, one ssh per host")]
    out = table(["1 host, 3 processes", "time", "loop ÷ launcher"],
                [[label, secs(sc.get(t)), num(ratio_of(sc.get(t), dl), "{:.2f}×") if t != "dynamo_launch" else ""]
                 for t, label in tools if sc.get(t)])
    phases = sc.get("phases") or {}
    rows, before = [], 0.0
    for key, label in PHASE_NAMES.items():
        at = med(phases.get(key))
        if at is None:
            continue
        rows.append([label, num(at), num(at - before), secs(phases.get(key))])
        before = at
    if rows:
        out += ("\nWhere the time goes (medians of every run's phase times; *since* is the difference from the "
                "phase before):\n\n")
        out += table(["phase", "at (s)", "since (s)", "median (min–max)"], rows)
    imports = sc.get("imports") or {}
    labels = {"python_startup": "`python -c pass`: an interpreter's start and exit",
              "up_imports": "the imports of `up` for SSH hosts (`dynamo_launch.cli`, the loader, logging, the daemon, "
                            "the SSH transport)",
              "asyncssh": "… of which `import asyncssh` alone"}
    if imports:
        out += "\nThe first phase's floor (fresh interpreters, 10 runs; the imports timed inside them):\n\n"
        out += table(["what", "time"],
                     [[label, secs(imports.get(k))] for k, label in labels.items() if imports.get(k)])
    return out


def measured(sc: dict | None, res: dict) -> str:
    """``_Measured <date> at commit <c>, N repeats._`` for a scenario of a result set that merges several runs."""
    if not sc or len(runs(res)) < 2 or not sc.get("run"):
        return ""
    r = sc["run"]
    at = f" at commit {r['git']}" if r.get("git") else ""
    repeats = f", {r['repeats']} repeats" if r.get("repeats") else ""
    pyc = ", the package's bytecode written first" if r.get("bytecode") else ""
    return f"_Measured {r.get('date')}{at}{repeats}{pyc}._\n"


def runs(res: dict) -> dict[tuple[str, str], list[str]]:
    """The runs a result set holds (``--update`` merges): ``(date, commit)`` → its scenarios."""
    out: dict[tuple[str, str], list[str]] = {}
    for name, sc in (res.get("scenarios") or {}).items():
        r = (sc or {}).get("run") or {}
        out.setdefault((r.get("date", ""), r.get("git", "")), []).append(name)
    return out


def why_missed(sc: dict) -> str:
    """What the results themselves say about the bring-up and `ray up` targets (empty when met)."""
    out = []
    b = sc.get("bringup") or {}
    if b.get("scaling") is not None and b["scaling"] > 1.5:
        last = b["sizes"][-1]
        busy = med((last.get("cpu_busy") or {}).get("dynamo_launch"))
        out.append(
            f"- **Bring-up scaling** ({b['scaling']:.1f}× at N={last['n']}): every bed host runs on this machine's "
            f"{RES_CORES[0]} cores"
            + (f", which were {100 * busy:.0f} % busy during dynamo-launch's N={last['n']} bring-up" if busy else "")
            + ". The per-host work (sshd's handshake, a login shell, the agent's interpreter, preflight's, one shim "
            "and the workload itself for each process) is paid N times on the same cores, where real hosts each "
            "pay it on their own. The per-host SSH loop, which does strictly less on each host, grows "
            f"{num(b.get('scaling_ssh_loop_per_host'), '{:.0f}')}× over the same range; dynamo-launch's fan-out "
            f"is parallel (one connection per host, all hosts at once), so at N={last['n']} it takes "
            f"{num(ratio_of(last.get('dynamo_launch'), last.get('ssh_loop_per_host')), '{:.2f}')}× the time of "
            "that loop while it also preflights, supervises and health-checks everything. The target assumes hosts with "
            "their own CPUs; on this bed no tool that does work on each host can reach it.")
    o = sc.get("overhead") or {}
    total = med(o.get("dynamo_launch"))
    if total is not None and total > o.get("target", 0.5):
        ph = {k: med(v) for k, v in (o.get("phases") or {}).items()}
        imp = {k: med(v) for k, v in (o.get("imports") or {}).items()}
        busy = med((o.get("cpu_busy") or {}).get("dynamo_launch"))
        if all(ph.get(k) is not None for k in PHASE_NAMES):
            out.append(
                f"- **Fixed overhead** ({total:.2f} s; the per-host SSH loop, which neither checks nor supervises "
                f"anything, {num(med(o.get('ssh_loop_per_host')))} s): what is left is work each step must do, "
                f"on {RES_CORES[0]} cores shared with the bed host's sshd and processes"
                + (f" ({100 * busy:.0f} % busy during these runs, other work included)" if busy else "") + ". "
                f"{ph['logging']:.2f} s pass before the first log line: a bare interpreter takes "
                f"{num(imp.get('python_startup'))} s and the imports `up` needs {num(imp.get('up_imports'))} s, "
                f"of which `import asyncssh` alone (with the cryptography and asyncio it loads) takes "
                f"{num(imp.get('asyncssh'))} s: any SSH client in Python pays it, `up` of a cluster on the local "
                f"host alone no longer does. The SSH handshake and the node agent "
                f"(its own interpreter on the host) take {ph['agents'] - ph['logging']:.2f} s; preflight "
                f"{ph['preflight'] - ph['agents']:.2f} s, most of it a second interpreter on the host that must see "
                f"the environment the workers will see (site-packages, package versions); starting the 3 processes "
                f"{ph['last_started'] - ph['preflight']:.2f} s (a fork each, and the move into their cgroups waits "
                f"for an RCU grace period) and their listeners' own start until the first probe that finds them "
                f"{ph['all_ready'] - ph['last_started']:.2f} s.")
    r = sc.get("ray_up") or {}
    if r.get("speedup") is not None and r["speedup"] < 3:
        cpu = r.get("host_cpu") or {}
        starts = r.get("last_ray_start") or {}
        out.append(
            f"- **Against `ray up`** ({r['speedup']:.1f}×): booting the 4 Ray nodes costs about "
            f"{num(med(cpu.get('ray_up')), '{:.0f}')} CPU-seconds on the hosts whichever tool starts them, so on "
            f"{RES_CORES[0]} cores no tool gets all 4 alive in much under "
            f"{num((med(cpu.get('ray_up')) or 0) / max(RES_CORES[0], 1), '{:.0f}')} s. What the launchers control "
            f"themselves differs far more: dynamo-launch had issued its last `ray start` "
            f"{num(med(starts.get('dynamo_launch')), '{:.1f}')} s after launch, `ray up` (SSH round trips, rsync, "
            f"the autoscaler's 5 s cycle) {num(med(starts.get('ray_up')), '{:.1f}')} s after, "
            f"{num(ratio_of(starts.get('ray_up'), starts.get('dynamo_launch')), '{:.1f}')}× later; on real hosts "
            "that difference is the critical path. Starting all nodes at once also makes them compete for this "
            "machine's cores, which is why dynamo-launch's head is alive later than `ray up`'s.")
    out += why_serving_missed(sc.get("serving") or {})
    return "\n".join(out) + ("\n" if out else "")


def why_serving_missed(sv: dict) -> list[str]:
    """What the serving results say about requests that still failed "after" (empty when none)."""
    out = []
    for c in sv.get("cases") or []:
        runs = [r for r in _runs(c, "after") if r["failed"]] if c.get("goal") else []
        if not runs or c.get("fault") != "partition":
            continue
        r = runs[0]
        gone = r.get("out_of_routing")
        sent = [float(f.split()[0]) for f in r.get("failures", [])]
        early = [t for t in sent if isinstance(gone, (int, float)) and t < gone]
        if len(early) != r["failed"]:  # some were sent after the host left routing: nothing to explain here
            continue
        out.append(
            f"- **Serving, {c['title']}** ({r['failed']} failed): every request that failed was sent before the cut "
            f"host's workers left routing (the first {abs(min(sent)):.2f} s {'before' if min(sent) < 0 else 'after'} "
            f"the cut) and got no answer within the client's {sv.get('request_timeout', 10):g} s. A cut link gives "
            "no error to the frontend: such a request waits "
            "until Dynamo's own request deadline (the baseline's clients got `504 Request deadline exceeded` after "
            "5 s; with migration on it is moved to another worker then, and may or may not make the client's "
            "timeout), or until the link comes back. The launcher takes the host's workers out of routing once the "
            f"host is declared lost ({_when(r.get('out_of_routing'))} after the cut here), which spares every request "
            "sent after that, not those already there.")
    return out


RES_CORES = [2]  # set by render() from the machine facts


def ratio_of(a: dict | None, b: dict | None) -> float | None:
    return med(a) / med(b) if med(a) and med(b) else None


def render(res: dict) -> str:
    sc = res.get("scenarios", {})
    RES_CORES[0] = res.get("machine", {}).get("cores") or 2
    met = targets(sc)
    tgt = table(["target", "measured", "goal", "met"],
                [[w, m, t, {True: "yes", False: "**no**", None: "—"}[ok]] for w, m, t, ok in met])
    parts = [
        "# Benchmarks\n",
        "Generated by `benchmarks/run.py` from `benchmarks/results/latest.json`; do not edit by hand.\n"
        "Every scenario runs on one test bed: N \"hosts\", each with its own network, PID and mount\n"
        "namespaces and its own OpenSSH `sshd`, on one machine. The launcher reaches them over real SSH.\n"
        "Medians with min–max over the repeats; ratios are between medians of the same run.\n",
        "```bash\nsudo .venv/bin/pip install -e '.[bench]'   # matplotlib, py-spy, pyinstrument\n"
        "sudo apt-get install -y rsync                # for `ray up` only\n"
        "sudo .venv/bin/python -m benchmarks.run     # everything; --quick for the smoke run\n"
        "sudo .venv/bin/python -m benchmarks.serving # serving continuity alone, before/after; the rest kept\n"
        "sudo .venv/bin/python -m benchmarks.run --only overhead --update  # one scenario again, the others kept\n```\n",
        "## Machine\n", section_machine(res),
        "## Targets\n", tgt, why_missed(sc),
        "## 1–2. Bring-up scaling, against a plain SSH loop\n", METHOD["bringup"], measured(sc.get("bringup"), res),
        section_bringup(sc.get("bringup")),
        "## 3. Against `ray up`\n", METHOD["ray_up"], measured(sc.get("ray_up"), res), section_ray(sc.get("ray_up")),
        "## 4. Failure detection and repair\n", METHOD["failure"], measured(sc.get("failure"), res),
        section_failure(sc.get("failure")),
        "## 5. Footprint\n", METHOD["footprint"], measured(sc.get("footprint"), res),
        section_footprint(sc.get("footprint")),
        "## 6. CLI latency\n", METHOD["cli_latency"], measured(sc.get("cli_latency"), res),
        section_cli(sc.get("cli_latency")),
        "## 7. Serving continuity\n", METHOD["serving"], section_serving(sc.get("serving")),  # says its own date
        "## 8. Fixed overhead of `up`: one host\n", METHOD["overhead"], measured(sc.get("overhead"), res),
        section_overhead(sc.get("overhead")),
        "## Profiling and fixes\n", FIXES,
        "## Reading these numbers\n", CAVEATS,
    ]
    return "\n".join(parts)


def plot(res: dict, path: Path) -> Path | None:
    """Bring-up time against N for every tool, medians with min–max bars; None without data."""
    sc = (res.get("scenarios") or {}).get("bringup") or {}
    if not sc.get("sizes"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for key, label in (("dynamo_launch", "dynamo-launch up"), ("ssh_loop_per_host", "SSH loop, one ssh per host"),
                       ("ssh_loop_per_process", "SSH loop, one ssh per process")):
        pts = [(s["n"], s[key]) for s in sc["sizes"] if (s.get(key) or {}).get("median") is not None]
        if not pts:
            continue
        xs = [n for n, _ in pts]
        ys = [v["median"] for _, v in pts]
        err = [[v["median"] - v["min"] for _, v in pts], [v["max"] - v["median"] for _, v in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xlabel(f"hosts ({sc.get('per_host', 3)} processes each)")
    ax.set_ylabel("seconds to all ready")
    ax.set_xscale("log", base=2)
    ax.set_xticks([s["n"] for s in sc["sizes"]], [str(s["n"]) for s in sc["sizes"]])
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Bring-up time against the number of hosts (median, min–max)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_docs(res: dict, docs: Path) -> list[Path]:
    """Write ``docs/benchmarks.md`` and its plot; the paths written."""
    written = []
    png = plot(res, docs / PLOT)
    if png:
        written.append(png)
    md = docs / "benchmarks.md"
    md.write_text(render(res))
    return [md, *written]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.report", description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    a = ap.parse_args(argv)
    for p in write_docs(json.loads(a.results.read_text()), a.docs):
        print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
