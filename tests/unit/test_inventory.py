"""The inventory loader: every problem at once, one located line each, never a traceback."""

from __future__ import annotations

import enum
import re
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dynamo_launch.addresses import split_hostport
from dynamo_launch.cli import main
from dynamo_launch.errors import InventoryError
from dynamo_launch.load import load_plan, plan_text
from dynamo_launch.model import Inventory, SecretRef, SshSettings
from dynamo_launch.placement import place
from dynamo_launch.plan import build
from tests.inventory_keys import EVERY_SECTION, accepted_keys


def parse(text: str, source: str = "inventory.toml") -> Inventory:
    """The inventory of ``text`` as every command loads it: validated, planned, plan checked."""
    return plan_text(text, source)[0]


def load(path: str) -> Inventory:
    """The inventory at ``path``, loaded as every command loads it."""
    return load_plan(path)[0]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(ROOT.glob("examples/*.toml")) + [ROOT / "inventory.example.toml"]

# An inventory that uses every section and sub-table the loader reads, so that walking it
# shows every table the loader opens and the keys it allows there.


# -- helpers -------------------------------------------------------------------------------

HEAD = """\
[cluster]
name = "c"
head = "node1"
state_dir = "/srv/dl"

[[hosts]]
name = "node1"
address = "10.0.0.1"
gpus = 8

[[hosts]]
name = "node2"
address = "10.0.0.2"
gpus = 8
"""


def problems(text: str, source: str = "inv.toml") -> list[str]:
    """Every problem of ``text``, as the CLI prints them (``file:line: key: message``)."""
    with pytest.raises(InventoryError) as caught:
        parse(text, source)
    return [str(p) for p in caught.value.problems]


def at(text: str, needle: str) -> int:
    """The 1-based line of the one line of ``text`` that contains ``needle``."""
    found = [n for n, line in enumerate(text.split("\n"), start=1) if needle in line]
    assert len(found) == 1, f"{needle!r} is on lines {found}"
    return found[0]


def worker(body: str) -> str:
    return HEAD + "\n[[workers]]\n" + textwrap.dedent(body)


# -- the issue's example, exactly --------------------------------------------------------------


ISSUE_EXAMPLE = (
    HEAD
    + """
[[workers]]
name = "small"
backend = "vllm"
model = "m"
hosts = ["node1"]

[[workers]]
hosts = ["node2"]
name = "big"
backend = "vllm"
model = "m"
tensor_parallel_size = 16
"""
)


def test_the_issue_example_line() -> None:
    assert problems(ISSUE_EXAMPLE, "inventory.toml") == [
        "inventory.toml:23: workers[1].hosts: TP=16 needs 2 hosts with 8 GPUs, got 1"
    ]


def test_the_cli_prints_one_line_per_problem_then_the_count(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text(ISSUE_EXAMPLE.replace('"c"', '"c"\nnmae = "x"'))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{path}:3: cluster.nmae: unknown key (did you mean 'name'?)",
        f"{path}:24: workers[1].hosts: TP=16 needs 2 hosts with 8 GPUs, got 1",
        f"{path}: 2 problems",
    ]
    assert "Traceback" not in result.output


# -- unknown keys (typos) ------------------------------------------------------------------------


def test_unknown_keys_are_reported_with_the_closest_known_key() -> None:
    text = HEAD.replace("gpus = 8\n\n[[hosts]]", "gpu = 8\n\n[[hosts]]") + textwrap.dedent(
        """
        [frontnd]
        http_port = 8000

        [[workers]]
        name = "w"
        backend = "mocker"
        model = "m"
        hosts = ["node1"]
        tensor_paralel_size = 1
        [workers.health]
        startup_timout = 60.0
        colour = "blue"
        """
    )
    assert problems(text) == [
        f"inv.toml:{at(text, 'gpu = 8')}: hosts[0].gpu: unknown key (did you mean 'gpus'?)",
        f"inv.toml:{at(text, '[frontnd]')}: frontnd: unknown key (did you mean 'frontend'?)",
        f"inv.toml:{at(text, 'tensor_paralel_size')}: workers[0].tensor_paralel_size: unknown key (did you mean 'tensor_parallel_size'?)",
        f"inv.toml:{at(text, 'startup_timout')}: workers[0].health.startup_timout: unknown key (did you mean 'startup_timeout'?)",
        f"inv.toml:{at(text, 'colour')}: workers[0].health.colour: unknown key",
    ]


def _key_lines() -> list[tuple[str, int]]:
    """(example, line) for every ``key = value`` line of every example outside operator-named tables."""
    out = []
    for path in EXAMPLES:
        table = ""
        for n, line in enumerate(path.read_text().split("\n"), start=1):
            if line.startswith("["):
                table = line.strip("[] ").split(".")[-1]
            elif re.match(r"[a-z_]+ = ", line) and table not in ("env", "labels") and not line.startswith("env "):
                out.append((path.name, n))
    return out


@pytest.mark.parametrize(("example", "line"), _key_lines())
def test_a_misspelled_key_in_any_example_is_reported_on_its_line(example: str, line: int) -> None:
    lines = (ROOT / ("examples" if example != "inventory.example.toml" else "") / example).read_text().split("\n")
    key = lines[line - 1].split(" = ", 1)[0]
    lines[line - 1] = lines[line - 1].replace(key, key + "x", 1)
    found = [p for p in problems("\n".join(lines)) if "unknown key" in p]
    assert (
        found
        and found[0].startswith(f"inv.toml:{line}: ")
        and found[0].endswith(f".{key}x: unknown key (did you mean {key!r}?)")
    ), found


# -- missing required keys -----------------------------------------------------------------------


def test_missing_required_tables() -> None:
    assert problems('[ssh]\nuser = "root"\n') == [
        "inv.toml:1: cluster: missing: the [cluster] table is required",
        "inv.toml:1: hosts: missing: at least one [[hosts]] entry is required",
    ]


