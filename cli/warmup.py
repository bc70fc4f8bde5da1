"""`mirrorfs warmup`: fill the local block cache with files ahead of a model load.

The files are read whole through a client of the region (the same read path as `cat`: the
mirror bucket, fallback to the source, every block verified) with the disk cache in front, so
a mount or client using the same cache directory later reads them without asking a bucket.
A cache directory that cannot be written is an error before anything is read: a warmup that
keeps nothing would only cost egress.
"""

from __future__ import annotations

import errno
import posixpath
from pathlib import Path
from typing import Annotated

import typer

from cli.client import check_region, default_region
from cli.connect import open_client
from cli.files import READ_PIECE_BYTES, RegionOpt, transfer_bar
from cli.runtime import config, fail, run
from fallback import FsClient
from fallback.cached_blocks import use_cache
from objstore.cache import DEFAULT_CACHE_BYTES, BlockCache, default_cache_dir, parse_size
from volume.errors import ChangelogError, FsError

# The local block cache's options, shared with `mirrorfs mount`.
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        "--cache",
        help="The local block cache, shared by the mounts and clients of this host "
        "(default $MIRRORFS_CACHE_DIR, else $XDG_CACHE_HOME/mirrorfs/blocks, else "
        "~/.cache/mirrorfs/blocks)",
    ),
]
CacheSizeOpt = Annotated[
    str | None,
    typer.Option("--cache-size", help="Bound of the disk cache, e.g. 20GiB (default 10GiB)"),
]


def cache_bytes(cache_size: str | None) -> int:
    """The --cache-size option in bytes; a bad size is the command's one-line error."""
    try:
        return DEFAULT_CACHE_BYTES if cache_size is None else parse_size(cache_size)
    except ValueError as exc:
        fail(f"--cache-size: {exc}")


def register(app: typer.Typer) -> None:
    app.command("warmup")(warmup)


def warmup(
    ctx: typer.Context,
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="PATH", help="Files or directories in the volume (directories: all below)"
        ),
    ],
    region: RegionOpt = None,
    cache_dir: CacheDirOpt = None,
    cache_size: CacheSizeOpt = None,
) -> None:
    """Read files through the local block cache so a later model load is served from it.

    Prints how many blocks were fetched from the region and how many were already cached.
    (`mirror warmup` is another thing: it has a region copy blocks into its own bucket.)
    """
    size = cache_bytes(cache_size)
    if size <= 0:
        fail("--cache-size: must be more than 0 bytes for a warmup to keep anything")
    cfg = config(ctx)
    name = default_region(region)
    try:
        check_region(cfg, name)
    except ChangelogError as exc:
        fail(exc.message, exc.hint)
    where = cache_dir or default_cache_dir()
    cache = BlockCache(memory_bytes=0, disk_dir=where, disk_bytes=size)
    try:
        cache.prepare_disk()
    except OSError as exc:
        fail(f"cache directory {where}: {exc.strerror or exc}", hint="name another: --cache-dir")

    async def go() -> None:
        async with await open_client(cfg, name) as fs:
            cached = use_cache(fs, cache)
            files = await _files(fs, paths)
            total = sum(n for _, n in files)
            if total > size:
                typer.echo(
                    f"warning: {total} bytes to warm, more than the cache's {size}: the first "
                    "blocks read will be evicted by the last",
                    err=True,
                )
            with transfer_bar(f"warmup ({len(files)} files)", total) as advance:
                for path, _ in files:
                    async with fs.open(path) as f:
                        while data := await f.read(READ_PIECE_BYTES):
                            advance(len(data))
            c = cached.counters
            typer.echo(
                f"{len(files)} file(s), {total} bytes: {c.cache_misses} block(s) fetched "
                f"({c.cache_miss_bytes} bytes), {c.cache_hits} already cached "
                f"({c.cache_hit_bytes} bytes); cache {where} holds {cache.stats.disk_bytes} of "
                f"{size} bytes"
            )
            if cache.stats.disk_errors:
                fail(
                    f"the cache directory failed, some blocks were not kept: "
                    f"{cache.last_disk_error}",
                    hint="check its file system (space, permissions), or name another: --cache-dir",
                )

    try:
        run(go())
    finally:
        cache.close()


async def _files(fs: FsClient, paths: list[str]) -> list[tuple[str, int]]:
    """(path, size) of every regular file named or under a named directory, in order; a
    missing path is the command's error, symlinks under a directory are skipped."""
    out: list[tuple[str, int]] = []
    for raw in paths:
        path = "/" + raw.strip("/")
        try:
            top = await fs.stat(path)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                fail(f"{path}: no such file or directory in region {fs.region!r}")
            raise
        if top.is_file:
            out.append((path, top.size))
            continue
        if not top.is_dir:
            fail(f"{path}: not a file or a directory ({top.kind})")
        stack = [path]
        while stack:
            here = stack.pop()
            subdirs = []
            async for entry, attr in fs.ls(here):
                full = posixpath.join(here, entry)
                if attr.is_file:
                    out.append((full, attr.size))
                elif attr.is_dir:
                    subdirs.append(full)
            stack.extend(reversed(subdirs))
    return out
