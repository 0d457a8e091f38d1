"""Log lines: every line JSON in JSON mode (libraries' logging and Python warnings included),
journald priorities when writing to the journal."""

from __future__ import annotations

import io
import json
import logging
import os
import warnings

import pytest
import structlog

from dynamo_launch import logs


@pytest.fixture
def restore():
    handlers, level, show = logging.getLogger().handlers[:], logging.getLogger().level, warnings.showwarning
    yield
    logging.getLogger().handlers[:] = handlers
    logging.getLogger().setLevel(level)
    warnings.showwarning = show
    structlog.reset_defaults()


def test_json_mode_turns_library_logging_and_warnings_into_json_lines(restore):
    out = io.StringIO()
    logs.configure(json_output=True, level="info", stream=out)
    logs.get_logger(cluster="c").info("hello", host="h1")
    logging.getLogger("asyncssh").warning("connection lost")
    logging.getLogger("asyncssh").info("chatter")  # a library's info is not ours to show
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("nats.aio.client").exception("encountered error")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = logs._show_warning  # catch_warnings saved the configured one; use it inside too
        warnings.warn("DSA is deprecated", DeprecationWarning, stacklevel=1)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]  # every line is JSON
    assert [(x["event"], x["level"]) for x in lines] == [
        ("hello", "info"), ("connection lost", "warning"), ("encountered error", "error"),
        ("DSA is deprecated", "warning")]
    assert lines[0]["cluster"] == "c" and lines[1]["logger"] == "asyncssh"
    assert "ValueError: boom" in lines[2]["exception"] and lines[3]["category"] == "DeprecationWarning"


def test_debug_level_shows_libraries_chatter_and_warning_level_hides_our_info(restore):
    out = io.StringIO()
    logs.configure(json_output=True, level="debug", stream=out)
    logging.getLogger("asyncssh").info("chatter")
    logs.get_logger().debug("details")
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["chatter", "details"]
    out = io.StringIO()
    logs.configure(json_output=True, level="warning", stream=out)
    logs.get_logger().info("progress")
    logs.get_logger().warning("trouble")
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["trouble"]


def test_to_the_journal_each_line_carries_its_syslog_priority(restore, tmp_path, monkeypatch):
    with open(tmp_path / "journal", "w+") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        logs.configure(json_output=True, level="info", stream=stream)
        logs.get_logger().info("up")
        logs.get_logger().warning("host unreachable")
        logs.get_logger().error("failed")
        stream.flush()
        stream.seek(0)
        lines = stream.read().splitlines()
    assert [x[:3] for x in lines] == ["<6>", "<4>", "<3>"]
    assert [json.loads(x[3:])["event"] for x in lines] == ["up", "host unreachable", "failed"]


def test_not_the_journal_no_prefix(restore, tmp_path, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    with open(tmp_path / "file", "w+") as stream:
        assert not logs.to_journald(stream)
        logs.configure(json_output=True, stream=stream)
        logs.get_logger().info("up")
        stream.flush()
        stream.seek(0)
        assert json.loads(stream.read())["event"] == "up"
