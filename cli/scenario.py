"""`mirrorfs scenario list|run`: multi-region scenarios on this machine (scenarios/).

cli/ sits below scenarios/ in the layers (scenarios drive the product as users do), so this
command runs `python -m scenarios` as a child and passes its exit code on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

scenario_app = typer.Typer(help="Regions across simulated distances and failures, checked.")


def register(app: typer.Typer) -> None:
    app.add_typer(scenario_app, name="scenario")


def _run(*args: str) -> None:
    code = subprocess.call([sys.executable, "-m", "scenarios", *args])
    if code:
        raise typer.Exit(code)


@scenario_app.command("list")
def list_cmd() -> None:
    """The standard scenarios."""
    _run("list")


@scenario_app.command("run")
def run_cmd(
    scenario: Annotated[str, typer.Argument(help="A standard scenario's name or a TOML file")],
    out: Annotated[Path | None, typer.Option(help="Report directory (default: a temp dir)")] = None,
    scale: Annotated[float, typer.Option(help="Multiply every duration (CI: < 1)")] = 1.0,
) -> None:
    """Run a scenario and check it; exit 1 when a check fails."""
    extra = ["--out", str(out)] if out is not None else []
    _run("run", scenario, "--scale", str(scale), *extra)
