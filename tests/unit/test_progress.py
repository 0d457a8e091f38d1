"""`up`'s live progress: the block's rendering, the plain events' schedule and fields, and the
terminal stream that keeps the block below the log (issue 13, item 5)."""

from __future__ import annotations

import io
import json
import threading

import pytest
import structlog

from dynamo_launch import logs
from dynamo_launch.console import LiveBlock, can_redraw
from dynamo_launch.progress import Row, Schedule, cells, duration, fields, last_line, render, truncate
from tests.terminal import Screen

LLAMA = Row("llama-0-node1", "node1", "STARTING", 72.4, 1800.0,
            "INFO Loading safetensors checkpoint shards:  45% Completed | 9/20")
DECODE = Row("decode-0", "node2", "WAITING", 72.4, None, "waiting: llama-0-node1 starting")
NATS = Row("nats", "node1", "BACKOFF", 3.0, None, "exited (code 1)")


# --- the block ---------------------------------------------------------------------------------------
def test_block_golden() -> None:
    assert render([LLAMA, DECODE], 5, 120) == [
        "3 of 5 processes ready; waiting for 2:",
        "  llama-0-node1  node1  STARTING  1m12s / 30m  INFO Loading safetensors checkpoint shards:  45% Completed | 9/20",
        "  decode-0       node2  WAITING   1m12s        waiting: llama-0-node1 starting",
    ]


def test_no_rows_no_block() -> None:
    assert render([], 5, 80) == []


def test_rows_in_state_order_trouble_first_then_given_order() -> None:
    later = Row("frontend", "node1", "WAITING", 1.0, None, "")
    lines = render([DECODE, LLAMA, later, NATS], 4, 200)
    assert [line.split()[0] for line in lines[1:]] == ["nats", "llama-0-node1", "decode-0", "frontend"]


def test_every_line_fits_the_terminal_width_and_a_cut_is_marked() -> None:
    for width in (20, 40, 60, 200):
        lines = render([LLAMA, DECODE], 5, width)
        assert all(cells(line) <= width - 1 for line in lines), (width, lines)  # the last column wraps
    narrow = render([LLAMA], 1, 60)
    assert narrow[1] == "  llama-0-node1  node1  STARTING  1m12s / 30m  INFO Loadin…" and len(narrow[1]) == 59
    assert render([LLAMA], 1, 1) == ["…", "…"]


def test_columns_align_on_cells_not_characters() -> None:
    wide = Row("模型", "node1", "STARTING", 5, 600, "加载中 50%")  # two cells per character
    lines = render([wide, DECODE], 2, 80)
    assert lines[1] == "  模型      node1  STARTING  5s / 10m  加载中 50%"
    assert lines[1].index("node1") + 2 == lines[2].index("node2")  # 2 wide characters = 4 cells
    assert truncate("加载中加载中", 7) == "加载中…"
    assert cells(truncate("加载中加载中", 6)) <= 6


def test_control_characters_are_shown_never_obeyed() -> None:
    hostile = Row("w\x1b[2J", "h\n", "STARTING", 1, 60, "ok\x1b]52;c;cm0gLXJmIH4=\x07 \u202edone")
    lines = render([hostile], 1, 200)
    assert len(lines) == 2
    assert lines[1] == "  w\\x1b[2J  h\\n  STARTING  1s / 1m  ok\\x1b]52;c;cm0gLXJmIH4=\\x07 \\u202edone"
    assert not any(c in line for line in lines for c in "\x1b\x07\n\r\u202e")


def test_a_short_terminal_shows_what_fits_and_how_many_more() -> None:
    rows = [Row(f"w{i}", "n", "STARTING", i, 600, "") for i in range(10)]
    lines = render(rows, 10, 80, height=6)
    assert lines == ["0 of 10 processes ready; waiting for 10:", "  w0  n  STARTING  0s / 10m",
                     "  w1  n  STARTING  1s / 10m", "  w2  n  STARTING  2s / 10m", "  … and 7 more"]
    assert len(render(rows, 10, 80, height=12)) == 11  # all ten fit with a line to spare
    assert render(rows, 10, 80, height=2) == ["0 of 10 processes ready; waiting for 10:"]


@pytest.mark.parametrize(("seconds", "text", "short"), [
    (0, "0s", "0s"), (0.9, "0s", "0s"), (59.9, "59s", "59s"), (60, "1m00s", "1m"), (72, "1m12s", "1m12s"),
    (600, "10m00s", "10m"), (3599, "59m59s", "59m59s"), (3600, "1h00m", "1h"), (3720, "1h02m", "1h02m"),
    (7200, "2h00m", "2h"), (90061, "25h01m", "25h01m"), (-5, "0s", "0s"),
])
def test_durations(seconds: float, text: str, short: str) -> None:
    assert duration(seconds) == text
    assert duration(seconds, short=True) == short


@pytest.mark.parametrize(("log", "line"), [
    ("", ""),
    ("first\nsecond\n", "second"),
    ("first\nsecond\n\n  \n", "second"),  # blank lines at the end are skipped
    ("Loading:  10%\rLoading:  50%\rLoading:  90%", "Loading:  90%"),  # a progress bar's last redraw
    ("Loading:  90%\r\n", "Loading:  90%"),
    ("a\tb\n", "a b"),
    ("\x1b]0;title\x07x\n", "\\x1b]0;title\\x07x"),
    ("one\x1ctwo\n", "one\\x1ctwo"),  # only \n ends a line
    ("  indented  \n", "indented"),
])
def test_last_line(log: str, line: str) -> None:
    assert last_line(log) == line


