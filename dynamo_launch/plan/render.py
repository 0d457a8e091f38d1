"""Plans as text an operator can read and paste, and as JSON for machines (pure).

Secrets are never values here: a ``${VAR}`` reference renders as
``NAME="$VAR"`` and a ``file:`` reference as ``NAME="$(cat PATH)"`` — the
command stays pasteable while the secret itself never appears.

Every field is escaped as it is printed (:mod:`dynamo_launch.printable`): a comment line shows a
control character as ``\\x1b`` / ``\\n``, a shell word with one is ANSI-C quoted (``$'a\\nb'``), so
no value can end a ``#`` comment, add a command to the pasted text or reach the terminal raw.
"""

from __future__ import annotations

import enum
import json
from dataclasses import fields, is_dataclass
from typing import Any

from ..model import SecretRef
from ..printable import clean, shell_quote
from .spec import Env, Plan, ProcessSpec

__all__ = ["command_text", "count", "env_text", "to_json", "to_text"]

_WIDTH = 88


def env_text(env: Env) -> str:
    """``NAME=value`` with the value quoted for a POSIX shell, secrets by reference."""
    value = env.value
    if isinstance(value, SecretRef):
        shown = f'"${value.ref}"' if value.kind == "env" else f'"$(cat {shell_quote(value.ref)})"'
        return f"{env.name}={shown}"
    return f"{env.name}={shell_quote(value)}"


def command_text(proc: ProcessSpec) -> str:
    """The process as one pasteable shell command (env prefix, then argv)."""
    words = [env_text(e) for e in proc.env] + [shell_quote(a) for a in proc.argv]
    flat = " ".join(words)
    if len(flat) <= _WIDTH:
        return flat
    lines = [env_text(e) for e in proc.env]
    lines += _argv_lines(proc.argv)
    return " \\\n".join(lines)


def _argv_lines(argv: tuple[str, ...]) -> list[str]:
    """One line per flag with its value; a positional after a flag's value (mpirun's payload) starts a line."""
    lines: list[list[str]] = []
    kinds: list[str] = []
    for arg in argv:
        flag = arg.startswith("-")
        if lines and kinds[-1] == "program" and (arg == "-m" or not flag):
            lines[-1].append(shell_quote(arg))  # `python3 -m dynamo.vllm`, `ray start`
        elif lines and not flag and kinds[-1] == "flag" and len(lines[-1]) == 1:
            lines[-1].append(shell_quote(arg))  # the flag's value
        else:
            lines.append([shell_quote(arg)])
            kinds.append("flag" if flag else "program")
    return [" ".join(lines[0])] + ["  " + " ".join(words) for words in lines[1:]]


def count(n: int, noun: str) -> str:
    """``1 host``, ``2 hosts``, ``3 processes``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def to_text(plan: Plan) -> str:
    """Per host, in start order, each process's conditions and exact command line."""
    order = {p.name: i for i, p in enumerate(plan.processes, start=1)}
    out = [clean(line) for line in (
        f"# dynamo-launch plan for cluster {plan.cluster!r}: {count(len(plan.hosts), 'host')}, "
        f"{count(len(plan.processes), 'process')}, {count(len(plan.gangs), 'gang')}",
        f"# NATS_SERVER={plan.nats_url}  ETCD_ENDPOINTS={plan.etcd_url}",
        "# [n] is the start order across the cluster; a process starts when all it waits for holds.",
    )]
    for gang in plan.gangs:
        out.append(clean(f"# gang {gang.name}: {', '.join(gang.members)} — restarted together"))
    for host in plan.hosts:
        procs = plan.on_host(host.name)
        how = "local" if host.local else f"ssh {host.ssh.user}@{host.address}:{host.ssh.port}"
        out += ["", clean(f"## {host.name} ({host.address}, {how}) — {count(len(procs), 'process')}")]
        if not procs:
            out.append("# nothing runs here (e.g. reached by the leader's mpirun)")
        for p in procs:
            out += ["", *map(clean, _describe(p, order[p.name]))]
            if p.cwd != plan.work_dir:
                out.append(f"cd {shell_quote(p.cwd)}")
            out.append(command_text(p))
    return "\n".join(out) + "\n"


def _describe(p: ProcessSpec, n: int) -> list[str]:
    tags = [p.kind]
    if p.group:
        tags.append(f"gang {p.group}{' leader' if p.leader else ''}")
    if p.gpus:
        tags.append(f"GPUs {','.join(map(str, p.gpus))}")
    lines = [f"# [{n}] {p.name} ({'; '.join(tags)})"]
    if p.depends_on:
        lines.append(f"#   waits for: {'; '.join(g.describe() for g in p.depends_on)}")
    ready = p.readiness.describe()
    if p.readiness.kind.value == "process":
        ready = f"alive for {p.start_secs:g}s"
    lines.append(f"#   ready when: {ready} (within {p.startup_timeout:g}s)")
    if p.liveness is not None:
        lines.append(f"#   liveness: {p.liveness.describe()} every {p.liveness.interval:g}s, {p.liveness.failure_threshold} failures → restart")
    restart = p.restart
    policy = f"{restart.policy.value}, backoff {restart.backoff_initial:g}s→{restart.backoff_max:g}s"
    policy += ", never gives up" if p.never_give_up else f", at most {restart.max_restarts} in {restart.restart_window:g}s"
    lines.append(f"#   restart: {policy}; log: {p.log_file}")
    for f in p.files:
        lines.append(f"#   file {f.name} (0600, written by the agent from the head's {f.value})")
    return lines


def to_json(plan: Plan) -> str:
    """The plan as JSON (secrets as references, never values)."""
    return json.dumps(_jsonable(plan), indent=2, sort_keys=False) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, SecretRef):
        return {"secret": str(value)}
    if isinstance(value, Env):
        return {"name": value.name, "value": _jsonable(value.value)}
    if isinstance(value, enum.Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in fields(value):
            item = getattr(value, f.name)
            if f.name in ("files", "ca") and not item:
                continue  # only TLS clusters have them: other plans read as before
            out[f.name] = [port for port, _ in item] if f.name == "ports" else _jsonable(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
