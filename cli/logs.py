"""One logging setup for every command and daemon: structlog to stderr, JSON or console.

Daemons bind who they are (volume, region or node) into every line through structlog's
context variables (`bind_process`). Secrets never reach a log line: the last processor masks
the values of secret-named keys and any bearer token, DSN password or `token=` query that a
message or an error text carries, whatever logged it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from enum import StrEnum
from typing import Any

import structlog


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(StrEnum):
    AUTO = "auto"  # console on a terminal, JSON otherwise
    JSON = "json"
    CONSOLE = "console"


MASK = "***"
_SECRET_KEY = re.compile(r"token|secret|password|passwd|authorization|cookie", re.IGNORECASE)
_SECRET_TEXT = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + MASK),
    (re.compile(r"(?i)([?&](?:token|password|secret)=)[^&\s'\"]+"), r"\1" + MASK),
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+@"), r"\1" + MASK + "@"),  # postgresql://u:PW@host
    (re.compile(r"(?i)((?:password|secret|token)\s*[=:]\s*)['\"]?[^\s'\",}]+"), r"\1" + MASK),
)


def redact_text(text: str) -> str:
    for pattern, repl in _SECRET_TEXT:
        text = pattern.sub(repl, text)
    return text


def redact(
    _logger: object, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no secret in any key or value of the event."""
    for key, value in list(event.items()):
        if _SECRET_KEY.search(key) and value not in (None, ""):
            event[key] = MASK
        elif isinstance(value, str):
            event[key] = redact_text(value)
    return event


def setup_logging(level: str = LogLevel.WARNING, fmt: str = LogFormat.AUTO) -> None:
    """structlog (and the stdlib loggers of libraries) to stderr at `level`; `MIRRORFS_LOG`
    overrides the level and `MIRRORFS_LOG_FORMAT` the format (the demo's children inherit
    them)."""
    name = os.environ.get("MIRRORFS_LOG", level).upper()
    lvl = logging.getLevelNamesMapping().get(name, logging.WARNING)
    fmt = os.environ.get("MIRRORFS_LOG_FORMAT", fmt)
    console = fmt == LogFormat.CONSOLE or (fmt != LogFormat.JSON and sys.stderr.isatty())
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s")
    logging.getLogger("pysyncobj").setLevel(max(lvl, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            structlog.dev.ConsoleRenderer(colors=False)
            if console
            else structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def bind_process(**who: str | int) -> None:
    """Name this process in every log line from now on (volume=..., region=..., node=...)."""
    structlog.contextvars.bind_contextvars(**who)
