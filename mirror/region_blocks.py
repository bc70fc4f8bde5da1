"""What a client reading through a mirror region tells the region about blocks: the
`RegionBlocks` port of fallback/region.py, over the region's replica database.

The block table is the copy queue (mirror/replicate/queue.py), so a client speaks the
replicator's language: a block it fetched from the source and wrote into the mirror bucket is
marked copied exactly as a copy worker completes one (the replicator then skips it); a block it
had to read from the source is raised to PRIORITY_FALLBACK; a corrupt mirror copy goes back to
pending at that priority with the reason, as `verify --repair` does with one it cannot fix, so
the replicator copies it again. Claims (one process of the region fetches a block from the
source while the others wait) and the region's read counters are mirror/claims.py and
mirror/region_counters.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

from mirror.claims import RegionClaims
from mirror.db import Database
from mirror.region_counters import RegionCounters
from mirror.replicate import PRIORITY_FALLBACK, BlockId, CopyQueue
from mirror.replicate.queue import NOTIFY_CHANNEL

MIRROR_CORRUPT = "mirror-corrupt"  # the reason word in last_error (queue.py's vocabulary)

# CopyQueue.complete's statement without its checksum guard: the port names a block by
# (slice_id, idx), whose bytes never change (keys are never reused), and the caller verified
# them against the checksum of the same replica snapshot. Clears a worker's lease too: the
# worker's own complete() is then a no-op and its fail() touches only pending rows.
_SQL_COPIED = (
    "UPDATE blocks SET state = 'copied', copied_at = now(), claimed_by = NULL,"
    " lease_until = NULL, last_error = NULL"
    " WHERE slice_id = $1 AND idx = $2 AND state <> 'copied'"
)
_SQL_CORRUPT = (
    "UPDATE blocks SET state = 'pending', priority = greatest(priority, $3),"
    " next_attempt_at = now(), last_error = $4"
    " WHERE slice_id = $1 AND idx = $2 AND state = 'copied'"
)


class RegionBlocks:
    """The region's block table as a reading client sees it (fallback's RegionBlocks port)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.queue = CopyQueue(db)
        self.claims = RegionClaims(db)
        self.counters = RegionCounters(db)

    @contextlib.asynccontextmanager
    async def claim(self, slice_id: int, index: int) -> AsyncIterator[None]:
        # Never raises for the database or a deadline (mirror/claims.py): at worst the caller
        # fetches without the claim, one more source GET.
        async with self.claims.claim(slice_id, index):
            yield

    async def copied(self, slice_id: int, index: int) -> None:
        async with self.db.acquire() as conn:
            await conn.execute(_SQL_COPIED, slice_id, index)

    async def fell_back(self, blocks: list[tuple[int, int]]) -> None:
        await self.queue.prioritise_blocks((BlockId(s, i) for s, i in blocks), PRIORITY_FALLBACK)

    async def corrupt(self, slice_id: int, index: int, reason: str) -> None:
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute(
                _SQL_CORRUPT,
                slice_id,
                index,
                PRIORITY_FALLBACK,
                f"{MIRROR_CORRUPT}: {reason} (found by a reader)",
            )
            await conn.execute("SELECT pg_notify($1, 'corrupt')", NOTIFY_CHANNEL)

    async def add_counters(self, counts: Mapping[str, int]) -> None:
        await self.counters.add(counts)

    async def aclose(self) -> None:
        await self.claims.aclose()
