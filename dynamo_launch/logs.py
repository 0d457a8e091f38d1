"""structlog configuration: human-readable on a TTY, JSON lines otherwise (journald).

Modules take a bound logger (``log.bind(host=..., process=..., generation=...)``)
and pass it down, so every line carries its context. Secrets are never logged:
only :class:`~dynamo_launch.plan.spec.ProcessSpec` names and argv reach the log,
env values never do.

In JSON mode every line on the stream is one JSON object: what libraries log through
:mod:`logging` (asyncssh, nats-py, aetcd) and Python's warnings are turned into events too.
Writing to journald (``JOURNAL_STREAM`` names the stream), each line starts with its syslog
priority (``<4>`` for a warning): journald strips it and files the line under that priority,
so ``journalctl -p warning`` works and ``journalctl -o cat`` shows pure JSON.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

import structlog

__all__ = ["LEVELS", "configure", "get_logger", "to_journald"]

LEVELS = ("debug", "info", "warning", "error")
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


def to_journald(stream: Any) -> bool:
    """True when ``stream`` is the journal's own stream (systemd sets ``JOURNAL_STREAM=dev:ino``)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def configure(*, json_output: bool | None = None, level: str = "info", stream: Any = None) -> None:
    """Set up structlog once for the process. ``json_output=None``: JSON unless stderr is a TTY."""
    stream = stream or sys.stderr
    if json_output is None:
        json_output = not stream.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    if json_output and to_journald(stream):
        json_renderer = renderer

        def renderer(logger: Any, name: str, event: dict[str, Any]) -> str:
            return f"<{_PRIORITY.get(str(event.get('level')), 6)}>{json_renderer(logger, name, event)}"

    threshold = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if json_output else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries' own logging and Python's warnings become events of the same stream and format.
    root = logging.getLogger()
    root.handlers[:] = [_ToStructlog()]
    root.setLevel(max(threshold, logging.WARNING) if threshold > logging.DEBUG else logging.DEBUG)
    warnings.showwarning = _show_warning


class _ToStructlog(logging.Handler):
    """Forwards a stdlib :mod:`logging` record (a library's) as a structlog event."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger(record.name)
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            method = {logging.DEBUG: log.debug, logging.INFO: log.info, logging.WARNING: log.warning}.get(
                record.levelno, log.error)
            method(record.getMessage(), **fields)
        except Exception:  # never let a log line take the daemon down
            self.handleError(record)


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    structlog.get_logger("py.warnings").warning(str(message), category=category.__name__, where=f"{filename}:{lineno}")


def get_logger(**context: Any) -> Any:
    """A structlog logger bound with ``context`` (cluster, host, process, generation …)."""
    return structlog.get_logger("dynamo_launch").bind(**context)
