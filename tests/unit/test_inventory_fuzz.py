"""Property tests: whatever the text, the loader gives a model or located problems — nothing else.

(a) random documents built from the loader's own key vocabulary, with plausible and random
values of every TOML type; (b) mutations of every shipped example (a key deleted, a key
misspelled, a value's type changed, two numbers swapped, a table duplicated). For each:
``parse`` returns an :class:`Inventory` that plans, or raises :class:`InventoryError` whose
every problem is one line, located at a line of the text. A few go through the CLI as well.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dynamo_launch.cli import main
from dynamo_launch.errors import InventoryError
from dynamo_launch.load import plan_text
from dynamo_launch.model import Inventory
from tests.inventory_keys import accepted_keys

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(ROOT.glob("examples/*.toml")) + [ROOT / "inventory.example.toml"]
TEXTS = {p.name: p.read_text() for p in EXAMPLES}
VOCABULARY = accepted_keys()
# Bounded so the file runs in seconds; DYNAMO_LAUNCH_FUZZ_EXAMPLES=5000 digs deeper.
EXAMPLES_PER_TEST = int(os.environ.get("DYNAMO_LAUNCH_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES_PER_TEST, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the property ------------------------------------------------------------------------


def check(text: str) -> Inventory | InventoryError:
    """Parse ``text``; assert the outcome is a plannable model or well-formed problems."""
    try:
        inventory, plan = plan_text(text, "inv.toml")  # a model the loader accepts always plans
    except InventoryError as e:
        assert e.problems, "an InventoryError without problems"
        last_line = text.count("\n") + 1
        for p in e.problems:
            assert isinstance(p.line, int) and 1 <= p.line <= last_line, (p, last_line)
            assert p.message and p.message.strip(), p
            assert "\n" not in p.message and "\r" not in p.message, p
            assert "\n" not in p.key and "\r" not in p.key, p
            assert p.file == "inv.toml"
            line = str(p)
            assert line.startswith(f"inv.toml:{p.line}: ") and len(line.splitlines()) == 1, line
        assert e.problems == sorted(e.problems), "problems are not in line order"
        return e
    assert isinstance(inventory, Inventory) and plan.cluster == inventory.cluster.name
    return inventory


# -- a small TOML writer (tomllib reads only) -------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _string(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _string(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dump(doc: dict[str, Any], *, inline: bool = False) -> str:
    """TOML for ``doc``: sub-tables as ``[a.b]`` headers (or inline tables), arrays of tables as ``[[a]]``."""
    lines: list[str] = []

    def table(path: list[str], t: dict[str, Any], depth: int) -> None:
        nested = []
        for k, v in t.items():
            if (isinstance(v, dict) and not (inline and depth > 0)) or _is_table_array(v):
                nested.append((k, v))
            else:
                lines.append(f"{_key(k)} = {_value(v)}")
        for k, v in nested:
            sub = path + [_key(k)]
            if isinstance(v, dict):
                lines.append(f"\n[{'.'.join(sub)}]")
                table(sub, v, depth + 1)
            else:
                for item in v:
                    lines.append(f"\n[[{'.'.join(sub)}]]")
                    table(sub, item, depth + 1)

    table([], doc, 0)
    return "\n".join(lines) + "\n"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# -- (a) random documents from the key vocabulary ----------------------------------------------

HOST_NAMES = ["node1", "node2", "node3", "node4", "local", "gpu_5.lab"]
REQUIRED = {
    "cluster": ("name", "head"),
    "hosts": ("name", "address"),
    "workers": ("name", "backend", "model", "hosts"),
    "processes": ("name", "hosts", "command"),
    "ray": ("head",),
}

scalars = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.booleans(),
    st.dates(),
    st.datetimes(),
    st.times(),
)
anything = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=6), scalars, max_size=3),
)


def _env(pairs: list[tuple[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.lists(st.sampled_from(pairs), max_size=3, unique_by=lambda kv: kv[0]).map(dict)


# Per key: (values an operator means, values an operator gets wrong). Keys not listed take
# durations; keys ending in "port" take ports.
PLAUSIBLE: dict[str, tuple[list[Any], list[Any]]] = {
    "gpus": ([8, 8, 8, 4, 16, 0], [-1, 2000]),
    "local": ([False], [True]),
    "backend": (["vllm", "vllm", "sglang", "trtllm", "mocker"], ["tgi"]),
    "role": (["aggregated", "aggregated", "prefill", "decode"], ["encode"]),
    "executor": (["mp", "ray"], ["mpi"]),
    "model": (["m", "deepseek-ai/DeepSeek-R1", "/models/tiny"], [""]),
    "tensor_parallel_size": ([1, 1, 2, 4, 8, 16], [0, 3, 5000]),
    "pipeline_parallel_size": ([1, 1, 2], [0, 3]),
    "data_parallel_size": ([1, 1, 2, 16], [0, 3]),
    "replicas": ([1, 2], [0, 5]),
    "extra_args": (
        [[], ["--enforce-eager"], ["-q", "--trust-remote-code"]],
        [["--headless"], ["--tp", "8"], ["--model=x"]],
    ),
    "command": ([["/bin/x"], ["run", "--flag"]], [[]]),
    "depends_on": ([[], ["nats"], ["etcd", "nats"]], [["missing"], ["frontend"], ["ray"], ["w"], ["web"]]),
    "gang": (["pair"], ["nats", "Bad", "a-0", "w", "web"]),
    "policy": (["always", "on-failure", "never"], ["sometimes"]),
    "check": (["auto", "process", "tcp", "http"], ["ping", "command"]),
    "path": (["/health", "/"], ["health"]),
    "router_mode": (["kv", "round-robin", "random"], ["fastest"]),
    "dynamo_version": (["1.6.1"], ["latest", "0.9.0", "2"]),  # only verified releases (dynamo_launch/versions.py)
    "dp_load_balancing": (["hybrid", "internal"], ["round-robin"]),
    "network_interface": (["ens1f0", "eth0", "ib0"], ["", "eth 0", "a-very-long-interface-name"]),
    "user": (["root", "dynamo"], ["bad user"]),
    "key_file": (["~/.ssh/id_ed25519", "keys/id", "/etc/key"], [""]),
    "known_hosts": (["~/.ssh/known_hosts"], [""]),
    "python": (["python3", "/opt/dynamo/venv/bin/python"], [3]),
    "binary": (["nats-server", "/usr/local/bin/etcd"], [["etcd"]]),
    "num_cpus": ([0, 2, 8], [-1]),
    "num_gpus": ([0, 8], [-1]),
    "object_store_memory": ([200_000_000], [1000]),
    "dynamo": ([False, True], ["yes"]),
    "max_restarts": ([0, 3, 5], [-1]),
    "failure_threshold": ([1, 3], [0]),
    "keepalive_count_max": ([1, 3], [0]),
    "labels": ([{}, {"rack": "a"}, {"rack": "b", "zone": "z1"}], [{"rack": 1}, "rack=a"]),
}
GOOD_ENV = [
    ("HF_HOME", "/models"),
    ("LOG", "info"),
    ("HF_TOKEN", "${HF_TOKEN}"),
    ("API_KEY", "file:/etc/key"),
    ("EMPTY_TOKEN", ""),
]
BAD_ENV = [("HF_TOKEN", "hf_" + "a" * 30), ("DB_PASSWORD", "hunter2"), ("1BAD", "x"), ("LOG", 3), ("TOKEN", "file:rel")]


def plausible(key: str, section: str, hosts: list[str], bad: bool) -> st.SearchStrategy[Any]:
    """A value an operator might write for ``key`` in ``section``: meant (``bad`` false) or mistaken."""
    hosts = hosts or ["node1"]
    if key == "name":
        if section == "hosts":
            return st.sampled_from(hosts + ["bad name"] if bad else hosts)
        if section == "cluster":
            return st.just("Bad Name" if bad else "c")
        good = ["w", "decode", "prefill", "web", "p", "a", "b"]
        return st.sampled_from(["nats", "ray-x", "Bad", "a-0", "a-0-ray", "web-node1", ""] if bad else good)
    if key in ("head", "host"):
        return st.sampled_from(["nowhere", ""] if bad else hosts)
    if key in ("hosts", "workers"):
        if bad:
            return st.sampled_from([[], [hosts[0], hosts[0]], ["nowhere"], hosts[0]])
        return st.lists(st.sampled_from(hosts), min_size=1, max_size=len(hosts), unique=True)
    if key == "address":
        return st.sampled_from(["not an address", "10.0.0.1", ""] if bad else ["10.0.0.1", "::1", "gpu1.example.com"])
    if key == "external":
        if bad:
            return st.sampled_from(["10.0.0.9", "nats://a b", "http://"])
        return st.just("nats://10.0.0.9:4222" if section == "nats" else "https://e1:2379,https://e2:2379")
    if key == "env":
        return _env(BAD_ENV + GOOD_ENV if bad else GOOD_ENV)
    if key.endswith(("_dir", "_root")) or key == "cwd":
        return st.sampled_from(["rel/x", "", "~/x"] if bad else ["/srv/x", "/var/lib/x"])
    if key.endswith("port"):
        return st.sampled_from(
            [0, 70000, 4222, 2379, 8222, 9091, 6379] if bad else [8000, 8001, 9000, 9090, 29500, 29501, 13445, 7000]
        )
    good, wrong = PLAUSIBLE.get(key, ([0.5, 1, 5.0, 30, 600.0], [-1, -0.5]))  # the durations
    return st.sampled_from(wrong if bad else good)


def _typo(key: str) -> st.SearchStrategy[str]:
    return st.sampled_from([key[:-1], key + "s", key.replace("_", "-"), key.upper(), key[1:] + key[0]]).filter(bool)


class Noise:
    """A biased coin: true ``chaos`` times in 20 (hypothesis' own draws favour their bounds)."""

    def __init__(self, rnd: random.Random, chaos: int):
        self.rnd, self.chaos = rnd, chaos

    def __call__(self) -> bool:
        return self.rnd.random() * 20 < self.chaos


@st.composite
def tables(draw: st.DrawFn, section: str, hosts: list[str], noise: Noise) -> dict[str, Any]:
    """One table of ``section``: its required keys, some optional ones, and as much noise as asked:
    ``noise()`` says when a required key is dropped, a value is mistaken or arbitrary, a key misspelled."""
    allowed = sorted(VOCABULARY[section] or ())
    name = section.split(".")[-1]
    required = [k for k in REQUIRED.get(name, ()) if not noise()]
    optional = draw(st.lists(st.sampled_from(allowed), max_size=4, unique=True)) if allowed else []
    if name == "processes" and "hosts" in required and draw(st.booleans()):
        required[required.index("hosts")] = "host"
    out: dict[str, Any] = {}
    for key in dict.fromkeys([*required, *optional]):
        sub = f"{section}.{key}"
        if VOCABULARY.get(sub) and not noise():
            out[key] = draw(tables(sub, hosts, noise))
        elif noise():
            out[key] = draw(anything) if draw(st.booleans()) else draw(plausible(key, name, hosts, bad=True))
        else:
            value = draw(plausible(key, name, hosts, bad=False))
            out[key] = value[0] if key == "host" and isinstance(value, list) else value
    if allowed and noise():
        out[draw(_typo(draw(st.sampled_from(allowed))))] = draw(anything)
    return out


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """An inventory document, from nearly valid (no noise) to mostly noise."""
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))  # st.randoms() is biased to its extremes
    noise = Noise(rnd, rnd.choice([0, 0, 0, 0, 1, 2, 5, 20]))
    hosts = draw(st.lists(st.sampled_from(HOST_NAMES), min_size=1, max_size=4, unique=True))
    doc: dict[str, Any] = {}
    if not noise():
        doc["cluster"] = draw(tables("cluster", hosts, noise))
    for section in ("ssh", "env", "nats", "etcd", "frontend", "ray"):
        if rnd.random() < 0.3:
            doc[section] = (
                draw(plausible("env", "", hosts, noise())) if section == "env" else draw(tables(section, hosts, noise))
            )
    doc["hosts"] = []
    for i, name in enumerate(hosts):
        t = draw(tables("hosts", hosts, noise))
        if "name" in t and not noise():
            t["name"] = name
        if "address" in t and not noise():
            t["address"] = f"10.0.0.{i + 1}"
        if t.get("name") == doc.get("cluster", {}).get("head") and not noise():
            t["local"] = draw(st.booleans())
        doc["hosts"].append(t)
    for section, chance in (("workers", 0.7), ("processes", 0.3)):
        if rnd.random() < chance:
            doc[section] = draw(st.lists(tables(section, hosts, noise), min_size=1, max_size=3))
            for i, t in enumerate(doc[section]):
                if "name" in t and not noise():
                    t["name"] = f"{t['name']}{i}" if isinstance(t["name"], str) and t["name"] else f"x{i}"
    if noise():
        doc[draw(_typo(draw(st.sampled_from(sorted(VOCABULARY[""])))))] = draw(anything)
    return doc


