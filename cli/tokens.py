"""`mirrorfs token create --scope SCOPE`: mint a bearer token for one scope.

A token is signed with a key derived from the volume's `secret` (volume/tokens.py), so minting
talks to no server and every node accepts the new token at once. Revoking one means rotating
the secret, which revokes every minted token: hand out as few as the job needs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.runtime import config, fail
from volume.errors import BadRequestError
from volume.tokens import SCOPES_HELP, mint_token, mirror_of, parse_scope, token_key

token_app = typer.Typer(help="Mint bearer tokens with scopes.", rich_markup_mode="markdown")


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")


@token_app.command("create")
def create(
    ctx: typer.Context,
    scope: Annotated[str, typer.Option("--scope", "-s", help=f"One of {SCOPES_HELP}")],
) -> None:
    """Print a new token for SCOPE (the token is the last word of the line)."""
    cfg = config(ctx)
    try:
        scope = parse_scope(scope)
    except BadRequestError as exc:
        fail(exc.message, exc.hint)
    mirror = mirror_of(scope)
    if mirror is not None and mirror not in cfg.mirrors:
        known = ", ".join(sorted(cfg.mirrors)) or "none"
        fail(
            f"no mirror named {mirror!r} in {cfg.path} (known: {known})",
            f"create it first (`mirrorfs mirror create {mirror}`), which mints its token",
        )
    typer.echo(f"{scope} token: {mint_token(token_key(cfg.secret), scope)}")
