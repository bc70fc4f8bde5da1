"""`mirrorfs bench`: the benchmark suite (scenarios/bench.py), run as its own process.

cli sits below scenarios in the rooms (the product never imports a benchmark), so this command
only hands its arguments to `python -m scenarios.bench` and returns its exit status.
"""

from __future__ import annotations

import subprocess
import sys

import typer


def register(app: typer.Typer) -> None:
    app.command(
        "bench",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )(bench)


def bench(ctx: typer.Context) -> None:
    """The DESIGN §9 benchmarks, each figure beside its baseline from the same run, with the
    machine's load; `mirrorfs bench --help` lists the options (--quick, --only NAME, --out DIR)."""
    done = subprocess.run([sys.executable, "-m", "scenarios.bench", *ctx.args], check=False)
    raise typer.Exit(done.returncode)
