"""The region status: one JSON document, the same names in the API, the CLI and metrics.

This module is its one owner: each part comes from the one place that knows it, once per
request: the follower's view of the stream, the block table's counts (one statement for the
counts, one for the reasons), this process's replicator rates, and the GC queue. Stable field
names (operators script against them; see README "Mirror status"):

    mirror, volume, state (starting|syncing|following|resyncing|disconnected),
    applied_version, applied_ts, source_version, lag_versions, lag_seconds, records_per_s,
    blocks_pending, bytes_pending, blocks_failed, blocks_in_flight, blocks_retrying,
    oldest_pending_s, paused, failed_reasons, retrying_reasons, replicator_state,
    copy_blocks_per_s, copy_bytes_per_s, window_s, resyncs, last_error, last_error_at,
    gc_held_back (null, or {acked, version, since_ms, age_s}: this mirror is what keeps the
    source from deleting garbage blocks), gc (the mirror bucket's own garbage), now_ms

Counts of blocks come from the block table itself at the time of asking, never from counters
kept in memory (they would be wrong after a restart).
"""

from __future__ import annotations

import time
from typing import Any

from mirror.follow import FollowerStatus
from mirror.gc import MirrorGc
from mirror.replicate import CopyQueue, Replicator
from volume.config import MirrorRegion

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
    "gc_held_back",
    "now_ms",
)


def follower_part(region: MirrorRegion, follower: FollowerStatus) -> dict[str, Any]:
    """Where the replica stands against the source, from the follower's own state."""
    now_ms = time.time_ns() // 1_000_000
    source_version = max(follower.source_version, follower.applied_version)
    return {
        "mirror": region.name,
        "volume": region.volume,
        "state": str(follower.state),
        "applied_version": follower.applied_version,
        "applied_ts": follower.applied_ts,
        "source_version": source_version,
        "lag_versions": source_version - follower.applied_version,
        "lag_seconds": round(max(0, now_ms - follower.applied_ts) / 1000, 3)
        if follower.applied_ts
        else None,
        "records_per_s": round(follower.records_per_s, 1),
        "window_s": region.window_s,
        "resyncs": follower.resyncs,
        "last_error": follower.last_error,
        "last_error_at": follower.last_error_at,
        "gc_held_back": follower.source_gc_hold,
        "now_ms": now_ms,
    }


async def region_status(
    region: MirrorRegion,
    follower: FollowerStatus,
    queue: CopyQueue,
    replicator: Replicator,
    gc: MirrorGc,
) -> dict[str, Any]:
    """The whole document. Raises MirrorDbError if the replica cannot be read."""
    stats = await queue.stats()
    return {
        **follower_part(region, follower),
        **stats.as_dict(),
        **replicator.process_status(),
        "gc": await gc.status(),
    }
