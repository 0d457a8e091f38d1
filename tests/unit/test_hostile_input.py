"""What the launcher accepts and prints, against hostile text (issue 14, items 3 and 8).

A newline or an escape sequence in any value must never turn a `#` line of the pasteable plan
into a command, nor reach the terminal raw in `plan`, the preflight table, `status` or an error;
`validate` refuses control characters in names, paths and commands, and secrets written inline
in a command line.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import textwrap

import pytest
from click.testing import CliRunner

from dynamo_launch.cli import _show_checks, main
from dynamo_launch.errors import InventoryError
from dynamo_launch.inventory import parse
from dynamo_launch.plan import build
from dynamo_launch.plan.render import command_text, to_text
from dynamo_launch.preflight import Check
from dynamo_launch.printable import clean, has_control, shell_quote
from dynamo_launch.status import render
from tests.inventory_keys import one_process

# Raw control characters a terminal or a shell would obey; "\n" only between lines.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
NASTY = ["\n", "\r", "\x1b[2J", "\x1b]0;owned\x07", "\x9b31m", "\x7f", "\u202e", "\u2028", "\x00", "\t"]


def _problems(text: str) -> list[str]:
    with pytest.raises(InventoryError) as e:
        parse(text, "inv.toml")
    return [str(p) for p in e.value.problems]


# --- the sanitiser -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", NASTY)
def test_clean_leaves_no_control_character_and_one_line(bad: str) -> None:
    out = clean(f"a{bad}b")
    assert not RAW.search(out) and "\n" not in out and out.startswith("a") and out.endswith("b")
    assert has_control(bad) and not has_control(out)


def test_shell_quote_round_trips_through_a_real_shell() -> None:
    rng = random.Random(14)
    alphabet = "ab $`'\"\\;|&*?!#~{}()<>\n\r\t\x1b\x07\x7f\x9b\u202e\u2028é"
    words = ["", "plain", "it's", *NASTY] + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
                                              for _ in range(60)]
    words = [w for w in words if "\x00" not in w]  # no argv can hold NUL
    script = "printf '%s\\0' " + " ".join(shell_quote(w) for w in words)
    assert not RAW.search(script) and "\n" not in script
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True, env={"LANG": "C.UTF-8"}).stdout
    assert out.decode().split("\0")[:-1] == words


# --- the pasteable plan --------------------------------------------------------------------------


def _hostile_plan():
    """A plan built from a model carrying what validate refuses: the renderer alone must hold."""
    inv = parse(one_process(["/bin/engine", "--serve"], env='A = "x\\ny\\u001b[2J"',
                           extra='[processes.health]\ncheck = "command"\ncommand = ["true"]'), "t.toml")
    proc = inv.processes[0]
    health = dataclasses.replace(proc.health, command=("true\ntouch /tmp/pwned-health", "\x1b]0;t\x07"))
    proc = dataclasses.replace(proc, command=("/bin/engine", "--x", "a\ntouch /tmp/pwned-arg", "\x9b2J"),
                               cwd="/srv/w\ntouch /tmp/pwned-cwd", health=health)
    cluster = dataclasses.replace(inv.cluster, state_dir="/srv/dl\ntouch /tmp/pwned-state\x1b[2J")
    return build(dataclasses.replace(inv, cluster=cluster, processes=(proc,)))


def test_plan_text_turns_no_field_into_a_command_and_prints_nothing_raw() -> None:
    plan = _hostile_plan()
    text = to_text(plan)
    assert not RAW.search(text)
    commands = {line for p in plan.processes for line in command_text(p).split("\n")}
    for line in text.splitlines():
        assert line == "" or line.startswith("#") or line.startswith("cd ") or line in commands, line
        assert not line.startswith("touch")
    assert "touch /tmp/pwned-state" in text and "\\n" in text  # shown, escaped, on its comment line


def test_plan_commands_paste_back_to_the_exact_argv_env_and_cwd(tmp_path) -> None:
    plan = _hostile_plan()
    p = plan.process("p")
    dump = "import json, os, sys; print(json.dumps([os.getcwd(), os.environ.get('A'), sys.argv[1:]]))"
    argv = ("python3", "-c", dump, *p.argv[1:])
    fake = dataclasses.replace(p, argv=argv)
    cwd = tmp_path / "w\ntouch x"
    cwd.mkdir()
    script = f"cd {shell_quote(str(cwd))}\n{command_text(fake)}\n"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}).stdout
    assert json.loads(out) == [str(cwd), "x\ny\x1b[2J", list(p.argv[1:])]
    assert not (tmp_path / "x").exists()


def test_env_values_may_hold_newlines_and_render_escaped() -> None:
    text = to_text(build(parse(one_process(["run"], env='CFG = "a\\nb"'), "t.toml")))
    assert "CFG=$'a\\nb' run" in text and not RAW.search(text)


# --- validate ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["\\n", "\\u001b[2J", "\\u009b", "\\u007f", "\\t", "\\u202e"])
@pytest.mark.parametrize("where, text", [
    ("cluster.state_dir", lambda b: one_process(["run"]).replace('"/srv/dl"', f'"/srv/dl{b}x"')),
    ("processes[0].command[1]", lambda b: one_process(["run", "ok"]).replace('"ok"', f'"ok{b}"')),
    ("processes[0].health.command[0]",
     lambda b: one_process(["run"], extra=f'[processes.health]\ncheck = "command"\ncommand = ["true{b}id"]')),
    ("processes[0].cwd", lambda b: one_process(["run"], extra=f'cwd = "/w{b}"')),
    ("hosts[0].python", lambda b: one_process(["run"]).replace('address = "10.0.0.1"',
                                                             f'address = "10.0.0.1"\npython = "py{b}"')),
])  # fmt: skip
def test_validate_refuses_control_characters_in_names_paths_and_commands(bad, where, text) -> None:
    found = _problems(text(bad))
    assert len(found) == 1 and f": {where}: contains a control character (" in found[0], found
    assert re.match(r"inv\.toml:\d+: ", found[0]) and not RAW.search(found[0]) and "\n" not in found[0]


def test_the_issue_reproduction_newline_in_state_dir_and_health_command_is_refused(tmp_path) -> None:
    path = tmp_path / "inv.toml"
    path.write_text(one_process(["run"], extra='[processes.health]\ncheck = "command"\ncommand = ["true\\nid"]')
                    .replace('"/srv/dl"', '"/tmp/x\\ntouch /tmp/pwned"'))
    for cmd in ("validate", "plan"):
        r = CliRunner().invoke(main, [cmd, str(path)])
        assert r.exit_code == 1 and "touch" not in r.stdout
        assert "cluster.state_dir: contains a control character (\\n" in r.stderr
        assert "processes[0].health.command[0]: contains a control character (\\n" in r.stderr


# --- inline secrets in argv ----------------------------------------------------------------------


@pytest.mark.parametrize("argv, index, says", [
    (["vllm", "--api-key", "sk-abcdefghijklmnopqrstuvwxyz012345"], 2, "VLLM_API_KEY"),
    (["vllm", "--api-key=letmein"], 1, "VLLM_API_KEY"),
    (["engine", "--hf-token", "hf_abcdefghijklmnopqrstuvwxyz"], 2, "HF_TOKEN"),
    (["engine", "--password", "hunter2"], 2, "file:/path"),
    (["engine", "--registry-token=abc"], 1, "--registry-token"),
    (["sh", "-c", "curl -H 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.SflKxwRJSMeKKF2QT4f'"],
     2, "eyJ…"),
    (["engine", "--x", "ghp_abcdefghijklmnopqrstuvwxyz0123"], 2, "ghp_…"),
    (["engine", "--seed-key", "Zk3pQ8vN2xR7mT1wY6bL4cH9dJ0sF5gA"], 2, "random-looking"),
])  # fmt: skip
def test_validate_refuses_inline_secrets_in_a_command(argv, index, says) -> None:
    found = _problems(one_process(argv))
    assert len(found) == 1 and f": processes[0].command[{index}]: " in found[0], found
    assert says in found[0] and "${" in found[0] and "/proc/PID/cmdline" in found[0]
    secret = argv[index].split("=", 1)[-1]
    assert secret not in found[0]  # the message names the flag or the shape, never the value


def test_inline_secrets_are_refused_in_every_argv_the_inventory_writes() -> None:
    text = one_process(["run"], extra='[processes.health]\ncheck = "command"\ncommand = ["probe", "--token", "t0k"]')
    text += textwrap.dedent("""
        [frontend]
        extra_args = ["--api-key", "abc"]
        [[workers]]
        name = "w"
        backend = "vllm"
        model = "m"
        hosts = ["a"]
        extra_args = ["--hf-token=hf_abcdefghijklmnopqrstuvwxyz"]
        [ray]
        head = "a"
        head_args = ["--admin-api-key", "x1"]
        """)
    keys = [p.split(": ")[1] for p in _problems(text) if "inline secret" in p]
    assert keys == ["processes[0].health.command[2]", "frontend.extra_args[1]", "workers[0].extra_args[0]",
                    "ray.head_args[1]"]


@pytest.mark.parametrize("argv", [
    ["vllm", "--hf-token"], ["vllm", "--hf-token", "--enforce-eager"], ["e", "--kv-bytes-per-token", "2"],
    ["e", "--max-num-batched-tokens", "8192"], ["e", "--tokenizer", "meta-llama/Llama-3.3-70B-Instruct"],
    ["e", "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"], ["e", "--client-secret", "/run/secrets/x"],
    ["e", "--revision", "447166a4b039480fc84b588d41b9c7d70123456a"], ["sh", "-c", 'exec e --api-key "$API_KEY"'],
    ["e", "--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'],
    ["e", "a3f9c2e1-4b5d-4e6f-8a7b-9c0d1e2f3a4b"], ["e", "nvidia-DeepSeek-R1-FP4-v2-Instruct-2025"],
])  # fmt: skip
def test_ordinary_arguments_are_not_taken_for_secrets(argv) -> None:
    parse(one_process(argv), "t.toml")


# --- what the CLI prints from outside ------------------------------------------------------------


def _snapshot(evil: str) -> dict:
    proc = {"host": f"h{evil}", "name": f"p{evil}", "role": "process", "state": "FAILED", "pid": None, "uptime": None,
            "restarts": 0, "generation": 1, "last_exit": None, "health": "", "reason": f"because{evil}"}
    return {"cluster": f"c{evil}", "launch_id": f"l{evil}", "daemon_pid": 1, "now": 10.0, "started": 0.0,
            "processes": [proc], "hosts": [{"name": f"h{evil}", "address": "x", "up": False, "error": f"e{evil}"}],
            "gangs": [{"name": f"g{evil}", "state": "RUNNING", "generation": 1, "restarts": 0, "members": [evil]}]}


@pytest.mark.parametrize("evil", NASTY)
def test_status_of_a_forged_snapshot_prints_nothing_raw(evil: str) -> None:
    text = render(_snapshot(evil))
    assert not RAW.search(text)
    assert len(text.splitlines()) == 6  # header, one unreachable host, one gang, blank, table header, one row


@pytest.mark.parametrize("evil", NASTY)
def test_preflight_table_prints_what_a_node_said_escaped(evil: str, capsys) -> None:
    _show_checks([Check(f"h{evil}", f"reach{evil}", "fail", f"python: {evil}not found")])
    err = capsys.readouterr().err
    assert not RAW.search(err) and len(err.splitlines()) == 3