def test_missing_required_keys() -> None:
    text = textwrap.dedent(
        """\
        [cluster]
        state_dir = "/srv/dl"

        [[hosts]]
        gpus = 8

        [[workers]]
        role = "decode"

        [[processes]]
        name = "p"

        [ray]
        port = 6379
        """
    )
    assert problems(text) == [
        "inv.toml:1: cluster.head: missing (required)",
        "inv.toml:1: cluster.name: missing (required)",
        "inv.toml:4: hosts[0].address: missing (required)",
        "inv.toml:4: hosts[0].name: missing (required)",
        "inv.toml:7: workers[0].backend: missing (required)",
        "inv.toml:7: workers[0].hosts: missing (required)",
        "inv.toml:7: workers[0].model: missing (required)",
        "inv.toml:7: workers[0].name: missing (required)",
        "inv.toml:10: processes[0].command: missing (required)",
        "inv.toml:10: processes[0].hosts: missing (required)",
        "inv.toml:13: ray.head: missing (required)",
    ]


def test_required_strings_must_not_be_empty() -> None:
    text = (
        HEAD.replace('head = "node1"', 'head = ""')
        + '\n[[workers]]\nname = "w"\nbackend = "vllm"\nmodel = ""\nhosts = ["node1", ""]\n'
    )
    assert problems(text) == [
        f"inv.toml:{at(text, 'head = ')}: cluster.head: must not be empty",
        f"inv.toml:{at(text, 'model = ')}: workers[0].model: must not be empty",
        f"inv.toml:{at(text, 'hosts = [')}: workers[0].hosts[1]: must not be empty",
    ]


# -- wrong types ---------------------------------------------------------------------------------


def test_wrong_types() -> None:
    text = HEAD.replace("gpus = 8\n\n[[hosts]]", 'gpus = "8"\nlocal = "yes"\n\n[[hosts]]') + textwrap.dedent(
        """
        [nats]
        port = 4222.5

        [[workers]]
        name = "w"
        backend = "vllm"
        model = "m"
        hosts = "node1"
        tensor_parallel_size = 8.0
        extra_args = ["--enforce-eager", 1]
        env = { LOG_LEVEL = 3 }
        restart = "always"
        """
    )
    assert problems(text) == [
        f"inv.toml:{at(text, 'local = ') - 1}: hosts[0].gpus: must be an integer, got string '8'",
        f"inv.toml:{at(text, 'local = ')}: hosts[0].local: must be true or false, got string 'yes'",
        f"inv.toml:{at(text, 'port = 4222.5')}: nats.port: must be an integer, got float 4222.5",
        f"inv.toml:{at(text, 'hosts = ')}: workers[0].hosts: must be a list of strings, got string 'node1'",
        f"inv.toml:{at(text, 'tensor_parallel')}: workers[0].tensor_parallel_size: must be an integer, got float 8.0",
        f"inv.toml:{at(text, 'extra_args')}: workers[0].extra_args[1]: must be a string, got int 1",
        f'inv.toml:{at(text, "env = ")}: workers[0].env.LOG_LEVEL: must be a string, got int (quote it: LOG_LEVEL = "3")',
        f"inv.toml:{at(text, 'restart = ')}: workers[0].restart: must be a table, got string 'always'",
    ]


def test_tables_and_arrays_of_tables_are_not_interchangeable() -> None:
    text = '[[cluster]]\nname = "c"\nhead = "a"\n\n[hosts]\nname = "a"\naddress = "10.0.0.1"\n'
    assert problems(text) == [
        "inv.toml:1: cluster: must be a table, got an array",
        "inv.toml:5: hosts: must be an array of tables: write [[hosts]]",
    ]


def test_enumerations_and_ranges() -> None:
    text = worker(
        """\
        name = "W"
        backend = "tgi"
        role = "encode"
        model = "m"
        hosts = ["node1"]
        executor = "mpi"
        replicas = 0
        master_port = 70000
        [workers.restart]
        policy = "sometimes"
        backoff_initial = 10.0
        backoff_max = 5.0
        """
    )
    name_line = at(text, 'name = "W"')
    assert problems(text) == [
        f"inv.toml:{name_line}: workers[0].name: 'W' is not a valid name (lowercase letters, digits, '-' and '_', starting with a letter or digit)",
        f"inv.toml:{at(text, 'backend =')}: workers[0].backend: must be one of vllm, sglang, trtllm, mocker; got 'tgi'",
        f"inv.toml:{at(text, 'role =')}: workers[0].role: must be one of aggregated, prefill, decode; got 'encode' (did you mean 'decode'?)",
        f"inv.toml:{at(text, 'executor =')}: workers[0].executor: must be one of mp, ray; got 'mpi' (did you mean 'mp'?)",
        f"inv.toml:{at(text, 'replicas =')}: workers[0].replicas: must be at least 1, got 0",
        f"inv.toml:{at(text, 'master_port =')}: workers[0].master_port: must be at most 65535, got 70000",
        f"inv.toml:{at(text, 'policy =')}: workers[0].restart.policy: must be one of always, on-failure, never; got 'sometimes'",
        f"inv.toml:{at(text, 'backoff_max =')}: workers[0].restart.backoff_max: must be ≥ backoff_initial (10)",
    ]


def test_toml_syntax_error_is_one_located_line() -> None:
    assert problems(HEAD + '\n[[workers]]\nname = "w\n') == ["inv.toml:17: TOML syntax: Illegal character '\\n'"]
    assert problems(HEAD + '\n[cluster]\nname = "d"\n') == [
        "inv.toml:16: TOML syntax: Cannot declare ('cluster',) twice"
    ]


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as caught:
        load(str(tmp_path / "absent.toml"))
    assert str(caught.value) == f"{tmp_path / 'absent.toml'}: cannot read: No such file or directory"
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'[cluster]\nname = "caf\xe9"\n')
    with pytest.raises(InventoryError) as caught:
        load(str(latin1))
    assert str(caught.value) == f"{latin1}:1: not UTF-8 text (invalid continuation byte at byte 21)"


def test_strange_keys_are_quoted_on_one_line() -> None:
    text = HEAD.replace('state_dir = "/srv/dl"', 'state_dir = "/srv/dl"\n"state\\ndir" = 1\n"dir \\"x\\"" = 2')
    assert problems(text) == [
        "inv.toml:5: cluster.\"state\\ndir\": unknown key (did you mean 'state_dir'?)",
        'inv.toml:6: cluster."dir \\"x\\"": unknown key',
    ]


def test_strange_names_stay_on_one_line() -> None:
    text = HEAD.replace('head = "node1"', 'head = "a\\nb"').replace("gpus = 8\n\n[[hosts]]", "gpus = 8\nlocal = true\n\n[[hosts]]")
    assert problems(text) == [
        "inv.toml:3: cluster.head: contains a control character (\\n at position 1): names, paths, commands and "
        "arguments must be printable text (multi-line text goes in a file: give its path)",
        "inv.toml:3: cluster.head: unknown host 'a\\nb'; hosts are node1, node2",
        "inv.toml:10: hosts[0].local: only the head ('a\\nb') can be local: the daemon runs there",
    ]


