"""`mirrorfs mirror run NAME`: the region daemon, composed of its services until stopped.

The follower (stream, apply, ack, poll the source), the replicator (copy pool), the mirror
bucket's GC and the status API run as tasks of one TaskGroup over one database pool; the stop
event unwinds them all.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from mirror.api import build_app
from mirror.db import open_database
from mirror.follow import Follower
from mirror.gc import MirrorGc
from mirror.replicate import Replicator
from mirror.status import region_status
from objstore import open_store
from volume.client import SourceClient
from volume.config import MirrorRegion

log = structlog.get_logger(__name__)
FINAL_ACK_TIMEOUT_S = 2.0
# The replicator keeps one connection for LISTEN and uses up to 3 more, beside the follower,
# GC and status readers.
DAEMON_POOL_SIZE = 12


async def run_region(region: MirrorRegion, stop: asyncio.Event) -> None:
    async with (
        open_database(region, max_size=DAEMON_POOL_SIZE) as db,
        # The mirror's own token: it may stream, snapshot, read status and ack this mirror only.
        SourceClient(list(region.source_api_urls), region.token) as source,
    ):
        await db.migrate()
        follower = Follower(region.name, db, source)
        mirror_store = await open_store(region.bucket, name="mirror")
        source_store = await open_store(region.source_bucket, name="source")
        gc = MirrorGc(db, mirror_store, grace_s=region.gc_grace_s)
        replicator = Replicator(db, source_store, mirror_store)

        async def status() -> dict[str, object]:
            return await region_status(region, follower.status, replicator.queue, replicator, gc)

        api = urlsplit(region.api)
        runner = web.AppRunner(build_app(region.verifier, region.name, status), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, api.hostname or "127.0.0.1", api.port or 80).start()
        log.info("mirror.running", mirror=region.name, api=region.api)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(follower.run(stop))
                tg.create_task(gc.run(stop))
                tg.create_task(replicator.run(stop))
        finally:
            # One last ack so the source's retention and GC do not wait for our next start;
            # bounded, since the source may be the thing that is going away.
            await follower.ack(timeout_s=FINAL_ACK_TIMEOUT_S)
            await runner.cleanup()
            await mirror_store.aclose()
            await source_store.aclose()
            log.info("mirror.stopped", mirror=region.name)
