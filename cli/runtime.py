"""What every command shares: the one event loop, signal handling, errors and logging setup."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import structlog
import typer

from mirror import MirrorError
from objstore.errors import StoreError
from volume.config import VolumeConfig, load_config
from volume.errors import ChangelogError

T = TypeVar("T")


def setup_logging(level: str = "warning") -> None:
    """structlog to stderr; `MIRRORFS_LOG` (debug/info/warning) overrides the default."""
    name = os.environ.get("MIRRORFS_LOG", level).upper()
    lvl = logging.getLevelNamesMapping().get(name, logging.WARNING)
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s")
    logging.getLogger("pysyncobj").setLevel(max(lvl, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False)
            if sys.stderr.isatty()
            else structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)
    raise typer.Exit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; expected failures print error/hint, never a traceback."""
    try:
        return asyncio.run(coro)
    except ChangelogError as exc:
        fail(exc.message, exc.hint)
    except StoreError as exc:
        fail(str(exc), exc.hint)
    except MirrorError as exc:
        fail(exc.message, exc.hint)
    except KeyboardInterrupt:
        fail("interrupted", code=130)


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, T]]) -> T:
    """Run a daemon: SIGTERM/SIGINT set the stop event and the daemon unwinds cleanly."""

    async def wrapper() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return run(wrapper())


def config(ctx: typer.Context) -> VolumeConfig:
    path = ctx.obj.get("config") if ctx.obj else None
    try:
        return load_config(path, on_warning=lambda line: typer.echo(f"warning: {line}", err=True))
    except ChangelogError as exc:
        fail(exc.message, exc.hint)