# -- duplicate hosts -----------------------------------------------------------------------------


def test_duplicate_host_names_and_addresses() -> None:
    text = HEAD + '\n[[hosts]]\nname = "node1"\naddress = "10.0.0.2"\n'
    assert problems(text) == [
        "inv.toml:17: hosts[2].name: duplicate host name 'node1' (also hosts[0])",
        "inv.toml:18: hosts[2].address: duplicate address 10.0.0.2 (also hosts[1])",
    ]


def test_invalid_host_names_and_addresses() -> None:
    text = HEAD.replace('name = "node2"', 'name = "node 2"').replace('"10.0.0.2"', '"10.0.0.2/24"')
    assert problems(text) == [
        "inv.toml:12: hosts[1].name: 'node 2' is not a valid name (letters, digits, '.', '-' and '_')",
        "inv.toml:13: hosts[1].address: '10.0.0.2/24' is neither an IP address nor a host name",
    ]


# -- references to unknown hosts ----------------------------------------------------------------


def test_groups_naming_unknown_hosts() -> None:
    text = HEAD.replace('head = "node1"', 'head = "node0"') + textwrap.dedent(
        """
        [frontend]
        host = "node9"

        [[workers]]
        name = "w"
        backend = "vllm"
        model = "m"
        hosts = ["node1", "node3", "node1"]

        [ray]
        head = "node2"
        workers = ["node2", "nodeX"]

        [[processes]]
        name = "p"
        host = "gpu1"
        command = ["run"]
        """
    )
    assert problems(text) == [
        "inv.toml:3: cluster.head: unknown host 'node0'; hosts are node1, node2",
        f"inv.toml:{at(text, 'node9')}: frontend.host: unknown host 'node9'; hosts are node1, node2",
        f"inv.toml:{at(text, 'node3')}: workers[0].hosts[1]: unknown host 'node3'; hosts are node1, node2",
        f"inv.toml:{at(text, 'node3')}: workers[0].hosts[2]: host 'node1' listed twice",
        f"inv.toml:{at(text, 'nodeX')}: ray.workers: node2 is the Ray head; list only the other hosts",
        f"inv.toml:{at(text, 'nodeX')}: ray.workers[1]: unknown host 'nodeX'; hosts are node1, node2",
        f"inv.toml:{at(text, 'gpu1')}: processes[0].host: unknown host 'gpu1'; hosts are node1, node2",
    ]


def test_a_group_without_hosts() -> None:
    text = worker('name = "w"\nbackend = "vllm"\nmodel = "m"\nhosts = []\n')
    assert problems(text) == [f"inv.toml:{at(text, 'hosts = []')}: workers[0].hosts: must name at least one host"]


# -- GPU arithmetic ------------------------------------------------------------------------------

GPU_CASES = {
    "tp16 on one 8-GPU host": (
        'tensor_parallel_size = 16\nhosts = ["node1"]',
        "workers[0].hosts: TP=16 needs 2 hosts with 8 GPUs, got 1",
    ),
    "tp8 pp2 on one host": (
        'tensor_parallel_size = 8\npipeline_parallel_size = 2\nhosts = ["node2"]',
        "workers[0].hosts: TP=8×PP=2 needs 2 hosts with 8 GPUs, got 1",
    ),
    "dp16 on one host": (
        'data_parallel_size = 16\nhosts = ["node1"]',
        "workers[0].hosts: TP=1×DP=16 needs 2 hosts with 8 GPUs, got 1",
    ),
    "tp16 with two replicas on two hosts": (
        'tensor_parallel_size = 16\nreplicas = 2\nhosts = ["node1", "node2"]',
        "workers[0].hosts: TP=16 needs 2 hosts with 8 GPUs per replica × 2 replicas, got 2",
    ),
    "tp12 is not a multiple of a host": (
        'tensor_parallel_size = 12\nhosts = ["node1", "node2"]',
        "workers[0].hosts: TP=12 = 12 GPUs is not a multiple of 8 GPUs per host",
    ),
    "dp rank larger than a host": (
        'tensor_parallel_size = 16\ndata_parallel_size = 2\nhosts = ["node1", "node2"]',
        "workers[0].data_parallel_size: TP×PP=16 is larger than one host (8 GPUs); data parallelism needs each rank on one host",
    ),
    "dp rank does not divide a host": (
        'tensor_parallel_size = 3\ndata_parallel_size = 4\nhosts = ["node1", "node2"]',
        "workers[0].tensor_parallel_size: TP×PP=3 must divide the 8 GPUs per host for data parallelism",
    ),
    "replicas do not fit": (
        'tensor_parallel_size = 8\nreplicas = 3\nhosts = ["node1", "node2"]',
        "workers[0].replicas: 3 replicas × 8 GPUs do not fit: node1 has 8 free, node2 has 8 free (room for 2)",
    ),
    "more hosts than a gang uses": (
        'tensor_parallel_size = 16\nreplicas = 1\nhosts = ["node1", "node2", "node3"]',
        "workers[0].hosts: TP=16 uses 2 of the 3 hosts listed (2 per replica × 1); list exactly the hosts it runs on",
    ),
}


@pytest.mark.parametrize("case", GPU_CASES, ids=list(GPU_CASES))
def test_gpu_arithmetic(case: str) -> None:
    body, message = GPU_CASES[case]
    text = (
        HEAD
        + '\n[[hosts]]\nname = "node3"\naddress = "10.0.0.3"\ngpus = 8\n'
        + worker(f'name = "w"\nbackend = "vllm"\nmodel = "m"\n{body}\n').removeprefix(HEAD)
    )
    key = message.split(":", 1)[0].rsplit(".", 1)[-1]
    assert problems(text) == [f"inv.toml:{at(text, key + ' = ')}: {message}"]


def test_a_gang_needs_equal_gpu_counts() -> None:
    text = worker(
        'name = "w"\nbackend = "sglang"\nmodel = "m"\ntensor_parallel_size = 12\nhosts = ["node1", "node2"]\n'
    )
    text = text.replace("gpus = 8\n\n[[hosts]]", "gpus = 4\n\n[[hosts]]")
    assert problems(text) == [
        f"inv.toml:{at(text, 'hosts = [')}: workers[0].hosts: TP=12 spans hosts, which must have equal GPU counts; got node1=4, node2=8"
    ]


