"""Plan text is pasteable, never runs user text through a shell, and never shows secrets."""

from __future__ import annotations

import json
import shlex

from dynamo_launch.inventory import parse
from dynamo_launch.plan import build
from dynamo_launch.plan.render import command_text, to_json, to_text
from tests.inventory_keys import one_process

HOSTILE = ["; rm -rf /", "$(touch /tmp/pwned)", "it's", 'say "hi"', "a b  c", "`id`", "\\n", "*"]


def _shell_words(text: str) -> list[str]:
    return shlex.split(text.replace("\\\n", " "))


def test_hostile_argv_round_trips_through_the_rendered_command() -> None:
    argv = ["/bin/echo", *HOSTILE, "--flag", "--opt=$(x)"]
    plan = build(parse(one_process(argv), "t.toml"))
    proc = plan.process("p")
    assert proc.argv == tuple(argv)  # a list end to end: no shell string was ever built
    assert _shell_words(command_text(proc)) == argv


def test_secret_references_render_as_references_only() -> None:
    env = 'HF_TOKEN = "${HF_TOKEN}"\nNGC_API_KEY = "file:/etc/keys/ngc key"\nPLAIN = "v a l"'
    plan = build(parse(one_process(["run"], env), "t.toml"))
    text, js = to_text(plan), to_json(plan)
    words = _shell_words(command_text(plan.process("p")))
    assert words[:3] == ["HF_TOKEN=$HF_TOKEN", "NGC_API_KEY=$(cat '/etc/keys/ngc key')", "PLAIN=v a l"]
    assert 'HF_TOKEN="$HF_TOKEN"' in text
    data = json.loads(js)
    env_out = {e["name"]: e["value"] for e in data["processes"][-1]["env"]}
    assert env_out["HF_TOKEN"] == {"secret": "${HF_TOKEN}"}
    assert env_out["NGC_API_KEY"] == {"secret": "file:/etc/keys/ngc key"}


def test_text_lists_hosts_in_inventory_order_and_processes_in_start_order() -> None:
    plan = build(parse(one_process(["run"]) + '\n[frontend]\n', "t.toml"))
    text = to_text(plan)
    assert text.index("[1] nats") < text.index("[2] etcd") < text.index("[3] frontend") < text.index("[4] p")


def test_json_is_complete_enough_to_rebuild_every_command() -> None:
    plan = build(parse(one_process(["a", "b c"]), "t.toml"))
    data = json.loads(to_json(plan))
    assert [p["name"] for p in data["processes"]] == [p.name for p in plan.processes]
    assert data["processes"][-1]["argv"] == ["a", "b c"]
    assert {"cluster", "head", "hosts", "processes", "gangs", "nats_url", "etcd_url"} <= set(data)
