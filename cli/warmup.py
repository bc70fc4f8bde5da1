"""`mirrorfs warmup`: (being built, issue 13)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    return None