@FUZZ
@given(documents(), st.booleans())
def test_random_documents_give_a_model_or_located_problems(doc: dict[str, Any], inline: bool) -> None:
    text = dump(doc, inline=inline)
    assert _same(tomllib.loads(text), doc), "the fuzz writer produced different TOML than intended"
    outcome = check(text)
    if isinstance(outcome, InventoryError):
        lines = text.split("\n")  # not splitlines(): TOML ends lines at \n only, strings may hold U+2028
        for p in outcome.problems:
            if p.message.startswith("unknown key"):
                name = p.key.rsplit(".", 1)[-1]
                if _BARE_KEY.fullmatch(name):
                    assert name in lines[p.line - 1], f"{p} does not point at the key"


# -- (b) mutations of the shipped examples -------------------------------------------------

_ASSIGNMENT = re.compile(r"^(?P<key>[A-Za-z0-9_-]+)(?P<eq>\s*=\s*)(?P<value>.*)$")
_INT_VALUE = re.compile(r"^(?P<num>-?\d+)(?P<rest>\s*(#.*)?)$")
_HEADER = re.compile(r"^\s*\[")
REPLACEMENTS = [
    '"text"',
    "42",
    "4.5",
    "true",
    "false",
    '[1, "a"]',
    "{ a = 1 }",
    "1979-05-27",
    "-1",
    "0",
    "99999",
    "[]",
    '""',
]


