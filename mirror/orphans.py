"""Orphan copies in the mirror bucket: objects that no live slice of the replica needs.

The GC queue (mirror/gc.py) removes the copies of slices the replica freed. Some copies end up
with no row at all: a copy in flight when its slice was freed lands after the GC deleted that
key (the replicator's lease and retries outlast the freeing), a repair or a fallback write
races a free, or the bucket held blocks before this replica was loaded. This sweep lists the
bucket and deletes a block key only when all of these hold:

- no row of `blocks` names it (not a block of a live slice: those are the replicator's),
- no row of `gc_queue` names it (garbage the queue deletes behind its own barrier),
- its slice id is not in `slices`,
- the object is older than `grace_s`: a copy the replicator, a fallback read or a mirror-region
  client may just have written for a slice the replica has not applied yet is younger.

Ages are the bucket's `mtime` against this host's clock (S3's LastModified has a one-second
resolution), against a default grace of an hour. A slice committed more than a grace before
the replica applies it (a mirror offline for hours) can lose a copy made for it early; the
block stays pending in the queue and is copied again from the source, never lost. Deleting is
idempotent, so concurrent sweeps or a crash mid-pass only repeat work.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from mirror.db import Database
from objstore.base import ObjectMeta, ObjectStore
from objstore.errors import StoreError
from objstore.keys import BLOCK_PREFIX, parse_block_key

log = structlog.get_logger(__name__)

DEFAULT_DELETE_CONCURRENCY = 16
PAGE_KEYS = 1_000  # listed keys classified per query

_SQL_CLASSIFY = (
    "SELECT x.i,"
    " EXISTS (SELECT 1 FROM blocks b WHERE b.slice_id = x.slice_id AND b.idx = x.idx) AS live,"
    " EXISTS (SELECT 1 FROM gc_queue g WHERE g.slice_id = x.slice_id AND g.idx = x.idx)"
    " AS queued,"
    " EXISTS (SELECT 1 FROM slices s WHERE s.id = x.slice_id) AS slice_live"
    " FROM unnest($1::integer[], $2::bigint[], $3::integer[]) AS x(i, slice_id, idx)"
)


@dataclass
class OrphanListing:
    """What one pass's listing of the mirror bucket found."""

    blocks: int = 0
    bytes: int = 0
    live_blocks: int = 0  # named by `blocks` (or their slice is live)
    queued_blocks: int = 0  # in gc_queue: the queue deletes them
    orphan_blocks: int = 0  # named by nothing, old enough: deleted by this pass
    orphan_bytes: int = 0
    young_blocks: int = 0  # named by nothing, younger than the grace: kept for now
    young_bytes: int = 0
    foreign_keys: int = 0  # under blocks/ but not a block key (never touched)


class OrphanSweep:
    """Delete copies no row of the replica names once older than `grace_s`; see the module
    docstring. Event-loop bound; run by MirrorGc."""

    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        grace_s: float,
        *,
        delete_concurrency: int = DEFAULT_DELETE_CONCURRENCY,
    ) -> None:
        self.db = db
        self.store = store
        self.grace_s = grace_s
        self.delete_concurrency = delete_concurrency
        self.last: OrphanListing | None = None
        self.last_pass_at: float | None = None
        self.passes = 0
        self.swept_total = 0
        self.swept_bytes_total = 0
        self.delete_errors_total = 0
        self.last_error: str | None = None

    async def run_pass(self) -> OrphanListing:
        """List the bucket once and delete its orphans. Raises StoreError if the listing fails,
        MirrorDbError if the replica cannot be reached (deletes made so far stand)."""
        listing = OrphanListing()
        page: list[ObjectMeta] = []
        async for meta in self.store.list(BLOCK_PREFIX):
            page.append(meta)
            if len(page) >= PAGE_KEYS:
                await self._sweep_page(page, listing)
                page = []
        if page:
            await self._sweep_page(page, listing)
        self.last = listing
        self.last_pass_at = time.time()
        self.passes += 1
        return listing

    async def _sweep_page(self, page: list[ObjectMeta], listing: OrphanListing) -> None:
        parsed: list[tuple[ObjectMeta, int, int]] = []
        for meta in page:
            try:
                slice_id, idx, _ = parse_block_key(meta.key)
            except ValueError:
                listing.foreign_keys += 1
                continue
            parsed.append((meta, slice_id, idx))
        if not parsed:
            return
        async with self.db.acquire() as conn:
            rows = await conn.fetch(
                _SQL_CLASSIFY,
                list(range(len(parsed))),
                [p[1] for p in parsed],
                [p[2] for p in parsed],
            )
        young_after = time.time() - self.grace_s
        doomed: list[ObjectMeta] = []
        for row in rows:
            meta = parsed[int(row["i"])][0]
            listing.blocks += 1
            listing.bytes += meta.size
            if row["live"] or row["slice_live"]:
                listing.live_blocks += 1
            elif row["queued"]:
                listing.queued_blocks += 1
            elif meta.mtime > young_after:
                listing.young_blocks += 1
                listing.young_bytes += meta.size
            else:
                listing.orphan_blocks += 1
                listing.orphan_bytes += meta.size
                doomed.append(meta)
        if doomed:
            await self._delete(doomed)

    async def _delete(self, doomed: list[ObjectMeta]) -> None:
        work = iter(doomed)

        async def worker() -> None:
            for meta in work:
                try:
                    await self.store.delete(meta.key)
                except StoreError as exc:
                    self.delete_errors_total += 1
                    self.last_error = str(exc)
                    log.warning("mirror.orphan_delete_failed", key=meta.key, error=str(exc))
                    continue
                self.swept_total += 1
                self.swept_bytes_total += meta.size
                log.info("mirror.orphan_swept", key=meta.key, mtime=meta.mtime)

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self.delete_concurrency, len(doomed))):
                tg.create_task(worker())

    def status(self) -> dict[str, Any]:
        return {
            "listing": asdict(self.last) if self.last else None,
            "last_pass_at": self.last_pass_at,
            "passes": self.passes,
            "swept_total": self.swept_total,
            "swept_bytes_total": self.swept_bytes_total,
            "delete_errors_total": self.delete_errors_total,
            "last_error": self.last_error,
        }
