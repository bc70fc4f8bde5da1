"""`mirrorfs mirror worker NAME`: extra copy workers for a region, on this or another machine.

They share the region daemon's queue (its PostgreSQL); nothing else of the daemon runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from mirror.db import open_database
from mirror.replicate import Replicator, ReplicatorConfig
from objstore import open_store
from volume.config import MirrorRegion

Progress = Callable[[dict[str, Any]], None]


async def run_workers(
    region: MirrorRegion,
    stop: asyncio.Event,
    config: ReplicatorConfig | None = None,
    *,
    on_progress: Progress | None = None,
    every_s: float = 1.0,
) -> None:
    """Copy the region's pending blocks until `stop`; every `every_s` hand this process's
    replicator status (state, rates, blocks copied since start) to `on_progress`."""
    async with (
        open_database(region) as db,
        contextlib.AsyncExitStack() as stack,
    ):
        await db.migrate()
        source = await open_store(region.source_bucket, name="source")
        stack.push_async_callback(source.aclose)
        mirror = await open_store(region.bucket, name="mirror")
        stack.push_async_callback(mirror.aclose)
        replicator = Replicator(db, source, mirror, config)
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(replicator.run(stop))
            while on_progress is not None and not run.done():
                on_progress(replicator.process_status())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(run), every_s)
        if on_progress is not None:
            on_progress(replicator.process_status())
