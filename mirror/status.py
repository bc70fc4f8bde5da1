"""The region status: one JSON document, the same names in the API, the CLI and metrics.

This module is its one owner: each part comes from the one place that knows it, once per
request: the follower's view of the stream, the block table's counts (one statement for the
counts, one for the reasons), this process's replicator rates, and the GC queue. Stable field
names (operators script against them; see README "Mirror status"):

    mirror, volume, state (starting|syncing|following|resyncing|disconnected|degraded),
    applied_version, applied_ts, source_version, lag_versions, lag_seconds, records_per_s,
    blocks_pending, bytes_pending, blocks_failed, blocks_in_flight, blocks_retrying,
    oldest_pending_s, paused, failed_reasons, retrying_reasons, replicator_state,
    copy_blocks_per_s, copy_bytes_per_s, window_s, resyncs, last_error, last_error_at,
    degraded_reason (null, or why the replica cannot be read: state `degraded`),
    gc_held_back (null, or {acked, version, since_ms, age_s}: this mirror is what keeps the
    source from deleting garbage blocks), gc (the mirror bucket's own garbage), now_ms,
    source_clock_skew_ms (null, or a lower bound of how far the source's clock runs ahead of
    this host's, from record timestamps against receipt: mirror/follow/skew.py),
    and the region's read counters, summed over every client process (mirror/region_counters.py):
    fallback_reads, fallback_bytes, mirror_hits, mirror_bytes, source_gets_saved,
    corrupt_repaired, stale_waits, stale_served, stale_errors, stale_source, cache_hits,
    cache_hit_bytes, cache_misses, cache_miss_bytes, cache_corrupt (the local block caches of
    clients and mounts: fallback/cached_blocks.py)

Counts of blocks come from the block table itself at the time of asking, never from counters
kept in memory (they would be wrong after a restart). While the replica's PostgreSQL does not
answer, the document still comes (from what the daemon knows in memory), with state
`degraded`, the reason in `degraded_reason` and the table's counts null; the API answers it
with HTTP 503.
"""

from __future__ import annotations

import time
from typing import Any

from mirror.errors import MirrorDbError
from mirror.follow import FollowerState, FollowerStatus
from mirror.gc import MirrorGc
from mirror.region_counters import COUNTER_NAMES, RegionCounters
from mirror.replicate import CopyQueue, Replicator
from volume.config import MirrorRegion

DEGRADED = str(FollowerState.DEGRADED)
STATUS_FIELDS = (
    "mirror",
    "volume",
    "state",
    "applied_version",
    "applied_ts",
    "source_version",
    "lag_versions",
    "lag_seconds",
    "records_per_s",
    "blocks_pending",
    "bytes_pending",
    "blocks_failed",
    "window_s",
    "resyncs",
    "last_error",
    "last_error_at",
    "degraded_reason",
    "gc_held_back",
    "now_ms",
    "source_clock_skew_ms",
    *COUNTER_NAMES,
)


def follower_part(region: MirrorRegion, follower: FollowerStatus) -> dict[str, Any]:
    """Where the replica stands against the source, from the follower's own state."""
    now_ms = time.time_ns() // 1_000_000
    source_now_ms = now_ms + max(0, follower.source_clock_skew_ms or 0)
    source_version = max(follower.source_version, follower.applied_version)
    return {
        "mirror": region.name,
        "volume": region.volume,
        "state": str(follower.state),
        "applied_version": follower.applied_version,
        "applied_ts": follower.applied_ts,
        "source_version": source_version,
        "lag_versions": source_version - follower.applied_version,
        # The staleness a reader's consistency gate measures: a source clock proven ahead
        # counts, one behind never does (fallback/consistency.py).
        "lag_seconds": round(max(0, source_now_ms - follower.applied_ts) / 1000, 3)
        if follower.applied_ts
        else None,
        "records_per_s": round(follower.records_per_s, 1),
        "window_s": region.window_s,
        "resyncs": follower.resyncs,
        "last_error": follower.last_error,
        "last_error_at": follower.last_error_at,
        "degraded_reason": follower.last_error if follower.state == DEGRADED else None,
        "gc_held_back": follower.source_gc_hold,
        "now_ms": now_ms,
        "source_clock_skew_ms": follower.source_clock_skew_ms,
    }


async def region_status(
    region: MirrorRegion,
    follower: FollowerStatus,
    queue: CopyQueue,
    replicator: Replicator,
    gc: MirrorGc,
    counters: RegionCounters,
) -> dict[str, Any]:
    """The whole document; state `degraded` (see `is_degraded`) if the replica cannot be read."""
    try:
        stats = await queue.stats()
        gc_part = await gc.status()
        totals = await counters.totals()
    except MirrorDbError as exc:
        return degraded(region, follower, replicator, f"replica database unavailable: {exc}")
    return {
        **follower_part(region, follower),
        **stats.as_dict(),
        **replicator.process_status(),
        "gc": gc_part,
        **{name: totals[name] for name in COUNTER_NAMES},
    }


def degraded(
    region: MirrorRegion, follower: FollowerStatus, replicator: Replicator, reason: str
) -> dict[str, Any]:
    """The document when the replica cannot be read: what memory knows, the table's counts
    null, state `degraded` and why."""
    counts = dict.fromkeys(
        (
            "blocks_pending",
            "bytes_pending",
            "blocks_failed",
            "blocks_in_flight",
            "blocks_retrying",
            "oldest_pending_s",
            "paused",
            "failed_reasons",
            "retrying_reasons",
            *COUNTER_NAMES,
        )
    )
    return {
        **follower_part(region, follower),
        **counts,
        **replicator.process_status(),
        "gc": None,
        "state": DEGRADED,
        "degraded_reason": reason,
    }


def is_degraded(document: dict[str, Any]) -> bool:
    """Answer this document with 503: the region cannot serve from its replica now."""
    return document.get("state") == DEGRADED
