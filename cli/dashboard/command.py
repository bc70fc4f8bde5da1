"""`mirrorfs dashboard [--listen ADDR]`: the volume's status page, until Ctrl-C or SIGTERM.

The process holds the config (and so the admin token), polls every node and region daemon
itself (collector.py) and serves the page and its JSON (server.py). It prints one line, the
login URL, once it listens; with `--no-print-url` (what `mirrorfs demo` passes: it prints the
URL itself, and this process's output goes to a log file) it prints nothing, since a log is no
place for a login token.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import structlog
import typer
from aiohttp import web

from cli.dashboard.collector import DEFAULT_HISTORY_S, DEFAULT_INTERVAL_S, Collector
from cli.dashboard.server import MIN_TOKEN_LENGTH, Login, build_app, new_login_token
from cli.runtime import config, fail, run_until_signalled

log = structlog.get_logger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8470"
TOKEN_ENV = "MIRRORFS_DASHBOARD_TOKEN"


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (127.0.0.1); port 0 picks a free one."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.removeprefix("[").removesuffix("]") or "127.0.0.1", int(port)


def bind(listen: str) -> socket.socket:
    """A listening socket for `listen` (ValueError for a bad address, OSError if taken)."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def page_url(sock: socket.socket, token: str) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"


async def serve_dashboard(
    config_path: Path,
    sock: socket.socket,
    token: str,
    stop: asyncio.Event,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    history_s: float = DEFAULT_HISTORY_S,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve on `sock` (bound: see `bind`) until `stop`; `on_listening(url)` once it serves,
    with the login URL."""
    collector = Collector(config_path, interval_s=interval_s, history_s=history_s)
    port = sock.getsockname()[1]
    login = Login(token, cookie_name=f"mirrorfs_dashboard_{port}")
    runner = web.AppRunner(
        build_app(collector, login),
        access_log=None,  # its lines would carry the login URL, token and all
        handle_signals=False,
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        log.info("dashboard.listening", port=port, volume=collector.cfg.name)
        if on_listening:
            on_listening(page_url(sock, token))
        await collector.run(stop)
    finally:
        await runner.cleanup()


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard)


def dashboard(
    ctx: typer.Context,
    listen: Annotated[
        str,
        typer.Option(help="HOST:PORT to serve on (port 0: any free port)"),
    ] = DEFAULT_LISTEN,
    interval: Annotated[
        float, typer.Option(min=0.2, max=60, help="Seconds between polls of the regions")
    ] = DEFAULT_INTERVAL_S,
    print_url: Annotated[
        bool, typer.Option(help="Print the login URL (it holds the page's token)")
    ] = True,
) -> None:
    """Serve the volume's status page: source nodes and every mirror region, live.

    Runs until Ctrl-C or SIGTERM. The page's login token is random per start unless
    MIRRORFS_DASHBOARD_TOKEN is set; the volume's own tokens never reach the browser."""
    cfg = config(ctx)
    assert cfg.path is not None
    path = cfg.path
    token = os.environ.get(TOKEN_ENV) or new_login_token()
    if len(token) < MIN_TOKEN_LENGTH:
        fail(
            f"{TOKEN_ENV} is shorter than {MIN_TOKEN_LENGTH} characters",
            "unset it, or set a longer one",
        )
    try:
        sock = bind(listen)
    except ValueError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(
            f"cannot listen on {listen}: {exc.strerror or exc}",
            "pick another address with --listen HOST:PORT (port 0: any free port)",
        )

    def listening(url: str) -> None:
        if print_url:
            typer.echo(f"dashboard: {url}")

    run_until_signalled(
        lambda stop: serve_dashboard(
            path, sock, token, stop, interval_s=interval, on_listening=listening
        )
    )
