"""Warm-up progress: how many blocks under a path are still waiting for the mirror bucket."""

from __future__ import annotations

from mirror.db import Database
from mirror.replica import Replica
from mirror.replicate.queue import SQL_SUBTREE_SLICES


async def pending_under(db: Database, path: str) -> int:
    """Blocks of files at or under `path` not yet copied (pending or failed). Raises the
    replica's FsError for a bad path."""
    ino = (await Replica(db).lookup(path)).ino
    async with db.acquire() as conn:
        n = await conn.fetchval(
            f"WITH x AS ({SQL_SUBTREE_SLICES}) SELECT count(*) FROM blocks b"
            " JOIN x ON b.slice_id = x.slice_id WHERE b.state <> 'copied'",
            ino,
        )
    return int(n)
