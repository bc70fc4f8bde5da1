"""`mirrorfs mirror worker NAME`: extra copy workers for a region, on this or another machine.

They share the region daemon's queue (its PostgreSQL); nothing else of the daemon runs here.
"""

from __future__ import annotations

import asyncio

from mirror.db import open_database
from mirror.replicate import ReplicatorConfig, run_replicator
from volume.config import MirrorRegion


async def run_workers(
    region: MirrorRegion, stop: asyncio.Event, config: ReplicatorConfig | None = None
) -> None:
    """Copy the region's pending blocks until `stop`."""
    async with open_database(region) as db:
        await db.migrate()
        await run_replicator(db, region.source_bucket, region.bucket, stop, config)
