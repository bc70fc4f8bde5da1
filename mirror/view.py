"""The client's `MetadataView` (fallback/view.py) over a mirror region's PostgreSQL replica.

Every call is one read-only repeatable-read transaction whose first statement reads the
watermark: the snapshot is taken there, so the answer is the replica at exactly that
`applied_version`, which is the version the call returns. A file resolves in one such
transaction (its inode, the chunk maps of the range and the copy state of every block of those
slices), so a read never mixes two versions, nor trusts a block state of another version.

Answers and errors are the source's (changelog/api.py `get_meta`): the same FsError errnos and
messages, in the same order (ENOTDIR, then EACCES, then ENOENT along the path), the same
permission checks for the view's uid/gid (volume/permissions.py: search on every directory of
the path, read on a directory listed), BadRequestError for a bad range. A session that saw a
newer version than the replica has applied gets `ReplicaBehindError` (the consistency gate
waits or asks the source); this view never waits itself.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import AsyncIterator

import asyncpg

from mirror.db import Database
from mirror.replica import (
    SQL_READDIR,
    SQL_WALK_CHAIN,
    block_states_in,
    chunk_in,
    read_watermark,
    row_inode,
)
from volume.checks import check_int
from volume.errors import FsError, ReplicaBehindError
from volume.fileversion import ChunkMap, FileVersion, chunk_range
from volume.inode import ROOT_INO, Inode, SliceRef
from volume.paths import split_path
from volume.permissions import R_OK, X_OK, require

# The source's caps (changelog/api.py), repeated so both regions refuse the same requests.
MAX_READDIR_LIMIT = 10_000

_SQL_CHUNKS = (
    "SELECT r.chunk_index, r.slice_id, r.size, r.off, r.len, r.pos, s.checksums"
    " FROM chunk_refs r JOIN slices s ON s.id = r.slice_id"
    " WHERE r.ino = $1 AND r.chunk_index >= $2 AND r.chunk_index < $3"
    " ORDER BY r.chunk_index, r.ord"
)


class ReplicaView:
    """Metadata of mirror region `region` from its replica database `db`, as user `uid`/`gid`
    sees it (permissions checked as the source checks them)."""

    def __init__(self, db: Database, region: str, *, uid: int = 0, gid: int = 0) -> None:
        self.db = db
        self.region = region
        self.uid = uid
        self.gid = gid

    @contextlib.asynccontextmanager
    async def _snapshot(self, min_version: int) -> AsyncIterator[tuple[asyncpg.Connection, int]]:
        """(connection in a read-only repeatable-read transaction, its applied_version)."""
        async with (
            self.db.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            applied, _ = await read_watermark(conn)  # first statement: the snapshot's version
            if min_version > applied:
                raise ReplicaBehindError(self.region, applied, min_version)
            yield conn, applied

    async def applied_version(self) -> int:
        """The replica's applied_version now (for a gate deciding whether to wait)."""
        async with self.db.acquire() as conn:
            return (await read_watermark(conn))[0]

    async def lookup(self, path: str, *, min_version: int = 0) -> tuple[int, Inode]:
        async with self._snapshot(min_version) as (conn, version):
            return version, await self._walk(conn, path)

    async def readdir(
        self, path: str, *, after: str = "", limit: int = 1000, min_version: int = 0
    ) -> tuple[int, list[tuple[str, Inode]]]:
        limit = min(limit, MAX_READDIR_LIMIT)
        check_int(limit, "limit", 1, 2**31)  # the source's check, after its cap
        async with self._snapshot(min_version) as (conn, version):
            inode = await self._walk(conn, path)
            if not inode.is_dir:
                raise FsError(errno.ENOTDIR, "not a directory", path=path)
            require(inode, self.uid, self.gid, R_OK, path)
            rows = await conn.fetch(SQL_READDIR, inode.ino, after, limit)
        return version, [(r["name"], row_inode(r)) for r in rows]

    async def chunk(self, ino: int, index: int, *, min_version: int = 0) -> ChunkMap:
        async with self._snapshot(min_version) as (conn, _):
            refs, checksums = await chunk_in(conn, ino, index)
        return ChunkMap(refs, checksums)

    async def resolve_file(
        self, path: str, *, offset: int = 0, length: int | None = None, min_version: int = 0
    ) -> FileVersion:
        chunks: dict[int, ChunkMap] = {}
        async with self._snapshot(min_version) as (conn, version):
            inode = await self._walk(conn, path)
            indexes = chunk_range(inode, offset, length)
            if not indexes:
                return FileVersion(version, inode, {}, {})
            rows = await conn.fetch(_SQL_CHUNKS, inode.ino, indexes.start, indexes.stop)
            states = await block_states_in(conn, (r["slice_id"] for r in rows))
        for index in indexes:
            chunks[index] = ChunkMap([], {})
        for r in rows:
            cmap = chunks[r["chunk_index"]]
            cmap.slices.append(SliceRef(r["slice_id"], r["size"], r["off"], r["len"], r["pos"]))
            cmap.checksums[r["slice_id"]] = list(r["checksums"])
        return FileVersion(version, inode, chunks, states)

    async def _walk(self, conn: asyncpg.Connection, path: str) -> Inode:
        """The inode at `path` (a final symlink as itself), checked as the source's walk
        (changelog/namespace/lookup.py): per component, ENOTDIR if the current inode is not a
        directory, EACCES without search permission on it, ENOENT if the name is not there;
        EINVAL/ENAMETOOLONG for a bad path."""
        parts = split_path(path)
        chain = [row_inode(r) for r in await conn.fetch(SQL_WALK_CHAIN, parts, ROOT_INO)]
        for depth in range(len(parts)):
            inode = chain[depth]
            if not inode.is_dir:
                raise FsError(errno.ENOTDIR, "a path component is not a directory", path=path)
            require(inode, self.uid, self.gid, X_OK, path)
            if depth + 1 >= len(chain):
                raise FsError(errno.ENOENT, "no such file or directory", path=path)
        return chain[len(parts)]
