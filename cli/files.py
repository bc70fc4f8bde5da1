"""File verbs against the volume, through any region: put, get, cat, ls, stat, rm, mv, mkdir.

Every verb takes `--region NAME` (default $MIRRORFS_REGION, else the source): reads resolve in
that region (its replica, its bucket, fallback to the source's), writes go to the source and
return once that region's replica shows them, so the next command there reads them. Reads take
`--window S` and `--policy source|error|serve` (the staleness bound). Errors and exit codes are
the same in every region: `error: ...` (and `hint: ...`) on stderr, exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import stat as stat_mod
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO, TypeVar, cast

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cli.client import REGION_ENV, aconnect
from cli.runtime import config, fail, run
from fallback import FsClient, ReadBound, StalePolicy
from objstore.errors import StoreError
from volume.errors import ChangelogError
from volume.inode import Inode

T = TypeVar("T")

RegionOpt = Annotated[
    str | None,
    typer.Option(
        "--region",
        envvar=REGION_ENV,
        show_envvar=True,
        help="Region to go through: a mirror's name, or 'source' (the default)",
    ),
]
WindowOpt = Annotated[
    float | None,
    typer.Option(
        "--window",
        min=0.0,
        metavar="S",
        help="Staleness bound in seconds for this read (default: the region's window_s)",
    ),
]
PolicyOpt = Annotated[
    StalePolicy | None,
    typer.Option(
        "--policy",
        case_sensitive=False,
        help="When the replica is staler than the window: read the source, fail, or serve "
        "it anyway flagged stale (default: source)",
    ),
]


def with_client(
    ctx: typer.Context,
    fn: Callable[[FsClient], Awaitable[T]],
    region: str | None = None,
    *,
    window: float | None = None,
    policy: StalePolicy | None = None,
) -> T:
    cfg = config(ctx)

    async def main() -> T:
        async with await aconnect(cfg, region, window_s=window, policy=policy) as client:
            return await fn(client)

    return run(main())


def bound_of(window: float | None, policy: StalePolicy | None) -> ReadBound | None:
    """The per-call bound the read options ask for (None: the client's, and the region's)."""
    if window is None and policy is None:
        return None
    return ReadBound(window_s=window, policy=policy)


def warn_if_stale(path: str, stale: bool, region: str) -> None:
    if stale:
        typer.echo(
            f"warning: {path} was served from region {region!r}'s replica past its window "
            "(policy serve): it may be older than the source's",
            err=True,
        )


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
    region: RegionOpt = None,
) -> None:
    """Upload a file: the destination is checked first, missing parent directories are made,
    blocks go to the source bucket, then the metadata commit (from a mirror region too: the
    command returns once that region shows the new version)."""
    if not local.is_file():
        fail(f"{local}: not a regular file")

    async def go(c: FsClient) -> None:
        start = time.perf_counter()
        with (
            open(local, "rb") as f,  # noqa: ASYNC230 - reads go through to_thread in write_file
            transfer_bar(f"put {path}", local.stat().st_size) as bar,
        ):
            res = await c.put(cast(BinaryIO, CountingReader(f, bar)), path, parents=not no_parents)
        secs = time.perf_counter() - start
        typer.echo(f"{path}: {res.size} bytes in {secs:.2f}s, committed at version {res.version}")

    with_client(ctx, go, region)


def get(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="Path in the volume to download")],
    local: Annotated[Path, typer.Argument(help="Local destination file, or a directory")],
    region: RegionOpt = None,
    window: WindowOpt = None,
    policy: PolicyOpt = None,
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
            async with (
                c.open(path, bound=bound_of(window, policy)) as f,
                LocalReplacement(target) as out,
            ):
                warn_if_stale(path, f.stale, c.region)
                with transfer_bar(f"get {path}", f.size) as bar:
                    while data := await f.read(READ_PIECE_BYTES):
                        await out.write(data)
                        bar(len(data))
        except (StoreError, ChangelogError):
            raise  # the volume's and the buckets' errors (OSErrors too) are reported as theirs
        except OSError as exc:  # the local side: a full disk, a read-only directory...
            fail(f"{target}: {exc.strerror or exc}", hint=f"{target} is unchanged")

    with_client(ctx, go, region, window=window, policy=policy)


READ_PIECE_BYTES = 4 * 1024 * 1024  # one block: the handle streams them with readahead
BAR_MIN_BYTES = 16 * 1024 * 1024  # smaller transfers are over before a bar would help


@contextlib.contextmanager
def transfer_bar(what: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr for a large transfer on a terminal; `advance(n)` it as
    bytes move. Off a terminal, or for a small file, nothing is drawn."""
    shown = sys.stderr.isatty() and total >= BAR_MIN_BYTES
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not shown,
    ) as progress:
        task = progress.add_task(what, total=total)
        yield lambda n: progress.advance(task, n)