def _assignments(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if _ASSIGNMENT.match(line)]


def _free_form(lines: list[str], i: int) -> bool:
    """True when line ``i`` sits in a table whose keys are the operator's (env, labels)."""
    key = _ASSIGNMENT.match(lines[i])
    if key and key.group("key") in ("env", "labels"):
        return True
    for j in range(i, -1, -1):
        if _HEADER.match(lines[j]):
            header = lines[j].strip().strip("[]")
            return header.split(".")[-1] in ("env", "labels")
    return False


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, str, int | None]:
    """(example name, mutated text, line of a lone misspelled key or None)."""
    name = draw(st.sampled_from(sorted(TEXTS)))
    lines = TEXTS[name].splitlines()
    typo_line: int | None = None
    count = draw(st.integers(1, 3))
    for _ in range(count):
        op = draw(st.sampled_from(["delete", "typo", "retype", "swap", "duplicate", "delete-header"]))
        assigned = _assignments(lines)
        if op == "delete" and assigned:
            del lines[draw(st.sampled_from(assigned))]
        elif op == "delete-header":
            headers = [i for i, line in enumerate(lines) if _HEADER.match(line)]
            if headers:
                del lines[draw(st.sampled_from(headers))]
        elif op == "typo" and assigned:
            i = draw(st.sampled_from(assigned))
            m = _ASSIGNMENT.match(lines[i])
            assert m
            new = draw(_typo(m.group("key")).filter(lambda k: _BARE_KEY.fullmatch(k) is not None))
            lines[i] = new + m.group("eq") + m.group("value")
            if count == 1 and not _free_form(lines, i) and new != m.group("key"):
                typo_line = i + 1
        elif op == "retype" and assigned:
            i = draw(st.sampled_from(assigned))
            m = _ASSIGNMENT.match(lines[i])
            assert m
            lines[i] = m.group("key") + m.group("eq") + draw(st.sampled_from(REPLACEMENTS))
        elif op == "swap":
            numeric = [i for i in assigned if _INT_VALUE.match(_ASSIGNMENT.match(lines[i]).group("value"))]  # type: ignore[union-attr]
            if len(numeric) >= 2:
                i, j = draw(st.lists(st.sampled_from(numeric), min_size=2, max_size=2, unique=True))
                mi, mj = _ASSIGNMENT.match(lines[i]), _ASSIGNMENT.match(lines[j])
                assert mi and mj
                lines[i] = mi.group("key") + mi.group("eq") + mj.group("value")
                lines[j] = mj.group("key") + mj.group("eq") + mi.group("value")
        elif op == "duplicate":
            headers = [i for i, line in enumerate(lines) if _HEADER.match(line)]
            if headers:
                start = draw(st.sampled_from(headers))
                end = next((h for h in headers if h > start), len(lines))
                block = lines[start:end]
                at = draw(st.sampled_from([end, len(lines)]))
                lines[at:at] = block
    return name, "\n".join(lines) + "\n", typo_line


