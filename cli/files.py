"""File verbs against the volume: put, get, cat, ls, stat, rm, mv, mkdir."""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import stat as stat_mod
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import orjson
import typer

from cli.connect import open_client
from cli.runtime import config, fail, run
from fallback import FsClient
from objstore.errors import StoreError

T = TypeVar("T")


def with_client(ctx: typer.Context, fn: Callable[[FsClient], Awaitable[T]]) -> T:
    cfg = config(ctx)

    async def main() -> T:
        async with await open_client(cfg) as client:
            return await fn(client)

    return run(main())


def register(app: typer.Typer) -> None:
    for fn in (put, get, cat, ls, stat, rm, mv, mkdir):
        app.command(fn.__name__)(fn)


def put(
    ctx: typer.Context,
    local: Annotated[Path, typer.Argument(help="Local file to upload")],
    path: Annotated[str, typer.Argument(help="Destination path in the volume")],
    no_parents: Annotated[
        bool, typer.Option("--no-parents", help="Refuse instead of making missing parents")
    ] = False,
) -> None:
    """Upload a file: the destination is checked first, missing parent directories are made,
    blocks go to the source bucket, then the metadata commit."""
    if not local.is_file():
        fail(f"{local}: not a regular file")

    async def go(c: FsClient) -> None:
        start = time.perf_counter()
        with open(local, "rb") as f:  # noqa: ASYNC230 - reads go through to_thread in write_file
            res = await c.put(f, path, parents=not no_parents)
        secs = time.perf_counter() - start
        typer.echo(f"{path}: {res.size} bytes in {secs:.2f}s, committed at version {res.version}")

    with_client(ctx, go)


def get(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument()],
    local: Annotated[Path, typer.Argument(help="Local destination file, or a directory")],
) -> None:
    """Download a file. Into an existing directory it writes DIR/NAME. The bytes go to a
    temporary file beside the destination, renamed over it only once complete and synced: an
    existing file is left as it was by any failure."""
    target = local / posixpath.basename(path.rstrip("/")) if local.is_dir() else local
    if not target.parent.is_dir():
        fail(
            f"{target.parent}: no such local directory",
            hint="create it first (mkdir -p), or name an existing directory",
        )

    async def go(c: FsClient) -> None:
        try:
            async with LocalReplacement(target) as out:
                async for data in c.read(path):
                    await out.write(data)
        except StoreError:
            raise  # a bucket's NotFoundError is an OSError too: reported as the bucket's
        except OSError as exc:  # the local side: a full disk, a read-only directory...
            fail(f"{target}: {exc.strerror or exc}", hint=f"{target} is unchanged")

    with_client(ctx, go)


class LocalReplacement:
    """A local file written whole or not at all: bytes go to a hidden temporary file in the
    same directory (so the rename cannot cross file systems); on a clean exit it is fsync'd,
    given the mode of the file it replaces (or the umask's), renamed over the target and the
    directory fsync'd; on any error it is removed and the target is untouched."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self._fd = -1
        self._tmp = ""

    async def __aenter__(self) -> LocalReplacement:
        self._fd, self._tmp = await asyncio.to_thread(
            tempfile.mkstemp,
            prefix=f".{self.target.name[:100]}.",
            suffix=".mirrorfs-get",
            dir=self.target.parent,
        )
        return self

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = await asyncio.to_thread(os.write, self._fd, view)
            view = view[n:]

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                await asyncio.to_thread(self._commit)
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)  # gone after a rename; removed after a failure

    def _commit(self) -> None:
        try:
            mode = stat_mod.S_IMODE(self.target.stat().st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(self._fd, mode)
        os.fsync(self._fd)  # the bytes are on disk before the name points at them
        os.close(self._fd)
        self._fd = -1
        os.replace(self._tmp, self.target)
        dir_fd = os.open(self.target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # and the rename itself survives a crash
        finally:
            os.close(dir_fd)


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
