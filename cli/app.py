"""The `mirrorfs` command: a typer app composed of one module per command group."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import bench, dashboard, demo, files, mirror, mount, scenario, source, tokens, warmup
from cli.logs import LogFormat, LogLevel, setup_logging

app = typer.Typer(
    name="mirrorfs",
    help="A multi-region mirror file system for AI data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Paragraphs of a docstring rewrap to the terminal (rich mode kept its line breaks).
    rich_markup_mode="markdown",
)


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            envvar="MIRRORFS_CONFIG",
            help="Topology file (default ./mirrorfs.toml).",
        ),
    ] = None,
    log_level: Annotated[
        LogLevel, typer.Option(case_sensitive=False, help="Least severe level logged (stderr).")
    ] = LogLevel.WARNING,
    log_format: Annotated[
        LogFormat, typer.Option(help="auto: console on a terminal, JSON lines otherwise.")
    ] = LogFormat.AUTO,
) -> None:
    setup_logging(log_level, log_format)
    ctx.obj = {"config": config}


source.register(app)
files.register(app)
mirror.register(app)
demo.register(app)
tokens.register(app)
dashboard.register(app)
bench.register(app)
scenario.register(app)
mount.register(app)
warmup.register(app)


def main() -> None:
    app()
