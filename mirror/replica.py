"""Reads of the mirror replica: path lookup, attributes, directory pages, chunk maps, the queue.

Answers match the source's `changelog.namespace.Namespace` reads at the replica's watermark,
with one difference: the replica checks no permissions (it has no caller identity). A reader
that must enforce them checks the returned attributes itself. Errors are the source's:
`FsError` with ENOENT/ENOTDIR/EINVAL/ENAMETOOLONG and the same messages. Every method reads one
consistent snapshot of the replica (a single statement, or a read-only repeatable-read
transaction), never a mix of two batches.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import Any, NamedTuple

import asyncpg

from changelog.errors import FsError
from changelog.fileops import check_int
from changelog.inode import ROOT_INO, Inode, SliceRef
from changelog.paths import join_path, split_path
from mirror.applier import read_watermark
from mirror.db import Database

DEFAULT_READDIR_LIMIT = 1000

_INODE_FIELDS = (
    "i.ino, i.kind, i.mode, i.uid, i.gid, i.size, i.mtime_ms, i.ctime_ms, i.nlink, i.target"
)
_SQL_WALK = (
    "WITH RECURSIVE walk(depth, ino) AS ("
    " SELECT 0, $2::bigint"
    " UNION ALL"
    " SELECT w.depth + 1, d.ino FROM walk w JOIN dentries d"
    ' ON d.parent = w.ino AND d.name = ($1::text[])[w.depth + 1] COLLATE "C"'
    " WHERE w.depth < cardinality($1::text[]))"
    f" SELECT w.depth, {_INODE_FIELDS} FROM walk w JOIN inodes i ON i.ino = w.ino"
    " ORDER BY w.depth DESC LIMIT 1"
)
_SQL_READDIR = (
    f"SELECT d.name, {_INODE_FIELDS} FROM dentries d JOIN inodes i ON i.ino = d.ino"
    ' WHERE d.parent = $1 AND d.name > $2 COLLATE "C" ORDER BY d.name LIMIT $3'
)
_SQL_CHUNK = (
    "SELECT r.slice_id, r.size, r.off, r.len, r.pos, s.checksums FROM inodes i"
    " LEFT JOIN (chunk_refs r JOIN slices s ON s.id = r.slice_id)"
    " ON r.ino = i.ino AND r.chunk_index = $2"
    " WHERE i.ino = $1 ORDER BY r.ord"
)


class Backlog(NamedTuple):
    """Blocks not yet in the mirror bucket, counted from the block table when asked."""

    blocks_pending: int
    bytes_pending: int
    blocks_failed: int


def _inode(row: asyncpg.Record) -> Inode:
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


async def _lookup(conn: asyncpg.Connection, path: str) -> Inode:
    parts = split_path(path)
    row = await conn.fetchrow(_SQL_WALK, parts, ROOT_INO)
    if row is None:
        raise FsError(errno.ENOENT, "no such file or directory", path=path)
    inode = _inode(row)
    if row["depth"] == len(parts):
        return inode
    if not inode.is_dir:
        raise FsError(errno.ENOTDIR, "a path component is not a directory", path=path)
    raise FsError(errno.ENOENT, "no such file or directory", path=path)


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
            return await _lookup(conn, path)

    async def getattr(self, ino: int) -> Inode:
        """Attributes by inode number; ENOENT if there is no such inode."""
        async with self.db.acquire() as conn:
            row = await conn.fetchrow(f"SELECT {_INODE_FIELDS} FROM inodes i WHERE ino = $1", ino)
        if row is None:
            raise FsError(errno.ENOENT, f"no inode {ino}")
        return _inode(row)

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
            inode = await _lookup(conn, path)
            if not inode.is_dir:
                raise FsError(errno.ENOTDIR, "not a directory", path=path)
            rows = await conn.fetch(_SQL_READDIR, inode.ino, after, limit)
        return [(row["name"], _inode(row)) for row in rows]

    async def chunk(self, ino: int, index: int) -> tuple[list[SliceRef], dict[int, list[str]]]:
        """The refs of chunk `index` of `ino` in write order (newer later) and the block
        checksums of each slice they name; ([], {}) for an unwritten chunk. ENOENT if there is
        no such inode."""
        async with self.db.acquire() as conn:
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

    async def block_states(self, slice_ids: Iterable[int]) -> dict[tuple[int, int], str]:
        """{(slice_id, block index): 'pending' | 'copied' | 'failed'} for every block of the
        given slices. A slice that is not live in the replica has no entries: read its blocks
        from the source bucket."""
        ids = sorted(set(slice_ids))
        if not ids:
            return {}
        async with self.db.acquire() as conn:
            rows = await conn.fetch(
                "SELECT slice_id, idx, state FROM blocks WHERE slice_id = any($1::bigint[])", ids
            )
        return {(row["slice_id"], row["idx"]): row["state"] for row in rows}

    async def backlog(self) -> Backlog:
        """Blocks (and their bytes) waiting to be copied, and blocks whose copy failed."""
        async with self.db.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM blocks WHERE state = 'pending') AS pending,"
                " (SELECT coalesce(sum(size), 0) FROM blocks WHERE state = 'pending') AS bytes,"
                " (SELECT count(*) FROM blocks WHERE state = 'failed') AS failed"
            )
        assert row is not None
        return Backlog(int(row["pending"]), int(row["bytes"]), int(row["failed"]))

    async def dump_tree(self) -> dict[str, dict[str, Any]]:
        """The replica's namespace in exactly `NamespaceDump.dump_tree()`'s shape, so a test
        can compare it with the source's. Reads everything: for tests and small volumes."""
        async with (
            self.db.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            inodes = await conn.fetch(f"SELECT {_INODE_FIELDS} FROM inodes i")
            entries = await conn.fetch("SELECT parent, name, ino FROM dentries")
            refs = await conn.fetch(
                "SELECT r.ino, r.chunk_index, r.slice_id, r.size, r.off, r.len, r.pos,"
                " s.checksums FROM chunk_refs r JOIN slices s ON s.id = r.slice_id"
                " ORDER BY r.ino, r.chunk_index, r.ord"
            )
        attrs = {row["ino"]: _inode(row).to_dict() for row in inodes}
        children: dict[int, list[tuple[str, int]]] = {}
        for row in entries:
            children.setdefault(row["parent"], []).append((row["name"], row["ino"]))
        chunks: dict[int, dict[int, list[dict[str, Any]]]] = {}
        for row in refs:
            chunks.setdefault(row["ino"], {}).setdefault(row["chunk_index"], []).append(
                {
                    "id": row["slice_id"],
                    "size": row["size"],
                    "off": row["off"],
                    "len": row["len"],
                    "pos": row["pos"],
                    "checksums": list(row["checksums"]),
                }
            )
        out: dict[str, dict[str, Any]] = {}
        stack: list[tuple[str, int]] = [("/", ROOT_INO)]
        while stack:
            path, ino = stack.pop()
            item = dict(attrs[ino])
            if item["kind"] == "dir":
                stack.extend(
                    (join_path(path, name), child) for name, child in children.get(ino, [])
                )
            elif item["kind"] == "file":
                item["chunks"] = [[index, r] for index, r in sorted(chunks.get(ino, {}).items())]
            out[path] = item
        return dict(sorted(out.items()))

    async def check_integrity(self) -> list[str]:
        """Problems that `dump_tree` cannot show (rows no path reaches, dangling references);
        [] for a sound replica. Scans every table: for tests and `fsck`-style checks."""
        checks = {
            "inodes no entry names": "SELECT count(*) FROM inodes i WHERE i.ino <> 1 AND NOT"
            " EXISTS (SELECT 1 FROM dentries d WHERE d.ino = i.ino)",
            "entries naming no inode": "SELECT count(*) FROM dentries d WHERE NOT EXISTS"
            " (SELECT 1 FROM inodes i WHERE i.ino = d.ino)",
            "entries in no directory": "SELECT count(*) FROM dentries d WHERE NOT EXISTS"
            " (SELECT 1 FROM inodes i WHERE i.ino = d.parent AND i.kind = 'dir')",
            "refs of no file": "SELECT count(*) FROM chunk_refs r WHERE NOT EXISTS"
            " (SELECT 1 FROM inodes i WHERE i.ino = r.ino AND i.kind = 'file')",
            "refs to no slice": "SELECT count(*) FROM chunk_refs r WHERE NOT EXISTS"
            " (SELECT 1 FROM slices s WHERE s.id = r.slice_id)",
            "slices without a ref": "SELECT count(*) FROM slices s WHERE NOT EXISTS"
            " (SELECT 1 FROM chunk_refs r WHERE r.slice_id = s.id)",
            "blocks of no slice": "SELECT count(*) FROM blocks b WHERE NOT EXISTS"
            " (SELECT 1 FROM slices s WHERE s.id = b.slice_id)",
            "slices with missing blocks": "SELECT count(*) FROM slices s WHERE"
            " cardinality(s.checksums) <> (SELECT count(*) FROM blocks b WHERE b.slice_id = s.id)",
        }
        problems: list[str] = []
        async with (
            self.db.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            for what, sql in checks.items():
                count = int(await conn.fetchval(sql))
                if count:
                    problems.append(f"{count} {what}")
        return problems
