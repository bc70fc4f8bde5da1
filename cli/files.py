"""File verbs against the volume: put, get, cat, ls, stat, rm, mv, mkdir."""

from __future__ import annotations

import stat as stat_mod
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import orjson
import typer

from cli.runtime import config, fail, run
from fallback import FsClient

T = TypeVar("T")


def with_client(ctx: typer.Context, fn: Callable[[FsClient], Awaitable[T]]) -> T:
    cfg = config(ctx)

    async def main() -> T:
        async with await FsClient.for_source(cfg) as client:
            return await fn(client)

    return run(main())


def register(app: typer.Typer) -> None:
    for fn in (put, get, cat, ls, stat, rm, mv, mkdir):
        app.command(fn.__name__)(fn)


def put(
    ctx: typer.Context,
    local: Annotated[Path, typer.Argument(help="Local file to upload")],
    path: Annotated[str, typer.Argument(help="Destination path in the volume")],
) -> None:
    """Upload a file: blocks to the source bucket first, then one metadata commit."""
    if not local.is_file():
        fail(f"{local}: not a regular file")

    async def go(c: FsClient) -> None:
        start = time.perf_counter()
        with open(local, "rb") as f:  # noqa: ASYNC230 - reads go through to_thread in write_file
            res = await c.put(f, path)
        secs = time.perf_counter() - start
        typer.echo(f"{path}: {res.size} bytes in {secs:.2f}s, committed at version {res.version}")

    with_client(ctx, go)


def get(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument()],
    local: Annotated[Path, typer.Argument(help="Local destination file")],
) -> None:
    """Download a file."""

    async def go(c: FsClient) -> None:
        with open(local, "wb") as out:  # noqa: ASYNC230 - local writes of received blocks
            async for data in c.read(path):
                out.write(data)

    with_client(ctx, go)


def cat(ctx: typer.Context, path: Annotated[str, typer.Argument()]) -> None:
    """Write a file's bytes to stdout."""

    async def go(c: FsClient) -> None:
        async for data in c.read(path):
            sys.stdout.buffer.write(data)
        sys.stdout.flush()

    with_client(ctx, go)


def ls(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument()] = "/",
    long: Annotated[bool, typer.Option("-l", help="Long listing")] = False,
) -> None:
    """List a directory."""

    async def go(c: FsClient) -> None:
        async for name, attr in c.ls(path):
            if long:
                mode = stat_mod.filemode(_type_bits(attr.kind) | attr.mode)
                mtime = time.strftime("%Y-%m-%d %H:%M", time.localtime(attr.mtime_ms / 1000))
                owner = f"{attr.uid:5d} {attr.gid:5d}"
                typer.echo(f"{mode} {attr.nlink:3d} {owner} {attr.size:12d} {mtime} {name}")
            else:
                typer.echo(name + ("/" if attr.is_dir else ""))

    with_client(ctx, go)


def _type_bits(kind: str) -> int:
    return {"dir": stat_mod.S_IFDIR, "symlink": stat_mod.S_IFLNK}.get(kind, stat_mod.S_IFREG)


def stat(ctx: typer.Context, path: Annotated[str, typer.Argument()]) -> None:
    """Print a path's attributes as JSON."""

    async def go(c: FsClient) -> None:
        attr = await c.stat(path)
        typer.echo(orjson.dumps(attr.to_dict(), option=orjson.OPT_INDENT_2).decode())

    with_client(ctx, go)


def rm(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument()],
    dir: Annotated[bool, typer.Option("-d", "--dir", help="Remove an empty directory")] = False,
) -> None:
    """Remove a file (or, with -d, an empty directory)."""
    with_client(ctx, lambda c: c.rm(path, dir=dir))


def mv(
    ctx: typer.Context, src: Annotated[str, typer.Argument()], dst: Annotated[str, typer.Argument()]
) -> None:
    """Rename (replaces a file at dst, refuses a move into its own subtree)."""
    with_client(ctx, lambda c: c.mv(src, dst))


def mkdir(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument()],
    parents: Annotated[
        bool, typer.Option("-p", "--parents", help="Make parents as needed")
    ] = False,
) -> None:
    """Make a directory."""
    with_client(ctx, lambda c: c.mkdir(path, parents=parents))