def test_gpu_backends_need_gpus_and_groups_share_a_host() -> None:
    text = HEAD.replace("gpus = 8\n\n[[hosts]]", "gpus = 0\n\n[[hosts]]") + textwrap.dedent(
        """
        [[workers]]
        name = "a"
        backend = "trtllm"
        model = "m"
        hosts = ["node1"]
        """
    )
    assert problems(text) == [
        f"inv.toml:{at(text, 'hosts = [')}: workers[0].hosts: trtllm needs GPUs but node1 has gpus = 0"
    ]
    shared = worker(
        'name = "a"\nbackend = "vllm"\nmodel = "m"\ntensor_parallel_size = 16\nhosts = ["node1", "node2"]\n'
    )
    shared += '\n[[workers]]\nname = "b"\nbackend = "vllm"\nmodel = "m"\ntensor_parallel_size = 4\nhosts = ["node2"]\n'
    assert problems(shared) == [
        f"inv.toml:{len(shared.split(chr(10))) - 1}: workers[1].hosts: 1 replicas × 4 GPUs do not fit: node2 has 0 free (room for 0)"
    ]


def test_the_mocker_needs_no_gpus() -> None:
    text = HEAD.replace("gpus = 8", "gpus = 0") + worker(
        'name = "m"\nbackend = "mocker"\nmodel = "m"\nreplicas = 3\nhosts = ["node1", "node2"]\n'
    ).removeprefix(HEAD)
    inv = parse(text, "inv.toml")
    assert [r.nodes[0].host for r in place(inv).replicas["m"]] == ["node1", "node2", "node1"]


# -- ports ------------------------------------------------------------------------------------


def test_port_collisions_on_a_host() -> None:
    text = HEAD + textwrap.dedent(
        """
        [frontend]
        http_port = 4222

        [[workers]]
        name = "w"
        backend = "vllm"
        model = "m"
        tensor_parallel_size = 16
        master_port = 2379
        hosts = ["node1", "node2"]

        [[processes]]
        name = "web"
        host = "node2"
        command = ["serve"]
        [processes.health]
        check = "http"
        port = 9090
        """
    )
    assert problems(text) == [
        f"inv.toml:{at(text, 'http_port')}: frontend.http_port: port 4222 on node1 is also used by nats (nats.port)",
        f"inv.toml:{at(text, 'master_port')}: workers[0].master_port: port 2379 on node1 is also used by etcd (etcd.client_port)",
    ]


def test_system_ports_count_up_per_host_and_collide_with_explicit_ports() -> None:
    text = worker(
        'name = "w"\nbackend = "vllm"\nmodel = "m"\ntensor_parallel_size = 4\nhosts = ["node1"]\nreplicas = 2\n'
    )
    text += (
        '\n[[processes]]\nname = "web"\nhost = "node1"\ncommand = ["serve"]\nhealth = { check = "tcp", port = 9091 }\n'
    )
    assert problems(text) == [
        f"inv.toml:{at(text, 'port = 9091')}: processes[0].health.port: port 9091 on node1 is also used by w-1 (cluster.system_port)"
    ]


def test_the_same_port_on_different_hosts_is_fine() -> None:
    text = HEAD + '\n[frontend]\nhost = "node2"\nhttp_port = 4222\n'
    assert parse(text, "inv.toml").frontend.http_port == 4222  # type: ignore[union-attr]


# -- secrets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["${HF_TOKEN}", "${MY_SECRET_2}", "file:/etc/dynamo-launch/hf_token", ""],
)
def test_secrets_by_reference_are_accepted(value: str) -> None:
    inv = parse(HEAD + f'\n[env]\nHF_TOKEN = "{value}"\n', "inv.toml")
    ((name, got),) = inv.env
    assert name == "HF_TOKEN"
    if value.startswith("${"):
        assert got == SecretRef("env", value[2:-1])
    elif value:
        assert got == SecretRef("file", value[5:])
    else:
        assert got == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwx"),  # a token shape under a secret name
        ("HUGGING_FACE_HUB_TOKEN", "abc"),
        ("WANDB_API_KEY", "0123456789"),
        ("OPENAI_APIKEY", "x"),
        ("AWS_SECRET_ACCESS_KEY", "x"),
        ("AWS_ACCESS_KEY_ID", "AKIA123"),
        ("DB_PASSWORD", "hunter2"),
        ("REDIS_PASSWD", "hunter2"),
        ("NGC_KEY", "abc"),
        ("SSH_PRIVATE_KEY", "-----BEGIN"),
        ("GOOGLE_APPLICATION_CREDENTIALS_JSON", "{}"),
        ("BASIC_AUTH", "user:pw"),
        ("hf_token", "lowercase names count too"),
        ("MODEL_SOURCE", "hf_abcdefghijklmnopqrstuvwx"),  # token shapes under any name
        ("ANY", "nvapi-abcdefghijklmnopqrstuvwxyz"),
        ("ANY", "sk-abcdefghijklmnopqrstuvwxyz"),
        ("ANY", "ghp_abcdefghijklmnopqrstuvwxyz"),
    ],
)
def test_inline_secrets_are_rejected(name: str, value: str) -> None:
    text = HEAD + f'\n[env]\n{name} = "{value}"\n'
    assert problems(text) == [
        (
            f'inv.toml:17: env.{name}: inline secret: give it by reference, e.g. {name} = "${{{name}}}" (from the '
            f'daemon\'s environment) or {name} = "file:/etc/dynamo-launch/{name.lower()}"'
        )
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [("HF_HOME", "/models/hf"), ("SSL_KEY_FILE", "/etc/ssl/key.pem"), ("MONKEY", "x"), ("LOG", "hf_short")],
)
def test_ordinary_values_are_not_secrets(name: str, value: str) -> None:
    assert parse(HEAD + f'\n[env]\n{name} = "{value}"\n', "inv.toml").env == ((name, value),)