class CountingReader:
    """A binary file whose reads also advance a progress bar (the rest is the file's own)."""

    def __init__(self, f: BinaryIO, advance: Callable[[int], None]) -> None:
        self._f = f
        self._advance = advance

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._advance(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


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


def cat(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="File in the volume")],
    region: RegionOpt = None,
    window: WindowOpt = None,
    policy: PolicyOpt = None,
) -> None:
    """Write a file's bytes to stdout."""

    async def go(c: FsClient) -> None:
        async with c.open(path, bound=bound_of(window, policy)) as f:
            warn_if_stale(path, f.stale, c.region)
            while data := await f.read(READ_PIECE_BYTES):
                sys.stdout.buffer.write(data)
        sys.stdout.flush()

    with_client(ctx, go, region, window=window, policy=policy)


def ls(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="Directory (or file) in the volume")] = "/",
    long: Annotated[
        bool, typer.Option("-l", help="Long listing: mode, links, owner, size, time, name")
    ] = False,
    region: RegionOpt = None,
    window: WindowOpt = None,
    policy: PolicyOpt = None,
) -> None:
    """List a directory (a file: just it, as ls does)."""
    bound = bound_of(window, policy)

    async def go(c: FsClient) -> None:
        before = c.stale_answers
        try:
            async for name, attr in c.ls(path, bound=bound):
                typer.echo(long_line(name, attr) if long else name + ("/" if attr.is_dir else ""))
        except NotADirectoryError:
            attr = await c.stat(path, bound=bound)
            typer.echo(long_line(path, attr) if long else path)
        warn_if_stale(path, c.stale_answers > before, c.region)

    with_client(ctx, go, region, window=window, policy=policy)


def long_line(name: str, attr: Inode) -> str:
    """One `ls -l` line: mode, links, uid, gid, size, mtime (local time), name (-> target)."""
    mode = stat_mod.filemode(_type_bits(attr.kind) | attr.mode)
    mtime = time.strftime("%Y-%m-%d %H:%M", time.localtime(attr.mtime_ms / 1000))
    owner = f"{attr.uid:5d} {attr.gid:5d}"
    shown = f"{name} -> {attr.target}" if attr.kind == "symlink" else name
    return f"{mode} {attr.nlink:3d} {owner} {attr.size:12d} {mtime} {shown}"


def _type_bits(kind: str) -> int:
    return {"dir": stat_mod.S_IFDIR, "symlink": stat_mod.S_IFLNK}.get(kind, stat_mod.S_IFREG)


def stat(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="Path in the volume")],
    as_json: Annotated[bool, typer.Option("--json", help="The attributes as JSON")] = False,
    region: RegionOpt = None,
    window: WindowOpt = None,
    policy: PolicyOpt = None,
) -> None:
    """Print a path's attributes: kind, size, mode, owner, times (--json: as JSON)."""

    async def go(c: FsClient) -> None:
        attr = await c.stat(path, bound=bound_of(window, policy))
        warn_if_stale(path, c.stale_answers > 0, c.region)
        if as_json:
            typer.echo(orjson.dumps(attr.to_dict(), option=orjson.OPT_INDENT_2).decode())
        else:
            typer.echo(describe(path, attr))

    with_client(ctx, go, region, window=window, policy=policy)


def describe(path: str, attr: Inode) -> str:
    """stat's human form (times in UTC, to the millisecond, as the volume keeps them)."""
    rows = [
        ("path", path + (f" -> {attr.target}" if attr.kind == "symlink" else "")),
        ("kind", attr.kind),
        ("size", f"{attr.size} bytes"),
        ("mode", f"{attr.mode:04o} ({stat_mod.filemode(_type_bits(attr.kind) | attr.mode)})"),
        ("owner", f"uid {attr.uid}, gid {attr.gid}"),
        ("links", str(attr.nlink)),
        ("inode", str(attr.ino)),
        ("modified", _utc(attr.mtime_ms)),
        ("changed", _utc(attr.ctime_ms)),
    ]
    return "\n".join(f"{k + ':':<10}{v}" for k, v in rows)


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d} UTC"


def rm(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="Path to remove")],
    dir: Annotated[bool, typer.Option("-d", "--dir", help="Remove an empty directory")] = False,
    region: RegionOpt = None,
) -> None:
    """Remove a file (or, with -d, an empty directory)."""
    with_client(ctx, lambda c: c.rm(path, dir=dir), region)


def mv(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(help="Path to rename")],
    dst: Annotated[str, typer.Argument(help="New path (a file there is replaced)")],
    region: RegionOpt = None,
) -> None:
    """Rename (replaces a file at dst, refuses a move into its own subtree)."""
    with_client(ctx, lambda c: c.mv(src, dst), region)


def mkdir(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="Directory to make")],
    parents: Annotated[
        bool, typer.Option("-p", "--parents", help="Make parents as needed")
    ] = False,
    region: RegionOpt = None,
) -> None:
    """Make a directory."""
    with_client(ctx, lambda c: c.mkdir(path, parents=parents), region)
