"""What every command shares: the one event loop, signal handling, errors and logging setup."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import typer

from mirror import MirrorError
from objstore.errors import StoreError
from volume.config import MirrorRegion, VolumeConfig, load_config
from volume.errors import ChangelogError

T = TypeVar("T")


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


def mirror_region(ctx: typer.Context, name: str) -> tuple[VolumeConfig, MirrorRegion]:
    """The config and the named mirror region resolved from it; an unknown name is the
    config's one-line error (naming the known mirrors), never a traceback."""
    cfg = config(ctx)
    try:
        return cfg, cfg.mirror_region(name)
    except ChangelogError as exc:
        fail(exc.message, exc.hint)