def test_secrets_are_checked_in_every_env_table() -> None:
    text = HEAD + textwrap.dedent(
        """
        [frontend]
        env = { API_KEY = "k" }

        [[workers]]
        name = "w"
        backend = "mocker"
        model = "m"
        hosts = ["node1"]
        [workers.env]
        HF_TOKEN = "file:relative/token"

        [ray]
        head = "node1"
        env = { RAY_PASSWORD = "pw" }

        [[processes]]
        name = "p"
        host = "node2"
        command = ["run"]
        env = { 1TOKEN = "${T}" }
        """
    )
    assert [p.split(": inline secret")[0] if "inline secret" in p else p for p in problems(text)] == [
        f"inv.toml:{at(text, 'API_KEY')}: frontend.env.API_KEY",
        f"inv.toml:{at(text, 'relative')}: workers[0].env.HF_TOKEN: file: reference must be an absolute path, got 'relative/token'",
        f"inv.toml:{at(text, 'RAY_PASSWORD')}: ray.env.RAY_PASSWORD",
        f"inv.toml:{at(text, '1TOKEN')}: processes[0].env.1TOKEN: not a valid environment variable name",
    ]


def test_a_rejected_secret_never_reaches_the_model_or_the_message() -> None:
    with pytest.raises(InventoryError) as caught:
        parse(HEAD + '\n[env]\nHF_TOKEN = "hf_abcdefghijklmnopqrstuvwx"\n', "inv.toml")
    assert "hf_abcdefghijklmnopqrstuvwx" not in str(caught.value)


# -- combinations that cannot work --------------------------------------------------------------

COMBINATIONS = {
    "headless with ray": (
        'backend = "vllm"\ntensor_parallel_size = 16\nexecutor = "ray"\nextra_args = ["--headless"]\nhosts = ["node1", "node2"]',
        "extra_args",
        (
            "workers[0].extra_args[0]: --headless cannot work with executor = 'ray': with Ray only the leader runs vLLM "
            "and the other hosts run `ray start --block`"
        ),
    ),
    "headless with mp": (
        'backend = "vllm"\ntensor_parallel_size = 16\nextra_args = ["--headless"]\nhosts = ["node1", "node2"]',
        "extra_args",
        "workers[0].extra_args[0]: --headless is added by the launcher on the non-leader hosts of a multi-node group; remove it",
    ),
    "a flag the launcher renders": (
        'backend = "vllm"\nextra_args = ["--enforce-eager", "--tensor-parallel-size=2"]\nhosts = ["node1"]',
        "extra_args",
        "workers[0].extra_args[1]: --tensor-parallel-size is rendered by the launcher; set tensor_parallel_size instead",
    ),
    "ray executor for sglang": (
        'backend = "sglang"\nexecutor = "ray"\nhosts = ["node1"]',
        "executor",
        "workers[0].executor: executor = 'ray' is a vLLM option; sglang spans hosts its own way",
    ),
    "ray executor with data parallel": (
        'backend = "vllm"\nexecutor = "ray"\ndata_parallel_size = 2\nhosts = ["node1"]',
        "data_parallel",
        (
            "workers[0].data_parallel_size: data_parallel_size does not work with executor = 'ray' "
            "(one engine over a Ray cluster); use executor = 'mp'"
        ),
    ),
    "trtllm data parallel": (
        'backend = "trtllm"\ndata_parallel_size = 2\nhosts = ["node1"]',
        "data_parallel",
        "workers[0].data_parallel_size: data_parallel_size is not supported for trtllm; use replicas",
    ),
    "mocker with tensor parallel": (
        'backend = "mocker"\ntensor_parallel_size = 2\nhosts = ["node1"]',
        "tensor_parallel",
        "workers[0].tensor_parallel_size: the mocker is a CPU engine: tensor/pipeline parallel sizes must be 1",
    ),
    "prefill without decode": (
        'backend = "vllm"\nrole = "prefill"\nhosts = ["node1"]',
        "role",
        "workers[0].role: a prefill group needs a decode group to hand its KV cache to (role = 'decode')",
    ),
}


@pytest.mark.parametrize("case", COMBINATIONS, ids=list(COMBINATIONS))
def test_combinations_that_cannot_work(case: str) -> None:
    body, needle, message = COMBINATIONS[case]
    text = worker(f'name = "w"\nmodel = "m"\n{body}\n')
    assert problems(text) == [f"inv.toml:{at(text, needle)}: {message}"]


def test_generic_process_rules() -> None:
    text = HEAD + textwrap.dedent(
        """
        [[processes]]
        name = "a"
        host = "node1"
        hosts = ["node2"]
        command = ["run"]
        depends_on = ["b", "ghost"]

        [[processes]]
        name = "b"
        host = "node1"
        command = []
        depends_on = ["a", "b"]
        gang = "a"

        [[processes]]
        name = "etcd"
        host = "node1"
        command = ["etcd"]
        """
    )
    self_dep, etcd = at(text, 'depends_on = ["a", "b"]'), at(text, 'name = "etcd"')
    assert problems(text) == [
        f"inv.toml:{at(text, 'hosts = [')}: processes[0].hosts: give either host or hosts, not both",
        f"inv.toml:{at(text, 'ghost')}: processes[0].depends_on: dependency cycle: a → b → a",
        f"inv.toml:{at(text, 'ghost')}: processes[0].depends_on[1]: unknown process or group 'ghost'; known: a, b, etcd, nats",
        f"inv.toml:{at(text, 'command = []')}: processes[1].command: must not be empty",
        f"inv.toml:{self_dep}: processes[1].depends_on[1]: a process cannot depend on itself",
        f"inv.toml:{at(text, 'gang = ')}: processes[1].gang: gang name 'a' is already a process or group name",
        f"inv.toml:{etcd}: processes[2].name: 'etcd' is reserved for the launcher's own processes",
    ]


def test_derived_process_names_must_not_collide() -> None:
    text = worker(
        'name = "r1"\nbackend = "vllm"\nmodel = "m"\ntensor_parallel_size = 16\nexecutor = "ray"\nhosts = ["node1", "node2"]\n'
    )
    text += textwrap.dedent(
        """
        [[processes]]
        name = "r1-0-ray-1"
        host = "node1"
        command = ["run"]

        [[processes]]
        name = "web"
        hosts = ["node1", "node2"]
        command = ["run"]
        gang = "r1-0"

        [[processes]]
        name = "web-node2"
        host = "node2"
        command = ["run"]
        """
    )
    ray_1, web_node2 = at(text, 'name = "r1-0-ray-1"'), at(text, 'name = "web-node2"')
    assert problems(text) == [
        f"inv.toml:{ray_1}: processes[0].name: starts a process called 'r1-0-ray-1', as workers[0] does; choose another name",
        f"inv.toml:{at(text, 'gang = ')}: processes[1].gang: gang name 'r1-0' is already the name of a process of workers[0]",
        f"inv.toml:{web_node2}: processes[2].name: starts a process called 'web-node2', as processes[1] does; choose another name",
    ]


