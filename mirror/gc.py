"""GC of the mirror bucket: delete this region's copies of freed blocks once they are due.

The applier moves the blocks of every slice a record frees from `blocks` into `gc_queue`, with
`freed_version` (the freeing record, or the snapshot a resync loaded) and `freed_at` (when the
replica applied it), in the same transaction as the watermark. A row is due once the replica
has applied `freed_version` and `grace_s` has passed since `freed_at`: a client that resolved a
path before the freeing record may still be reading the block. Due rows are deleted from the
bucket (bounded concurrency), then removed from the queue; a failed delete keeps its row for the
next pass. Deleting is idempotent, so two GC processes on one replica, or a crash between the
object delete and the row delete, only repeat work.

Times are PostgreSQL's (`now()` against `freed_at`), one clock for both ends of the grace.

Every `orphan_interval_s` the service also sweeps copies no row names at all (mirror/orphans.py:
a copy that landed after its slice was freed and its queue row was done), older than the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import structlog

from mirror.db import Database
from mirror.errors import MirrorError
from mirror.orphans import OrphanSweep
from objstore.base import ObjectStore
from objstore.errors import StoreError
from objstore.keys import block_key

log = structlog.get_logger(__name__)

DEFAULT_INTERVAL_S = 5.0
DEFAULT_BATCH_BLOCKS = 1_000
DEFAULT_DELETE_CONCURRENCY = 16
DEFAULT_ORPHAN_INTERVAL_S = 3600.0  # a whole listing of the bucket: hourly is plenty

_DUE = (
    "g.freed_version <= (SELECT applied_version FROM watermark)"
    " AND g.freed_at <= now() - make_interval(secs => $1::float8)"
)
# `live`: the block (or its slice) is in the replica again. Impossible, since a slice id is
# committed once; such a row is dropped and its object kept, should it ever happen.
_SQL_DUE_ROWS = (
    "SELECT g.slice_id, g.idx, g.size, g.freed_version,"
    " EXISTS (SELECT 1 FROM blocks b WHERE b.slice_id = g.slice_id AND b.idx = g.idx)"
    " OR EXISTS (SELECT 1 FROM slices s WHERE s.id = g.slice_id) AS live"
    f" FROM gc_queue g WHERE {_DUE}"
    " ORDER BY g.freed_version, g.slice_id, g.idx LIMIT $2"
)
_SQL_DROP_ROWS = (
    "DELETE FROM gc_queue g"
    " USING unnest($1::bigint[], $2::integer[], $3::bigint[]) AS x(slice_id, idx, freed_version)"
    " WHERE g.slice_id = x.slice_id AND g.idx = x.idx AND g.freed_version = x.freed_version"
)
_SQL_STATUS = (
    "SELECT count(*) AS blocks, coalesce(sum(g.size), 0) AS bytes,"
    f" count(*) FILTER (WHERE {_DUE}) AS due,"
    " min(g.freed_version) AS oldest_version,"
    " extract(epoch FROM now() - min(g.freed_at))::float8 AS oldest_age_s"
    " FROM gc_queue g"
)


@dataclass(frozen=True, slots=True)
class _Row:
    slice_id: int
    idx: int
    size: int
    freed_version: int

    @property
    def key(self) -> str:
        return block_key(self.slice_id, self.idx, self.size)


class MirrorGc:
    """The mirror bucket's GC service over one replica database."""

    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        grace_s: float,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        batch_blocks: int = DEFAULT_BATCH_BLOCKS,
        delete_concurrency: int = DEFAULT_DELETE_CONCURRENCY,
        orphan_interval_s: float = DEFAULT_ORPHAN_INTERVAL_S,
    ) -> None:
        self.db = db
        self.store = store
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.batch_blocks = batch_blocks
        self.delete_concurrency = delete_concurrency
        self.passes = 0
        self.deleted_total = 0
        self.deleted_bytes_total = 0
        self.delete_errors_total = 0
        self.skipped_live_total = 0
        self.last_error: str | None = None
        self.orphans = OrphanSweep(db, store, grace_s, delete_concurrency=delete_concurrency)
        self.orphan_interval_s = orphan_interval_s

    async def run(self, stop: asyncio.Event) -> None:
        """A pass every `interval_s`, an orphan sweep every `orphan_interval_s` (the first one
        an interval after the start), until `stop`; failures are retried next pass (and shown
        in `status`), never fatal."""
        orphans_due = time.monotonic() + self.orphan_interval_s
        while not stop.is_set():
            try:
                await self.run_pass(stop)
                if time.monotonic() >= orphans_due and not stop.is_set():
                    orphans_due = time.monotonic() + self.orphan_interval_s
                    await self.orphans.run_pass()
            except (MirrorError, StoreError) as exc:
                self.last_error = str(exc)
                log.warning("mirror.gc_failed", error=str(exc))
            except Exception as exc:  # a bug: GC must never take the daemon down
                self.last_error = repr(exc)
                log.exception("mirror.gc_bug", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def run_pass(self, stop: asyncio.Event | None = None) -> int:
        """Delete every due block, a batch at a time; returns how many were deleted.

        Stops early at `stop`, or after a batch with a failed delete (its rows stay queued).
        Raises MirrorDbError if the replica cannot be reached.
        """
        deleted = 0
        try:
            while stop is None or not stop.is_set():
                rows, live = await self._due_rows()
                if live:
                    await self._drop_live(live)
                if not rows:
                    if len(live) < self.batch_blocks:
                        break
                    continue
                gone = await self._delete(rows)
                if gone:
                    await self._drop(gone)
                deleted += len(gone)
                if len(gone) < len(rows) or len(rows) + len(live) < self.batch_blocks:
                    break
        finally:
            self.passes += 1
        return deleted

    async def _due_rows(self) -> tuple[list[_Row], list[_Row]]:
        async with self.db.acquire() as conn:
            records = await conn.fetch(_SQL_DUE_ROWS, self.grace_s, self.batch_blocks)
        rows: list[_Row] = []
        live: list[_Row] = []
        for r in records:
            row = _Row(int(r["slice_id"]), int(r["idx"]), int(r["size"]), int(r["freed_version"]))
            (live if r["live"] else rows).append(row)
        return rows, live

    async def _drop_live(self, live: list[_Row]) -> None:
        for row in live:
            log.error(
                "mirror.gc_live_block_skipped",
                slice_id=row.slice_id,
                idx=row.idx,
                freed_version=row.freed_version,
            )
        self.skipped_live_total += len(live)
        await self._drop(live)

    async def _drop(self, rows: list[_Row]) -> None:
        async with self.db.acquire() as conn:
            await conn.execute(
                _SQL_DROP_ROWS,
                [r.slice_id for r in rows],
                [r.idx for r in rows],
                [r.freed_version for r in rows],
            )

    async def _delete(self, rows: list[_Row]) -> list[_Row]:
        """Delete the rows' objects with bounded concurrency; returns the rows whose object is
        gone (a missing object counts: deleting is idempotent)."""
        gone: list[_Row] = []
        work = iter(rows)

        async def worker() -> None:
            for row in work:
                try:
                    await self.store.delete(row.key)
                except StoreError as exc:
                    self.delete_errors_total += 1
                    self.last_error = str(exc)
                    log.warning("mirror.gc_delete_failed", key=row.key, error=str(exc))
                    continue
                gone.append(row)
                self.deleted_total += 1
                self.deleted_bytes_total += row.size

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self.delete_concurrency, len(rows))):
                tg.create_task(worker())
        return gone

    async def status(self) -> dict[str, Any]:
        """Garbage waiting in this region, counted from gc_queue itself (right after a restart
        too), plus this process's counters. Raises MirrorDbError if the replica is unreachable."""
        async with self.db.acquire() as conn:
            r = await conn.fetchrow(_SQL_STATUS, self.grace_s)
        assert r is not None
        age = r["oldest_age_s"]
        return {
            "garbage_blocks": int(r["blocks"]),
            "garbage_bytes": int(r["bytes"]),
            "garbage_due_blocks": int(r["due"]),
            "oldest_garbage_version": r["oldest_version"],
            "oldest_garbage_age_s": round(float(age), 3) if age is not None else None,
            "grace_s": self.grace_s,
            "passes": self.passes,
            "deleted_total": self.deleted_total,
            "deleted_bytes_total": self.deleted_bytes_total,
            "delete_errors_total": self.delete_errors_total,
            "skipped_live_total": self.skipped_live_total,
            "last_error": self.last_error,
            "orphans": self.orphans.status(),
        }
