"""Reads of the mirror replica: path lookup, attributes, directory pages, chunk maps, the queue.

Answers match the source's `changelog.namespace.Namespace` reads at the replica's watermark,
with one difference: the replica checks no permissions (it has no caller identity). A reader
that must enforce them checks the returned attributes itself. Errors are the source's:
`FsError` with ENOENT/ENOTDIR/EINVAL/ENAMETOOLONG and the same messages. Every method reads one
consistent snapshot of the replica (a single statement, or a read-only repeatable-read
transaction), never a mix of two batches.

The reads are also functions of a connection (`lookup_in`, `readdir_in`, `chunk_in`,
`block_states_in`), so a caller can run several inside one snapshot transaction of its own
(mirror/view.py: a file's inode, chunk maps and block states at one version).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

import asyncpg

from mirror.db import Database
from mirror.errors import ReplicaDivergedError
from volume.checks import check_int
from volume.errors import FsError
from volume.inode import ROOT_INO, Inode, SliceRef
from volume.paths import split_path

DEFAULT_READDIR_LIMIT = 1000
Watermark = tuple[int, int]  # (applied_version, applied_ts)

INODE_FIELDS = (
    "i.ino, i.kind, i.mode, i.uid, i.gid, i.size, i.mtime_ms, i.ctime_ms, i.nlink, i.target"
)
_SQL_WALK_FROM = (
    "WITH RECURSIVE walk(depth, ino) AS ("
    " SELECT 0, $2::bigint"
    " UNION ALL"
    " SELECT w.depth + 1, d.ino FROM walk w JOIN dentries d"
    ' ON d.parent = w.ino AND d.name = ($1::text[])[w.depth + 1] COLLATE "C"'
    " WHERE w.depth < cardinality($1::text[]))"
    f" SELECT w.depth, {INODE_FIELDS} FROM walk w JOIN inodes i ON i.ino = w.ino"
)
_SQL_WALK = _SQL_WALK_FROM + " ORDER BY w.depth DESC LIMIT 1"
# Every inode on the way, root first, as far as the names exist ($1 names, $2 the root):
# for a reader that checks search permission in each directory (mirror/view.py).
SQL_WALK_CHAIN = _SQL_WALK_FROM + " ORDER BY w.depth"
SQL_READDIR = (
    f"SELECT d.name, {INODE_FIELDS} FROM dentries d JOIN inodes i ON i.ino = d.ino"
    ' WHERE d.parent = $1 AND d.name > $2 COLLATE "C" ORDER BY d.name LIMIT $3'
)
_SQL_CHUNK = (
    "SELECT r.slice_id, r.size, r.off, r.len, r.pos, s.checksums FROM inodes i"
    " LEFT JOIN (chunk_refs r JOIN slices s ON s.id = r.slice_id)"
    " ON r.ino = i.ino AND r.chunk_index = $2"
    " WHERE i.ino = $1 ORDER BY r.ord"
)


def row_inode(row: asyncpg.Record) -> Inode:
    return Inode(
        row["ino"],
        row["kind"],
        row["mode"],
        row["uid"],
        row["gid"],
        row["size"],
        row["mtime_ms"],
        row["ctime_ms"],
        row["nlink"],
        row["target"],
    )


async def lookup_in(conn: asyncpg.Connection, path: str) -> Inode:
    """`Replica.lookup` on `conn` (in whatever transaction it is in)."""
    parts = split_path(path)
    row = await conn.fetchrow(_SQL_WALK, parts, ROOT_INO)
    if row is None:
        raise FsError(errno.ENOENT, "no such file or directory", path=path)
    inode = row_inode(row)
    if row["depth"] == len(parts):
        return inode
    if not inode.is_dir:
        raise FsError(errno.ENOTDIR, "a path component is not a directory", path=path)
    raise FsError(errno.ENOENT, "no such file or directory", path=path)


async def readdir_in(
    conn: asyncpg.Connection, path: str, after: str, limit: int
) -> list[tuple[str, Inode]]:
    """`Replica.readdir` on `conn`; run it in a repeatable-read transaction (two statements)."""
    check_int(limit, "limit", 1, 2**31)
    inode = await lookup_in(conn, path)
    if not inode.is_dir:
        raise FsError(errno.ENOTDIR, "not a directory", path=path)
    rows = await conn.fetch(SQL_READDIR, inode.ino, after, limit)
    return [(row["name"], row_inode(row)) for row in rows]


async def chunk_in(
    conn: asyncpg.Connection, ino: int, index: int
) -> tuple[list[SliceRef], dict[int, list[str]]]:
    """`Replica.chunk` on `conn`."""
    rows = await conn.fetch(_SQL_CHUNK, ino, index)
    if not rows:
        raise FsError(errno.ENOENT, f"no inode {ino}")
    refs: list[SliceRef] = []
    checksums: dict[int, list[str]] = {}
    for row in rows:
        if row["slice_id"] is None:
            continue
        refs.append(SliceRef(row["slice_id"], row["size"], row["off"], row["len"], row["pos"]))
        checksums[row["slice_id"]] = list(row["checksums"])
    return refs, checksums


async def block_states_in(
    conn: asyncpg.Connection, slice_ids: Iterable[int]
) -> dict[tuple[int, int], str]:
    """`Replica.block_states` on `conn`."""
    ids = sorted(set(slice_ids))
    if not ids:
        return {}
    rows = await conn.fetch(
        "SELECT slice_id, idx, state FROM blocks WHERE slice_id = any($1::bigint[])", ids
    )
    return {(row["slice_id"], row["idx"]): row["state"] for row in rows}


async def read_watermark(conn: asyncpg.Connection, *, lock: bool = False) -> Watermark:
    row = await conn.fetchrow(
        "SELECT applied_version, applied_ts FROM watermark FOR UPDATE"
        if lock
        else "SELECT applied_version, applied_ts FROM watermark"
    )
    if row is None:
        raise ReplicaDivergedError("the replica has no watermark row")
    return int(row["applied_version"]), int(row["applied_ts"])


class Replica:
    """Read access to one replica database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def watermark(self) -> tuple[int, int]:
        """(applied_version, applied_ts): the replica holds exactly the records up to it."""
        async with self.db.acquire() as conn:
            return await read_watermark(conn)

    async def snapshot_version(self) -> int | None:
        """Version of the last snapshot loaded; None if the replica was built from version 0."""
        async with self.db.acquire() as conn:
            value = await conn.fetchval("SELECT snapshot_version FROM watermark")
            return None if value is None else int(value)

    async def lookup(self, path: str) -> Inode:
        """The inode at `path`; a symlink is returned as itself and never followed (one in the
        middle of the path is ENOTDIR). Errors: ENOENT, ENOTDIR, EINVAL/ENAMETOOLONG (bad
        path), as `Namespace.resolve` (= `Namespace.lookup` without permission checks)."""
        async with self.db.acquire() as conn:
            return await lookup_in(conn, path)

    async def getattr(self, ino: int) -> Inode:
        """Attributes by inode number; ENOENT if there is no such inode."""
        async with self.db.acquire() as conn:
            row = await conn.fetchrow(f"SELECT {INODE_FIELDS} FROM inodes i WHERE ino = $1", ino)
        if row is None:
            raise FsError(errno.ENOENT, f"no inode {ino}")
        return row_inode(row)

    async def readdir(
        self, path: str, after: str = "", limit: int = DEFAULT_READDIR_LIMIT
    ) -> list[tuple[str, Inode]]:
        """Up to `limit` entries named after `after`, in code point (= UTF-8 byte) order; page on
        by passing the last name returned. No "." or "..". Errors: ENOENT, ENOTDIR, EINVAL
        (limit < 1, bad path)."""
        check_int(limit, "limit", 1, 2**31)
        async with (
            self.db.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await readdir_in(conn, path, after, limit)

    async def chunk(self, ino: int, index: int) -> tuple[list[SliceRef], dict[int, list[str]]]:
        """The refs of chunk `index` of `ino` in write order (newer later) and the block
        checksums of each slice they name; ([], {}) for an unwritten chunk. ENOENT if there is
        no such inode."""
        async with self.db.acquire() as conn:
            return await chunk_in(conn, ino, index)

    async def block_states(self, slice_ids: Iterable[int]) -> dict[tuple[int, int], str]:
        """{(slice_id, block index): 'pending' | 'copied' | 'failed'} for every block of the
        given slices. A slice that is not live in the replica has no entries: read its blocks
        from the source bucket."""
        async with self.db.acquire() as conn:
            return await block_states_in(conn, slice_ids)
