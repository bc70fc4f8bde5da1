"""Replace the whole replica with a source snapshot, in one transaction.

Used by `mirror create` (first load) and by the follower's resync after a gap. Either the new
namespace, its copy queue and the watermark at the snapshot's version all commit, or nothing
changes. Readers of the replica wait while the load holds its table locks, then see the new
state at once; they never see half of it.

Blocks: every live block is queued for copy, except one the mirror bucket already holds (a row
in state 'copied' with the same slice id, index, size and checksum): a resync must not copy the
whole bucket again. Blocks of the old contents that the snapshot no longer has go to gc_queue.
A 'copied' row is kept only if it is true of the bucket in use: a load given the owner's stamp
(`mirror create`) keeps none unless the database was stamped for the same mirror, volume and
bucket, and writes the stamp in the same transaction (mirror/stamp.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import asyncpg

from mirror.db import Database
from mirror.errors import SnapshotError
from mirror.follow.applier import BLOCK_COLUMNS, INODE_COLUMNS, REF_COLUMNS, affected_rows
from mirror.stamp import Stamp, read_stamp, write_stamp
from objstore.keys import block_sizes
from volume.client import SourceClient
from volume.inode import KINDS, ROOT_INO
from volume.snapshot import SNAPSHOT_FORMAT, aread_snapshot_records

FLUSH_ROWS = 50_000  # rows buffered per table before a COPY; bounds memory at any snapshot size
LOAD_MAINTENANCE_WORK_MEM = "256MB"  # index builds after the bulk load sort in memory
SnapshotRows = AsyncIterable[dict[str, Any]] | Iterable[dict[str, Any]]


@dataclass
class LoadStats:
    """Counts of a snapshot load; `on_progress` sees it while it grows."""

    version: int
    inodes_total: int = 0
    slices_total: int = 0
    inodes: int = 0
    slices: int = 0
    refs: int = 0
    blocks: int = 0
    blocks_pending: int = 0
    blocks_kept_copied: int = 0
    blocks_to_gc: int = 0
    elapsed_s: float = 0.0
    _started: float = field(default_factory=time.monotonic, repr=False)


class _Sink:
    """Per-table row buffers, each written with one COPY per flush; counts rows written."""

    def __init__(self, conn: asyncpg.Connection, blocks_table: str) -> None:
        self.conn = conn
        self.tables: dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]] = {
            "slices": (("id", "size", "checksums"), []),
            blocks_table: (BLOCK_COLUMNS, []),
            "inodes": (INODE_COLUMNS, []),
            "dentries": (("parent", "name", "ino"), []),
            "chunk_refs": (REF_COLUMNS, []),
        }
        self.written = dict.fromkeys(self.tables, 0)

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        return self.tables[table][1]

    async def flush(self) -> None:
        for table, (columns, rows) in self.tables.items():
            if rows:
                await self.conn.copy_records_to_table(table, records=rows, columns=columns)
                self.written[table] += len(rows)
                rows.clear()


async def _aiter(rows: SnapshotRows) -> AsyncIterable[dict[str, Any]]:
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
    else:
        for row in rows:
            yield row


async def load_replica(
    db: Database,
    version: int,
    ts: int,
    rows: SnapshotRows,
    *,
    on_progress: Callable[[LoadStats], None] | None = None,
    stamp: Stamp | None = None,
) -> LoadStats:
    """Replace the replica with the snapshot `rows` (volume/snapshot.py order) taken at
    `version` (whose record has timestamp `ts`); set the watermark and snapshot_version to it.

    One transaction: on any error nothing changes. Raises SnapshotError for a malformed,
    reordered or truncated stream (header counts are checked), MirrorDbError for the database.
    `on_progress` is called after each bulk write and at the end. Concurrent appliers wait on
    the watermark row and afterwards apply from version + 1.

    `stamp`: the owner the replica is loaded for (see mirror/stamp.py); 'copied' rows survive
    only if the database was stamped for the same owner and bucket, and the stamp is written
    with the load. None (a resync by the daemon, which checked the stamp when it started):
    the stamp is left as it is and 'copied' rows are kept.
    """
    stats = LoadStats(version=version)
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL maintenance_work_mem = '{LOAD_MAINTENANCE_WORK_MEM}'")
        await conn.execute("SELECT 1 FROM watermark FOR UPDATE")
        keep_copied = True
        if stamp is not None:
            old = await read_stamp(conn)
            keep_copied = bool(old and old.is_same_owner(stamp) and old.bucket == stamp.bucket)
        had_blocks = bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM blocks)"))
        tables = ["inodes", "dentries", "slices", "chunk_refs"]
        blocks_table = "load_blocks" if had_blocks else "blocks"
        if had_blocks:
            await conn.execute(
                "CREATE TEMP TABLE load_blocks (slice_id bigint, idx integer, size integer,"
                " checksum text) ON COMMIT DROP"
            )
        else:
            tables.append("blocks")
        await conn.execute(f"TRUNCATE {', '.join(tables)}")
        # Bulk loading into tables without indexes, then building each index in one sorted
        # pass, is several times faster than maintaining them row by row.
        rebuild = await _drop_indexes(conn, tables)
        await _stream(_Sink(conn, blocks_table), blocks_table, rows, stats, on_progress)
        if had_blocks:
            rebuild += await _merge_blocks(conn, stats, keep_copied=keep_copied)
        else:
            stats.blocks_pending = stats.blocks
        try:
            for sql in rebuild:
                await conn.execute(sql)
        except asyncpg.UniqueViolationError as exc:
            raise SnapshotError(f"snapshot lists a row twice: {exc.detail or exc}") from exc
        orphans = await conn.fetchval(
            "SELECT count(*) FROM chunk_refs r WHERE NOT EXISTS"
            " (SELECT 1 FROM slices s WHERE s.id = r.slice_id)"
        )
        if orphans:
            raise SnapshotError(f"snapshot has {orphans} refs to slices it does not list")
        await conn.execute(
            "UPDATE watermark SET applied_version = $1, applied_ts = $2, snapshot_version = $1,"
            " updated_at = now()",
            version,
            ts,
        )
        if stamp is not None:
            await write_stamp(conn, stamp)
    stats.elapsed_s = time.monotonic() - stats._started
    if on_progress is not None:
        on_progress(stats)
    return stats


async def _drop_indexes(conn: asyncpg.Connection, tables: list[str]) -> list[str]:
    """Drop every index (and key constraint) of `tables`; return the statements that rebuild
    them. Read from the catalog, so the migrations stay the one place indexes are declared."""
    rebuild: list[str] = []
    constraints = await conn.fetch(
        "SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def"
        " FROM pg_constraint WHERE conrelid = any($1::regclass[]) AND contype IN ('p', 'u')",
        tables,
    )
    indexes = await conn.fetch(
        "SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS def"
        " FROM pg_index i WHERE indrelid = any($1::regclass[]) AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        tables,
    )
    for row in indexes:
        await conn.execute(f"DROP INDEX {row['name']}")
        rebuild.append(row["def"])
    for row in constraints:
        await conn.execute(f'ALTER TABLE {row["tbl"]} DROP CONSTRAINT "{row["conname"]}"')
        add = f'ALTER TABLE {row["tbl"]} ADD CONSTRAINT "{row["conname"]}" {row["def"]}'
        rebuild.insert(0, add)
    return rebuild


_INODE_FIELDS = itemgetter(*INODE_COLUMNS)
_SLICE_FIELDS = itemgetter("id", "size", "checksums")


async def _stream(
    sink: _Sink,
    blocks_table: str,
    rows: SnapshotRows,
    stats: LoadStats,
    on_progress: Callable[[LoadStats], None] | None,
) -> None:
    """COPY the rows into the tables. Values are not converted here: COPY rejects a wrong type
    (DataError, reported as SnapshotError), which keeps this loop at a few µs per inode."""
    header: dict[str, Any] | None = None
    dirs: set[int] = set()
    slices, blocks = sink.rows("slices"), sink.rows(blocks_table)
    inodes, dentries, refs = sink.rows("inodes"), sink.rows("dentries"), sink.rows("chunk_refs")
    try:
        async for row in _aiter(rows):
            kind = row["row"]
            if kind == "inode" and header is not None:
                inode = _INODE_FIELDS(row)
                ino, node_kind = inode[0], inode[1]
                if node_kind not in KINDS:
                    raise ValueError(f"inode {ino} has unknown kind {node_kind!r}")
                inodes.append(inode)
                parent = row["parent"]
                if parent in dirs:
                    dentries.append((parent, row["name"], ino))
                elif stats.inodes or ino != ROOT_INO:
                    raise ValueError(f"inode {ino} comes before its directory {parent}")
                if node_kind == "dir":
                    dirs.add(ino)
                for index, chunk in row["chunks"]:
                    refs.extend((ino, index, order, *ref) for order, ref in enumerate(chunk))
                stats.inodes += 1
                if len(inodes) >= FLUSH_ROWS or len(refs) >= FLUSH_ROWS:
                    await _flush(sink, blocks_table, stats, on_progress)
            elif kind == "slice" and header is not None:
                sid, size, checksums = item = _SLICE_FIELDS(row)
                slices.append(item)
                sizes = block_sizes(size)
                n = len(sizes)
                if n != len(checksums):
                    raise ValueError(f"slice {sid}: {len(checksums)} checksums for {n} blocks")
                blocks.extend(zip([sid] * n, range(n), sizes, checksums, strict=True))
                stats.slices += 1
                if len(blocks) >= FLUSH_ROWS:
                    await _flush(sink, blocks_table, stats, on_progress)
            elif kind == "header" and header is None:
                if row["format"] != SNAPSHOT_FORMAT:
                    raise ValueError(f"unknown snapshot format {row['format']!r}")
                header = row
                stats.inodes_total = int(row["inodes"])
                stats.slices_total = int(row["slices"])
            else:
                where = "" if header else " before the header"
                raise ValueError(f"unexpected {kind!r} row{where}")
        await _flush(sink, blocks_table, stats, None)
    except (KeyError, TypeError, ValueError, AttributeError, asyncpg.DataError) as exc:
        raise SnapshotError(f"malformed snapshot: {exc!r}") from exc
    if header is None or (stats.inodes, stats.slices) != (stats.inodes_total, stats.slices_total):
        raise SnapshotError(
            f"snapshot is truncated: {stats.inodes} inodes and {stats.slices} slices,"
            f" header says {stats.inodes_total} and {stats.slices_total}"
        )


async def _flush(
    sink: _Sink,
    blocks_table: str,
    stats: LoadStats,
    on_progress: Callable[[LoadStats], None] | None,
) -> None:
    await sink.flush()
    stats.refs = sink.written["chunk_refs"]
    stats.blocks = sink.written[blocks_table]
    stats.elapsed_s = time.monotonic() - stats._started
    if on_progress is not None:
        on_progress(stats)


async def _merge_blocks(
    conn: asyncpg.Connection, stats: LoadStats, *, keep_copied: bool
) -> list[str]:
    """Rebuild `blocks` from `load_blocks`, keeping the rows of blocks the mirror bucket already
    holds ('copied', same key and checksum) as they are, if `keep_copied` (they are true of the
    bucket in use); queue the old blocks the snapshot no longer has for GC. Returns the
    statements that rebuild the indexes of `blocks`."""
    await conn.execute("ANALYZE load_blocks")
    stale = await conn.execute(
        "INSERT INTO gc_queue (slice_id, idx, size, freed_version)"
        " SELECT b.slice_id, b.idx, b.size, $1 FROM blocks b WHERE NOT EXISTS"
        " (SELECT 1 FROM load_blocks n WHERE n.slice_id = b.slice_id AND n.idx = b.idx)"
        " ON CONFLICT (slice_id, idx) DO NOTHING",
        stats.version,
    )
    stats.blocks_to_gc = affected_rows(stale)
    await conn.execute(
        "CREATE TEMP TABLE kept_blocks ON COMMIT DROP AS"
        f" SELECT * FROM blocks WHERE state = 'copied' AND {'true' if keep_copied else 'false'}"
    )
    await conn.execute("TRUNCATE blocks")
    rebuild = await _drop_indexes(conn, ["blocks"])
    inserted = await conn.execute(
        "INSERT INTO blocks (slice_id, idx, size, checksum, state, attempts, priority,"
        " next_attempt_at, enqueued_at, copied_at, last_error)"
        " SELECT n.slice_id, n.idx, n.size, n.checksum,"
        " coalesce(k.state, 'pending'), coalesce(k.attempts, 0), coalesce(k.priority, 0),"
        " coalesce(k.next_attempt_at, now()), coalesce(k.enqueued_at, now()), k.copied_at,"
        " k.last_error FROM load_blocks n LEFT JOIN kept_blocks k ON k.slice_id = n.slice_id"
        " AND k.idx = n.idx AND k.size = n.size AND k.checksum = n.checksum"
    )
    stats.blocks = affected_rows(inserted)
    stats.blocks_kept_copied = int(
        await conn.fetchval("SELECT count(*) FROM blocks WHERE state = 'copied'")
    )
    stats.blocks_pending = stats.blocks - stats.blocks_kept_copied
    return rebuild


async def load_from_source(
    db: Database,
    source: SourceClient,
    on_progress: Callable[[LoadStats], None] | None = None,
    *,
    stamp: Stamp | None = None,
) -> tuple[int, int]:
    """Stream a snapshot from the source into the replica; returns its (version, ts).
    `stamp`: as for `load_replica`."""
    records = aread_snapshot_records(source.snapshot())
    header = await anext(records)

    async def rows() -> AsyncIterator[dict[str, Any]]:
        async for rec in records:
            yield rec.effect

    await load_replica(db, header.version, header.ts, rows(), on_progress=on_progress, stamp=stamp)
    return header.version, header.ts
