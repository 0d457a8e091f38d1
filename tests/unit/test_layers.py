"""The import graph follows the layers of docs/internals.md: no module imports a higher layer, no two
modules import each other (directly or around a longer cycle), the pure layers import no I/O, and
no test module imports another. Read from the source (every import statement, those inside
functions and under ``TYPE_CHECKING`` included), so a late import cannot hide an edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "dynamo_launch"

# Lowest first. A module may import modules of its own layer or of a lower one. Keep in step with
# the table in docs/internals.md ("Layers").
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"", "errors", "tomlpos", "addresses", "retry", "versions", "printable", "secret_shapes",
                    "agent"}),
    ("model", {"model", "reader"}),
    ("inventory", {"placement", "rules", "inventory"}),
    ("plan", {"plan"}),
    ("machines", {"supervisor"}),
    ("adapters", {"load", "secrets", "credentials", "certs", "state", "health", "routing", "transport", "etcd", "mirror", "eventbus", "control",
                  "sdnotify", "metrics", "logs", "preflight", "preflight_multinode", "systemd_unit", "status",
                  "progress", "console"}),
    ("daemon", {"daemon"}),
    ("cli", {"cli"}),
]
PURE = {"foundation", "model", "inventory", "plan", "machines"}
PURE_ADAPTERS = {"progress"}  # renderers of the adapters layer that promise no I/O all the same
IO_MODULES = {"asyncio", "socket", "subprocess", "select", "selectors", "signal", "fcntl", "threading",
              "multiprocessing", "asyncssh", "nats", "aetcd", "structlog", "click", "psutil", "urllib", "http"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, name: str, known: set[str]) -> tuple[set[str], set[str]]:
    """(package modules, other top-level modules) that the file at ``path`` imports."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    ours, others = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "dynamo_launch":
                target = node.module[len("dynamo_launch"):].lstrip(".")
            else:
                others.add((node.module or "").split(".")[0])
                continue
            hits = {f"{target}.{a.name}".strip(".") for a in node.names} & known
            ours |= hits or {target}
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "dynamo_launch":
                    ours.add(a.name[len("dynamo_launch"):].lstrip("."))
                else:
                    others.add(a.name.split(".")[0])
    return {m for m in ours if m != name}, others


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    ours, others = {}, {}
    for name, path in files.items():
        ours[name], others[name] = _imports(path, name, set(files))
    return ours, others


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, (_, members) in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"dynamo_launch.{module} is in no layer: add it to LAYERS and docs/internals.md")


GRAPH, OTHERS = _graph()


def test_every_module_has_a_layer() -> None:
    for module in GRAPH:
        _layer(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_runs_to_a_higher_layer(module: str) -> None:
    mine = _layer(module)
    up = sorted(f"{m} ({LAYERS[_layer(m)][0]})" for m in GRAPH[module] if _layer(m) > mine)
    assert not up, f"{module} ({LAYERS[mine][0]}) imports a higher layer: {', '.join(up)}"


def test_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    # A package's __init__ importing its own submodules, which import their siblings through it,
    # is not a cycle of modules: only count components that are not a package and its members.
    real = [c for c in cycles if not any(all(m == p or m.startswith(p + ".") for m in c) for p in c)]
    assert not real, f"modules that import each other: {real}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if (LAYERS[_layer(m)][0] in PURE and m != "agent")
                                           or m in PURE_ADAPTERS))
def test_pure_modules_import_no_io(module: str) -> None:
    assert not OTHERS[module] & IO_MODULES, f"{module} is pure but imports {sorted(OTHERS[module] & IO_MODULES)}"
    if module in PURE_ADAPTERS:
        assert all(LAYERS[_layer(m)][0] in PURE for m in GRAPH[module]), f"{module} imports an adapter"


def test_the_agent_imports_nothing_of_the_package() -> None:
    assert GRAPH["agent"] == set(), "agent.py runs alone on the nodes: standard library only"


def test_no_test_module_imports_another() -> None:
    offenders = []
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [module or ""]
            if isinstance(node, ast.ImportFrom) and node.level and (module or "").startswith("test_"):
                offenders.append(f"{path.relative_to(ROOT)}: from .{module}")
            for n in names:
                if n and n.split(".")[-1].startswith("test_"):
                    offenders.append(f"{path.relative_to(ROOT)}: {n}")
    assert not offenders, "shared test code belongs in a helper module under tests/: " + "; ".join(offenders)
