"""Apply changelog records to the replica: exactly once, in order, one transaction per batch.

The batch and the watermark commit together, so after a crash the replica holds exactly the
records up to its watermark: re-delivering them is skipped, the next ones apply. A batch is
whole requests (volume/records.py): it must end on a record that ends its request, so the
replica never shows half a request and the watermark only ever stands at a request boundary.
A batch is folded into its net row changes first (mirror.follow.changes) and written with one
statement per table and kind of change, a fixed dozen round trips whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from mirror.db import Database, translating
from mirror.errors import ApplyGapError, PartialRequestError, ReplicaDivergedError
from mirror.follow.changes import BatchChanges, slice_blocks
from mirror.replica import Watermark, read_watermark
from volume.records import Record

_SQL_SET_WATERMARK = (
    "UPDATE watermark SET applied_version = $1, applied_ts = $2, updated_at = now()"
)
_SQL_DEL_DENTRIES = (
    "DELETE FROM dentries d USING unnest($1::bigint[], $2::text[]) AS x(parent, name)"
    ' WHERE d.parent = x.parent AND d.name = x.name COLLATE "C"'
)
_SQL_DEL_REFS = (
    "DELETE FROM chunk_refs r"
    " USING unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS x(slice_id, ino, chunk_index)"
    " WHERE r.slice_id = x.slice_id AND r.ino = x.ino AND r.chunk_index = x.chunk_index"
)
_SQL_CLIP_REFS = (
    "UPDATE chunk_refs r SET len = x.len"
    " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])"
    " AS x(slice_id, ino, chunk_index, len)"
    " WHERE r.slice_id = x.slice_id AND r.ino = x.ino AND r.chunk_index = x.chunk_index"
)
_SQL_DEL_INODES = (
    "WITH refs AS (DELETE FROM chunk_refs WHERE ino = any($1::bigint[]))"
    " DELETE FROM inodes WHERE ino = any($1::bigint[])"
)
_SQL_FREE_SLICES = (
    "WITH s AS (DELETE FROM slices WHERE id = any($1::bigint[])),"
    " b AS (DELETE FROM blocks WHERE slice_id = any($1::bigint[]))"
    " INSERT INTO gc_queue (slice_id, idx, size, freed_version)"
    " SELECT * FROM unnest($2::bigint[], $3::integer[], $4::integer[], $5::bigint[])"
    " ON CONFLICT (slice_id, idx) DO NOTHING"
)
_SQL_SET_INODES = (
    "UPDATE inodes i SET kind = x.kind, mode = x.mode, uid = x.uid, gid = x.gid, size = x.size,"
    " mtime_ms = x.mtime_ms, ctime_ms = x.ctime_ms, nlink = x.nlink, target = x.target"
    " FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::bigint[], $5::bigint[],"
    " $6::bigint[], $7::bigint[], $8::bigint[], $9::integer[], $10::text[])"
    " AS x(ino, kind, mode, uid, gid, size, mtime_ms, ctime_ms, nlink, target)"
    " WHERE i.ino = x.ino"
)
INODE_COLUMNS = (
    "ino",
    "kind",
    "mode",
    "uid",
    "gid",
    "size",
    "mtime_ms",
    "ctime_ms",
    "nlink",
    "target",
)
REF_COLUMNS = ("ino", "chunk_index", "ord", "slice_id", "size", "off", "len", "pos")
BLOCK_COLUMNS = ("slice_id", "idx", "size", "checksum")


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Column arrays for an unnest(...) statement."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


def affected_rows(status: str) -> int:
    """Row count of a command status such as 'DELETE 3' or 'INSERT 0 5'."""
    return int(status.rsplit(" ", 1)[-1])


async def _expect(conn: asyncpg.Connection, what: str, want: int, sql: str, *args: Any) -> None:
    got = affected_rows(await conn.execute(sql, *args))
    if got != want:
        raise ReplicaDivergedError(
            f"replica does not fit the changelog: {what} {got} of {want} rows"
        )


def _unapplied(records: Sequence[Record], applied_version: int) -> Sequence[Record]:
    """The records after `applied_version`, checked contiguous; ApplyGapError otherwise."""
    start = 0
    while start < len(records) and records[start].version <= applied_version:
        start += 1
    todo = records[start:]
    expected = applied_version + 1
    for record in todo:
        if record.version != expected:
            raise ApplyGapError(
                f"expected record {expected} next, got {record.version}"
                f" (replica applied up to {applied_version})",
                expected=expected,
                got=record.version,
            )
        expected += 1
    return todo


async def write_changes(conn: asyncpg.Connection, c: BatchChanges) -> None:
    """Write folded changes inside the caller's transaction, deletes before inserts.

    Row conflicts (a unique key already taken, a row to change or delete that is missing)
    raise ReplicaDivergedError.
    """
    try:
        await _write_changes(conn, c)
    except asyncpg.UniqueViolationError as exc:
        raise ReplicaDivergedError(f"replica does not fit the changelog: {exc}") from exc


async def _write_changes(conn: asyncpg.Connection, c: BatchChanges) -> None:
    if c.dentry_del:
        parents, names = _columns(sorted(c.dentry_del), 2)
        await _expect(conn, "removed entries", len(parents), _SQL_DEL_DENTRIES, parents, names)
    if c.ref_del:
        cols = [list(c.ref_del), *_columns(list(c.ref_del.values()), 2)]
        await conn.execute(_SQL_DEL_REFS, *cols)
    if c.ref_len:
        cols = [list(c.ref_len), *_columns(list(c.ref_len.values()), 3)]
        await conn.execute(_SQL_CLIP_REFS, *cols)
    if c.inode_del:
        gone = sorted(c.inode_del)
        await _expect(conn, "removed inodes", len(gone), _SQL_DEL_INODES, gone)
    if c.slice_del or c.gc:
        gc = [(sid, idx, size, version) for (sid, idx), (size, version) in sorted(c.gc.items())]
        await conn.execute(_SQL_FREE_SLICES, sorted(c.slice_del), *_columns(gc, 4))
    if c.inode_set:
        cols = _columns([c.inode_set[ino] for ino in sorted(c.inode_set)], 10)
        await _expect(conn, "changed inodes", len(c.inode_set), _SQL_SET_INODES, *cols)
    if c.inode_new:
        await conn.copy_records_to_table(
            "inodes", records=list(c.inode_new.values()), columns=INODE_COLUMNS
        )
    if c.dentry_new:
        rows = [(parent, name, ino) for (parent, name), ino in c.dentry_new.items()]
        await conn.copy_records_to_table(
            "dentries", records=rows, columns=("parent", "name", "ino")
        )
    if c.slice_new:
        slices = [(sid, size, sums) for sid, (size, sums) in c.slice_new.items()]
        await conn.copy_records_to_table(
            "slices", records=slices, columns=("id", "size", "checksums")
        )
        blocks = [
            b for sid, (size, sums) in c.slice_new.items() for b in slice_blocks(sid, size, sums)
        ]
        await conn.copy_records_to_table("blocks", records=blocks, columns=BLOCK_COLUMNS)
    if c.ref_new:
        await conn.copy_records_to_table(
            "chunk_refs", records=list(c.ref_new.values()), columns=REF_COLUMNS
        )


async def apply_records(
    db_or_conn: Database | asyncpg.Connection, records: Sequence[Record]
) -> Watermark:
    """Apply a batch of consecutive records and move the watermark, in one transaction.

    Records at or below the applied version are skipped (re-delivery is harmless); the rest
    must start at applied_version + 1 and be contiguous, else ApplyGapError and nothing is
    applied, and must end at a request boundary (the last record `ends_request`), else
    PartialRequestError and nothing is applied. Effects follow volume/effects.py; ticks,
    alloc_slices and mirror registry records move only the watermark. Raises
    MalformedRecordError (unknown op, bad effect) or ReplicaDivergedError (the batch does not
    fit the tables); either way the whole batch is rolled back and the watermark is
    unchanged. Concurrent appliers serialise on the watermark row. Returns the watermark
    (applied_version, applied_ts) after the batch.

    Given a connection already inside a transaction, the batch runs in a savepoint and is
    durable only when the caller commits.
    """
    if isinstance(db_or_conn, Database):
        async with db_or_conn.acquire() as conn:
            return await _apply(conn, records)
    with translating("the caller's connection"):
        return await _apply(db_or_conn, records)


async def _apply(conn: asyncpg.Connection, records: Sequence[Record]) -> Watermark:
    async with conn.transaction():
        applied = await read_watermark(conn, lock=True)
        todo = _unapplied(records, applied[0])
        if not todo:
            return applied
        if not todo[-1].ends_request:
            raise PartialRequestError(
                f"batch ends at version {todo[-1].version}, inside a request: not applied",
                version=todo[-1].version,
            )
        changes = BatchChanges()
        for record in todo:
            changes.add(record)
        await write_changes(conn, changes)
        last = todo[-1]
        await conn.execute(_SQL_SET_WATERMARK, last.version, last.ts)
        return last.version, last.ts
