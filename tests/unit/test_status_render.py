"""The status table's text: what an operator reads without opening a log."""

from __future__ import annotations

from dynamo_launch import secrets
from dynamo_launch.model import SecretRef
from dynamo_launch.plan.spec import Env
from dynamo_launch.status import render
from tests.snapshots import proc, snap


def test_a_crash_looping_process_shows_why_before_the_probe_and_the_end_of_its_log():
    looping = proc("mocker-0", "BACKOFF", reason="exited (code 1); restarting in 4s", last_exit={"code": 1, "signal": None},
                    health="GET http://10.0.0.2:9090/health: connection refused",
                    last_lines="Traceback (most recent call last):\nModuleNotFoundError: No module named 'dynamo'\n")
    text = render(snap(looping, proc("frontend", "READY", pid=7, uptime=50.0, health="200 OK")))
    row = next(x for x in text.splitlines() if x.startswith("node1  mocker-0"))
    assert row.endswith("exited (code 1); restarting in 4s; GET http://10.0.0.2:9090/health: connection refused")
    tail = text.split("mocker-0 (BACKOFF, last exit code 1): the end of /var/lib/dl/logs/mocker-0.log:\n", 1)[1]
    assert tail.splitlines() == ["  Traceback (most recent call last):",
                                 "  ModuleNotFoundError: No module named 'dynamo'"]
    assert "frontend (" not in text  # a healthy process has no log block


def test_an_unsaved_state_file_heads_the_table():
    text = render(snap(proc("web", "READY"), state_unsaved={"error": "cannot write /s/state.json: No space left on device",
                                                             "since": 30.0}))
    assert text.splitlines()[1] == "STATE NOT SAVED for 70s: cannot write /s/state.json: No space left on device (retrying)"


def test_secrets_a_process_prints_are_redacted_from_what_status_shows():
    env = (Env("HF_TOKEN", SecretRef("env", "HF_TOKEN")), Env("SHORT", SecretRef("env", "S")), Env("PLAIN", "visible"),
           Env("GONE", SecretRef("env", "UNSET")))
    text = "login with hf_abcdefgh failed; visible; s=ab\n"
    assert secrets.redact(text, env, {"HF_TOKEN": "hf_abcdefgh", "S": "ab"}) == "login with *** failed; visible; s=ab\n"
