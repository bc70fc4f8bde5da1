"""The region's read counters: summed across every client process of the region, in its
PostgreSQL, so `mirror status` and the daemon's /metrics show the region, not one process.

Clients count in memory and flush now and then (`RegionCounters.add`, one statement); the table
keeps one row per name (migration 0004), only ever added to. The names are the status
document's (mirror/status.py) and the metric families' (`mirrorfs_region_<name>_total`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from mirror.db import Database

# What a mirror region's readers count (fallback/ counts them; these are the names they flush).
COUNTER_NAMES = (
    "fallback_reads",  # blocks read from the source bucket
    "fallback_bytes",
    "mirror_hits",  # blocks read from the mirror bucket
    "mirror_bytes",
    "source_gets_saved",  # fallbacks served by another reader's source GET (claim, single-flight)
    "corrupt_repaired",  # mirror blocks that failed their checksum, read from the source instead
    "stale_waits",  # reads that waited for the replica to come within their window
    "stale_served",  # policy `serve`: the replica's answer, flagged stale
    "stale_errors",  # policy `error`: StaleMirrorError raised
    "stale_source",  # policy `source`: answered by the source
    "cache_hits",  # blocks served by a client's local block cache (no bucket asked)
    "cache_hit_bytes",
    "cache_misses",  # blocks the local cache did not hold: asked of the region
    "cache_miss_bytes",
    "cache_corrupt",  # local cache files that failed their check, fetched again
)
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

# Sorted names: two flushes touching the same rows lock them in the same order (no deadlock).
_SQL_ADD = (
    "INSERT INTO region_counters AS c (name, value)"
    " SELECT name, value FROM unnest($1::text[], $2::bigint[]) AS u(name, value) ORDER BY name"
    " ON CONFLICT (name) DO UPDATE SET value = c.value + excluded.value, updated_at = now()"
)


class RegionCounters:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, counts: Mapping[str, int]) -> None:
        """Add `counts` to the region's sums in one statement (zeros skipped). Raises ValueError
        for a name that is not lower_snake_case or a negative count (counters only grow), and
        MirrorDbError if the database fails (nothing added: the caller may keep and retry)."""
        bad = [n for n, v in counts.items() if not _NAME.match(n) or v < 0]
        if bad:
            raise ValueError(f"region counters take lower_snake_case names and counts >= 0: {bad}")
        items = sorted((n, int(v)) for n, v in counts.items() if v)
        if not items:
            return
        async with self.db.acquire() as conn:
            await conn.execute(_SQL_ADD, [n for n, _ in items], [v for _, v in items])

    async def totals(self) -> dict[str, int]:
        """Every counter of the region: the known names (0 until counted) and any other."""
        async with self.db.acquire() as conn:
            rows = await conn.fetch("SELECT name, value FROM region_counters ORDER BY name")
        found = {str(r["name"]): int(r["value"]) for r in rows}
        return {**dict.fromkeys(COUNTER_NAMES, 0), **found}
