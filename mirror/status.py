"""The region status: one JSON document, the same names in the API, the CLI and metrics.

Stable field names (operators script against them; see README "Mirror status"):

    mirror, volume, state (starting|syncing|following|resyncing|disconnected|stopped),
    applied_version, applied_ts, source_version, lag_versions, lag_seconds, records_per_s,
    blocks_pending, bytes_pending, blocks_failed, window_s, resyncs, last_error, last_error_at,
    gc_held_back (null, or {acked, version, since_ms, age_s}: this mirror is what keeps the
    source from deleting garbage blocks), gc (the mirror bucket's own garbage), now_ms

Counts of blocks come from the block table itself at the time of asking, never from counters
kept in memory (they would be wrong after a restart).
"""

from __future__ import annotations

import time
from typing import Any

from mirror.follower import FollowerStatus
from mirror.replica import Replica

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


async def region_status(
    name: str, volume: str, window_s: float, follower: FollowerStatus, replica: Replica
) -> dict[str, Any]:
    now_ms = time.time_ns() // 1_000_000
    pending, bytes_pending, failed = await replica.backlog()
    source_version = max(follower.source_version, follower.applied_version)
    return {
        "mirror": name,
        "volume": volume,
        "state": follower.state,
        "applied_version": follower.applied_version,
        "applied_ts": follower.applied_ts,
        "source_version": source_version,
        "lag_versions": source_version - follower.applied_version,
        "lag_seconds": round(max(0, now_ms - follower.applied_ts) / 1000, 3)
        if follower.applied_ts
        else None,
        "records_per_s": round(follower.records_per_s, 1),
        "blocks_pending": pending,
        "bytes_pending": bytes_pending,
        "blocks_failed": failed,
        "window_s": window_s,
        "resyncs": follower.resyncs,
        "last_error": follower.last_error,
        "last_error_at": follower.last_error_at,
        "gc_held_back": follower.source_gc_hold,
        "now_ms": now_ms,
    }