@settings(FUZZ, max_examples=2 * EXAMPLES_PER_TEST)  # cheap: twice as many
@given(mutations())
def test_mutated_examples_give_a_model_or_located_problems(case: tuple[str, str, int | None]) -> None:
    _, text, typo_line = case
    outcome = check(text)
    if typo_line is not None:
        # A lone misspelled key is reported on its own line as an unknown key (unless the
        # misspelling happens to be another valid key, or collides with one: a TOML error).
        assume(isinstance(outcome, InventoryError))
        assert isinstance(outcome, InventoryError)
        assume(not any(p.message.startswith("TOML syntax") for p in outcome.problems))
        assert any(p.line == typo_line for p in outcome.problems), (typo_line, [str(p) for p in outcome.problems])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutations().map(lambda c: c[1]), documents().map(dump)))
def test_the_cli_never_prints_a_traceback(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "inv.toml")
        Path(path).write_text(text)
        result = CliRunner().invoke(main, ["validate", path])
    assert result.exit_code in (0, 1), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 1:
        lines = result.stderr.splitlines()
        assert re.fullmatch(re.escape(path) + r": \d+ problems?", lines[-1]), lines[-1]
        for line in lines[:-1]:
            assert re.match(re.escape(path) + r":\d+: \S", line), line
    else:
        assert result.output.startswith(f"{path}: ok")


def test_every_example_is_valid_as_shipped() -> None:
    for name, text in TEXTS.items():
        assert isinstance(check(text), Inventory), name