def test_duplicate_and_reserved_group_names() -> None:
    text = worker('name = "w"\nbackend = "mocker"\nmodel = "m"\nhosts = ["node1"]\n')
    text += '\n[[workers]]\nname = "w"\nbackend = "mocker"\nmodel = "m"\nhosts = ["node2"]\n'
    text += '\n[[processes]]\nname = "ray-agent"\nhost = "node1"\ncommand = ["x"]\n'
    second = at(text, 'hosts = ["node2"]') - 3
    assert problems(text) == [
        f"inv.toml:{second}: workers[1].name: duplicate name 'w' (also workers[0])",
        f"inv.toml:{at(text, 'ray-agent')}: processes[0].name: 'ray-agent' is reserved for the launcher's own processes",
    ]


def test_probe_settings_a_recipe_would_ignore_are_errors() -> None:
    text = HEAD + textwrap.dedent(
        """
        [frontend]
        health = { check = "http", port = 8000 }

        [nats.health]
        command = ["nats", "ping"]

        [[workers]]
        name = "w"
        backend = "vllm"
        model = "m"
        hosts = ["node1"]
        [workers.health]
        check = "tcp"
        port = 7000

        [[processes]]
        name = "p"
        host = "node2"
        command = ["serve"]
        health = { check = "http", path = "/ready" }
        """
    )
    assert problems(text) == [
        (
            f"inv.toml:{at(text, 'port = 8000')}: frontend.health.check: check = 'http' is not used here: the frontend is "
            "probed by HTTP GET on http_port at health.path; use 'auto'"
        ),
        (
            f"inv.toml:{at(text, 'ping')}: nats.health.command: is not used here: NATS is probed on its monitor port "
            "(/healthz?js-enabled-only=true)"
        ),
        (
            f"inv.toml:{at(text, 'tcp')}: workers[0].health.check: check = 'tcp' is not used here: a worker is probed at "
            "/health on its Dynamo system port ('process': alive is enough); use 'auto' or 'process'"
        ),
        f"inv.toml:{at(text, '/ready')}: processes[0].health.port: check = 'http' needs a port",
    ]
    fine = (
        HEAD
        + '\n[[workers]]\nname = "w"\nbackend = "vllm"\nmodel = "m"\nhosts = ["node1"]\nhealth = { check = "process" }\n'
    )
    assert parse(fine, "inv.toml").workers[0].health.check == "process"


# -- local hosts, SSH, external endpoints ------------------------------------------------------


def test_only_the_head_can_be_local() -> None:
    ok = parse(HEAD.replace("gpus = 8\n\n[[hosts]]", "gpus = 8\nlocal = true\n\n[[hosts]]"), "inv.toml")
    assert [h.local for h in ok.hosts] == [True, False]
    text = HEAD + "local = true\n"
    assert problems(text) == ["inv.toml:15: hosts[1].local: only the head (node1) can be local: the daemon runs there"]


def test_ssh_defaults_with_per_host_overrides() -> None:
    text = textwrap.dedent(
        """\
        [cluster]
        name = "c"
        head = "node1"

        [ssh]                       # defaults for every host
        user = "dynamo"
        key_file = "keys/id_ed25519"  # relative to the inventory file
        connect_timeout = 3

        [[hosts]]
        name = "node1"
        address = "10.0.0.1"
        ssh = { port = 2222, user = "admin" }

        [[hosts]]
        name = "node2"
        address = "10.0.0.2"

        [[hosts]]
        name = "node3"
        address = "gpu3.example.com"
        [hosts.ssh]
        key_file = "~/.ssh/other"
        """
    )
    inv = parse(text, "/etc/dynamo-launch/inventory.toml")
    node1, node2, node3 = inv.hosts
    assert inv.ssh == SshSettings(user="dynamo", key_file="/etc/dynamo-launch/keys/id_ed25519", connect_timeout=3.0)
    assert node1.ssh == SshSettings(
        user="admin", port=2222, key_file="/etc/dynamo-launch/keys/id_ed25519", connect_timeout=3.0
    )
    assert node2.ssh == inv.ssh
    assert node3.ssh == SshSettings(user="dynamo", key_file="~/.ssh/other", connect_timeout=3.0)
    assert SshSettings() == SshSettings(user="root", port=22, key_file=None, known_hosts="~/.ssh/known_hosts",
                                        connect_timeout=10.0, keepalive_interval=5.0, keepalive_count_max=3)  # fmt: skip


def test_ssh_settings_are_checked_per_host_too() -> None:
    text = HEAD + 'ssh = { user = "bad user", keepalive_count_max = 0, prot = 22 }\n'
    assert problems(text) == [
        "inv.toml:15: hosts[1].ssh.keepalive_count_max: must be at least 1, got 0",
        "inv.toml:15: hosts[1].ssh.prot: unknown key (did you mean 'port'?)",
        "inv.toml:15: hosts[1].ssh.user: 'bad user' is not a valid user ([A-Za-z_][A-Za-z0-9._-]*)",
    ]


def test_external_nats_and_etcd() -> None:
    text = (
        HEAD
        + '\n[nats]\nexternal = "nats://10.0.0.9:4222"\n\n[etcd]\nexternal = "https://e1:2379,https://e2:2379"\n\n[frontend]\n'
    )
    inv = parse(text, "inv.toml")
    assert (inv.nats.external, inv.etcd.external) == ("nats://10.0.0.9:4222", "https://e1:2379,https://e2:2379")
    plan = build(inv)
    assert [p.name for p in plan.processes] == ["frontend"]
    assert (plan.nats_url, plan.etcd_url) == ("nats://10.0.0.9:4222", "https://e1:2379,https://e2:2379")
    bad = HEAD + '\n[nats]\nexternal = "http://10.0.0.9:4222"\n\n[etcd]\nexternal = "10.0.0.9:2379"\n'
    assert problems(bad) == [
        "inv.toml:17: nats.external: must be a URL like nats://host:port, got 'http://10.0.0.9:4222'",
        "inv.toml:20: etcd.external: must be a URL like http://host:port, got '10.0.0.9:2379'",
    ]


