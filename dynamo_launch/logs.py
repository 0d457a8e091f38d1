"""structlog configuration: human-readable on a TTY, JSON lines otherwise (journald).

Modules take a bound logger (``log.bind(host=..., process=..., generation=...)``)
and pass it down, so every line carries its context. Secrets are never logged:
only :class:`~dynamo_launch.plan.spec.ProcessSpec` names and argv reach the log,
env values never do.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["configure", "get_logger"]


def configure(*, json_output: bool | None = None, level: str = "info", stream: Any = None) -> None:
    """Set up structlog once for the process. ``json_output=None``: JSON unless stderr is a TTY."""
    stream = stream or sys.stderr
    if json_output is None:
        json_output = not stream.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if json_output else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    """A structlog logger bound with ``context`` (cluster, host, process, generation …)."""
    return structlog.get_logger("dynamo_launch").bind(**context)