# --- the plain events --------------------------------------------------------------------------------
def test_plain_event_fields() -> None:
    assert fields(LLAMA) == {"process": "llama-0-node1", "host": "node1", "state": "STARTING", "elapsed_s": 72,
                             "deadline_s": 1800, "last_line": LLAMA.detail}
    assert fields(DECODE) == {"process": "decode-0", "host": "node2", "state": "WAITING", "elapsed_s": 72,
                              "detail": "waiting: llama-0-node1 starting"}
    assert fields(Row("x", "h", "STARTING", 1, 60, "a\x1b[2Jb"))["last_line"] == "a\\x1b[2Jb"


def _at(name: str, state: str, elapsed: float) -> Row:
    return Row(name, "h", state, elapsed, 600.0 if state == "STARTING" else None)


def test_schedule_first_after_10s_then_every_30s() -> None:
    s = Schedule()
    reported = [t for t in range(100) if s.due([_at("w", "STARTING", t)])]
    assert reported == [10, 40, 70]


def test_schedule_per_process_and_forgets_the_ready() -> None:
    s = Schedule()
    assert s.due([_at("a", "STARTING", 12), _at("b", "STARTING", 3)]) == [_at("a", "STARTING", 12)]
    assert s.due([_at("a", "STARTING", 13), _at("b", "STARTING", 10)]) == [_at("b", "STARTING", 10)]
    assert s.due([_at("b", "STARTING", 11)]) == []  # a is ready: forgotten
    assert s.due([_at("a", "STARTING", 12)]) == [_at("a", "STARTING", 12)]  # a new stay of a


def test_schedule_starts_over_on_a_new_state_or_a_restart() -> None:
    s = Schedule()
    assert s.due([_at("w", "WAITING", 10)])
    assert not s.due([_at("w", "STARTING", 5)])
    assert s.due([_at("w", "STARTING", 10)])  # 10 s into its new state
    assert not s.due([_at("w", "STARTING", 30)])
    assert s.due([_at("w", "STARTING", 10.5)])  # elapsed went back: a restarted copy


def test_schedule_slows_down_on_a_long_stay() -> None:
    s = Schedule()
    reported = [t for t in range(0, 2000, 5) if s.due([_at("w", "WAITING", t)])]
    assert reported == [*range(10, 600, 30), 880, 1180, 1480, 1780]  # every 5 min past 10 min


# --- the terminal ---------------------------------------------------------------------------------------
class FakeTerminal(io.StringIO):
    """What a program writes to its terminal, kept; a terminal by its answers."""

    def isatty(self) -> bool:
        return True


def _seen(term: FakeTerminal) -> str:
    """What a person looking at ``term`` sees now."""
    screen = Screen()
    screen.feed(term.getvalue())
    return screen.text


def test_log_lines_scroll_above_the_block_which_is_redrawn_in_place() -> None:
    term = FakeTerminal()
    block = LiveBlock(term)
    block.write("first log line\n")
    block.show(["2 of 3 ready", "  w  STARTING  1s"])
    block.show(["2 of 3 ready", "  w  STARTING  1s"])  # unchanged: nothing written
    before = term.getvalue()
    block.show(["2 of 3 ready", "  w  STARTING  1s"])
    assert term.getvalue() == before
    block.show(["2 of 3 ready", "  w  STARTING  2s"])
    block.write("second ")  # held back until its line is complete
    assert "second" not in term.getvalue()
    block.write("log line\nthird log line\n")
    assert _seen(term) == "first log line\nsecond log line\nthird log line\n2 of 3 ready\n  w  STARTING  2s\n"
    block.close()
    assert _seen(term) == "first log line\nsecond log line\nthird log line\n"


def test_the_block_under_a_log_line_is_made_as_of_that_line() -> None:
    term = FakeTerminal()
    block = LiveBlock(term)
    states = {"w": "STARTING", "v": "STARTING"}
    block.source = lambda: [f"{n} {s}" for n, s in states.items() if s != "READY"]
    block.refresh()
    states["w"] = "READY"
    block.write("w ready\n")  # not followed by a block that still says w STARTING
    assert _seen(term) == "w ready\nv STARTING\n"

    states["v"] = "READY"  # a line from another thread gets the block last made (the source is the loop's)
    thread = threading.Thread(target=block.write, args=("from a thread\n",))
    thread.start()
    thread.join()
    block.source = lambda: 1 / 0  # a broken block costs no log line
    block.write("still logged\n")
    assert _seen(term) == "w ready\nfrom a thread\nstill logged\nv STARTING\n"
    block.close()
    assert _seen(term) == "w ready\nfrom a thread\nstill logged\n"


def test_block_lines_are_cut_to_the_terminal_of_the_moment() -> None:
    term = FakeTerminal()  # no size: 80 columns
    LiveBlock(term).show(["x" * 200])
    assert term.getvalue() == "x" * 78 + "…\n"


def test_structlog_lines_go_above_the_block() -> None:
    term = FakeTerminal()
    block = LiveBlock(term)
    try:
        logs.configure(json_output=True, stream=block)
        block.show(["waiting for 1:", "  w  STARTING"])
        structlog.get_logger("t").info("hello", n=1)
        structlog.get_logger("t").info("again", n=2)
    finally:
        logs.configure(json_output=True)
    *logged, head, row, end = _seen(term).split("\n")
    assert [json.loads(x)["event"] for x in logged] == ["hello", "again"]
    assert (head, row, end) == ("waiting for 1:", "  w  STARTING", "")


def test_only_a_terminal_that_moves_its_cursor_gets_a_block() -> None:
    assert can_redraw(FakeTerminal(), {"TERM": "xterm-256color"})
    assert not can_redraw(FakeTerminal(), {"TERM": "dumb"})
    assert not can_redraw(FakeTerminal(), {})
    assert not can_redraw(io.StringIO(), {"TERM": "xterm"})