def test_nats_bind_and_credentials() -> None:
    inv = parse(HEAD + '\n[nats]\nbind = "0.0.0.0"\ntoken = "${NATS_TOKEN}"\n', "inv.toml")
    assert (inv.nats.bind, inv.nats.token) == ("0.0.0.0", SecretRef("env", "NATS_TOKEN"))
    assert inv.nats.auth == (("NATS_AUTH_TOKEN", SecretRef("env", "NATS_TOKEN")),)
    inv = parse(HEAD + '\n[nats]\nuser = "dynamo"\npassword = "file:/etc/dl/nats-password"\n', "inv.toml")
    assert inv.nats.auth == (("NATS_AUTH_USERNAME", "dynamo"), ("NATS_AUTH_PASSWORD", SecretRef("file", "/etc/dl/nats-password")))
    default = parse(HEAD, "inv.toml").nats
    assert (default.bind, default.auth) == (None, ())


def test_nats_credentials_are_references_only_and_never_echoed() -> None:
    text = HEAD + '\n[nats]\ntoken = "hunter2-token"\nbind = "not an address"\n'
    assert problems(text) == [
        ("inv.toml:17: nats.token: inline secret: give it by reference, e.g. token = \"${NATS_TOKEN}\" (from the "
         "daemon's environment) or token = \"file:/etc/dynamo-launch/nats_token\""),
        "inv.toml:18: nats.bind: 'not an address' is neither an IP address nor a host name (\"0.0.0.0\": every interface)",
    ]
    assert "hunter2" not in " ".join(problems(text))
    both = HEAD + '\n[nats]\ntoken = "${T}"\nuser = "u"\npassword = "${P}"\n'
    assert problems(both) == ["inv.toml:17: nats.token: give either token or user and password, not both"]
    alone = HEAD + '\n[nats]\nuser = "u"\n'
    assert problems(alone) == ["inv.toml:16: nats.password: user and password go together: give both"]
    inline = HEAD + '\n[nats]\nuser = "u"\npassword = "pw"\n'
    assert problems(inline) == [
        ("inv.toml:18: nats.password: inline secret: give it by reference, e.g. password = \"${NATS_PASSWORD}\" "
         "(from the daemon's environment) or password = \"file:/etc/dynamo-launch/nats_password\"")]
    in_url = HEAD + '\n[nats]\nexternal = "nats://s3cret@10.0.0.9:4222"\n[etcd]\nexternal = "http://u:pw@e1:2379"\n'
    found = problems(in_url)
    assert found == [
        ("inv.toml:17: nats.external: credentials in the URL would show in the plan, status and logs; "
         "give them as nats.token, or nats.user and nats.password"),
        "inv.toml:19: etcd.external: credentials in the URL would show in the plan, status and logs; give them elsewhere",
    ]
    assert "s3cret" not in " ".join(found) and "pw" not in " ".join(found)


@pytest.mark.parametrize("value, bound", [
    ("127.0.0.1:9400", ("127.0.0.1", 9400)), ("0.0.0.0:1", ("0.0.0.0", 1)), ("[::1]:9400", ("::1", 9400)),
    ("head.example.com:65535", ("head.example.com", 65535)), ("", None),
])
def test_metrics_address(value: str, bound: tuple | None) -> None:
    inv = parse(HEAD.replace('state_dir = "/srv/dl"', f'state_dir = "/srv/dl"\nmetrics = "{value}"'), "inv.toml")
    assert inv.cluster.metrics == value
    assert (split_hostport(value) if value else None) == bound
    assert parse(HEAD, "inv.toml").cluster.metrics == "127.0.0.1:9400"


@pytest.mark.parametrize("value", ["9400", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "::1:9400", "[::1]",
                                   "[zz]:9400", "a b:9400", ":9400", "127.0.0.1:94x0"])
def test_metrics_address_must_be_host_and_port(value: str) -> None:
    text = HEAD.replace('state_dir = "/srv/dl"', f'state_dir = "/srv/dl"\nmetrics = "{value}"')
    assert problems(text) == [
        (f'inv.toml:5: cluster.metrics: must be host:port like "127.0.0.1:9400" ("[::1]:9400" for IPv6; "" for no '
         f"metrics endpoint), got {value!r}")]


def test_metrics_port_must_not_collide_with_the_heads_processes() -> None:
    text = HEAD.replace('state_dir = "/srv/dl"', 'state_dir = "/srv/dl"\nmetrics = "127.0.0.1:8222"')
    assert problems(text) == ["inv.toml:5: cluster.metrics: port 8222 on node1 is also used by nats (nats.monitor_port)"]
    other_host = text + '\n[[processes]]\nname = "p"\nhost = "node2"\ncommand = ["x"]\nhealth = { check = "tcp", port = 9400 }\n'
    parse(other_host.replace("8222", "9400"), "inv.toml")  # the same port on another host is fine
    external = text + '\n[nats]\nexternal = "nats://10.0.0.9:4222"\n'
    assert parse(external, "inv.toml").cluster.metrics == "127.0.0.1:8222"  # no NATS on the head: free


def test_paths() -> None:
    text = (
        HEAD.replace('state_dir = "/srv/dl"', 'state_dir = "srv/dl"\nvllm_cache_root = ""')
        + '\n[[processes]]\nname = "p"\nhost = "node1"\ncommand = ["x"]\ncwd = "~/x"\n'
    )
    assert problems(text) == [
        "inv.toml:4: cluster.state_dir: must be an absolute path (it is used on every node), got 'srv/dl'",
        "inv.toml:5: cluster.vllm_cache_root: must not be empty",
        f"inv.toml:{at(text, 'cwd')}: processes[0].cwd: must be an absolute path (it is used on every node), got '~/x'",
    ]


# -- all at once, in line order ------------------------------------------------------------------


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    text = textwrap.dedent(
        """\
        [cluster]
        name = "c"
        head = "node1"
        stat_dir = "/srv/dl"

        [[hosts]]
        name = "node1"
        address = "10.0.0.1"
        gpus = "8"

        [[hosts]]
        name = "node1"
        address = "10.0.0.2"

        [env]
        HF_TOKEN = "hf_abcdefghijklmnopqrstuvwx"

        [[workers]]
        name = "w"
        backend = "vllm"
        model = "m"
        executor = "ray"
        extra_args = ["--headless"]
        hosts = ["node1", "node3"]
        """
    )
    assert problems(text) == [
        "inv.toml:4: cluster.stat_dir: unknown key (did you mean 'state_dir'?)",
        "inv.toml:9: hosts[0].gpus: must be an integer, got string '8'",
        "inv.toml:12: hosts[1].name: duplicate host name 'node1' (also hosts[0])",
        (
            'inv.toml:16: env.HF_TOKEN: inline secret: give it by reference, e.g. HF_TOKEN = "${HF_TOKEN}" (from the '
            'daemon\'s environment) or HF_TOKEN = "file:/etc/dynamo-launch/hf_token"'
        ),
        (
            "inv.toml:23: workers[0].extra_args[0]: --headless cannot work with executor = 'ray': with Ray only the "
            "leader runs vLLM and the other hosts run `ray start --block`"
        ),
        "inv.toml:24: workers[0].hosts[1]: unknown host 'node3'; hosts are node1",
    ]


# -- the shipped inventories -----------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(path: Path) -> None:
    inv = load(str(path))
    assert inv.hosts and build(inv).processes


def test_the_vocabulary_inventory_is_valid() -> None:
    assert parse(EVERY_SECTION, "inv.toml").ray is not None


# -- docs/inventory.md documents every key the loader accepts, and no other ---------------------

DOC = ROOT / "docs" / "inventory.md"
FREE_FORM = {"env", "frontend.env", "workers.env", "ray.env", "processes.env", "hosts.labels", "hosts.env"}
SHARED = {"hosts.ssh": "ssh"}  # documented once, under [ssh]


def _documented() -> dict[str, dict[str, list[str]]]:
    """For each ``## `[table]` `` (or ``## `restart` ``) heading: its key rows, each as its cells."""
    out: dict[str, dict[str, list[str]]] = {}
    current: str | None = None
    for line in DOC.read_text().split("\n"):
        if line.startswith("## "):
            heading = re.fullmatch(r"## `\[{0,2}([a-z_]+)\]{0,2}`", line)
            current = "" if line == "## Top level" else heading.group(1) if heading else None
            if current is not None:
                assert current not in out, f"{line!r} twice"
                out[current] = {}
        elif current is not None and line.startswith("| `"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            key = cells[0].strip("`[]")
            assert key not in out[current], f"{key} documented twice under {current or 'Top level'}"
            out[current][key] = cells
    return out


def _doc_section(section: str) -> str:
    leaf = section.rsplit(".", 1)[-1]
    return leaf if leaf in ("restart", "health") else SHARED.get(section, section)


def test_docs_name_every_key_the_loader_accepts_and_no_other() -> None:
    accepted, documented = accepted_keys(), _documented()
    assert {s for s, keys in accepted.items() if keys is None} == FREE_FORM
    assert accepted["hosts.ssh"] == accepted["ssh"]
    for section, keys in accepted.items():
        if keys is not None:
            doc = _doc_section(section)
            assert doc in documented, f"docs/inventory.md has no section for [{section}]"
            assert set(documented[doc]) == keys, (
                f"[{section}]: documented {sorted(documented[doc])}, accepted {sorted(keys)}"
            )
    assert set(documented) == {_doc_section(s) for s, keys in accepted.items() if keys is not None} | {"env"}
    assert documented["env"] == {}  # free-form: described, not tabulated
    for free in FREE_FORM:
        assert f"`{free.rsplit('.', 1)[-1]}`" in DOC.read_text()


DEFAULTS_OF = """
[cluster]
name = "c"
head = "node1"

[[hosts]]
name = "node1"
address = "10.0.0.1"

[nats]
[etcd]
[frontend]

[[workers]]
name = "w"
backend = "mocker"
model = "m"
hosts = ["node1"]

[ray]
head = "node1"

[[processes]]
name = "p"
host = "node1"
command = ["x"]
"""


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def test_documented_defaults_are_the_loaders() -> None:
    """Every default the docs give as a TOML value is what the loader fills in when the key is left out."""
    inv = parse(DEFAULTS_OF, "inv.toml")
    objects = {
        "cluster": inv.cluster, "ssh": inv.ssh, "hosts": inv.hosts[0], "nats": inv.nats, "etcd": inv.etcd,
        "frontend": inv.frontend, "workers": inv.workers[0], "restart": inv.workers[0].restart,
        "health": inv.workers[0].health, "ray": inv.ray, "processes": inv.processes[0],
    }  # fmt: skip
    checked = 0
    for section, rows in _documented().items():
        for key, cells in rows.items():
            if section == "" or not re.fullmatch(r"`[^`]+`", cells[2]):
                continue
            default = cells[2]
            try:
                expected = tomllib.loads(f"v = {default.strip('`')}")["v"]
            except tomllib.TOMLDecodeError:
                continue  # a description, not a value (`cluster.head`, `<state_dir>/nats`, …)
            value = getattr(objects[section], key)
            if key in ("env", "labels"):
                value = dict(value)
            assert _plain(value) == expected, f"{section}.{key}: docs say {default}, the loader gives {value!r}"
            checked += 1
    assert checked >= 40


def test_the_docs_examples_validate() -> None:
    """Every TOML example in docs/inventory.md is valid; partial ones on three 8-GPU hosts."""
    hosts = HEAD + '\n[[hosts]]\nname = "node3"\naddress = "10.0.0.3"\ngpus = 8\n'
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)
    validated = 0
    for block in blocks:
        tomllib.loads(block)
        if "# ..." in block or ("[[hosts]]" in block and "[cluster]" not in block):
            continue  # a fragment showing a few keys of a table
        inv = parse(block if "[cluster]" in block else hosts + block, "inv.toml")
        build(inv)
        validated += 1
    assert validated >= 12


@pytest.mark.parametrize("key, value, hint", [("router_mode", "kvv", "kv"), ("router_mode", "rnd", "random")])
def test_a_misspelt_value_gets_a_did_you_mean(key: str, value: str, hint: str) -> None:
    text = HEAD + f'[frontend]\n{key} = "{value}"\n'
    assert any(f"got {value!r} (did you mean {hint!r}?)" in p for p in problems(text)), problems(text)


def test_a_misspelt_backend_gets_a_did_you_mean() -> None:
    text = HEAD + '[[workers]]\nname = "w"\nbackend = "mockr"\nmodel = "m"\nhosts = ["node1"]\n'
    assert any("got 'mockr' (did you mean 'mocker'?)" in p for p in problems(text)), problems(text)
