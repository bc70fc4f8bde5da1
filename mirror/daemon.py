"""`mirrorfs mirror run NAME`: the region daemon, composed of its services until stopped.

The follower (stream, apply, ack, poll the source), the replicator (copy pool), the mirror
bucket's GC and the status API run as tasks of one TaskGroup over one database pool; the stop
event unwinds them all. On an embedded PostgreSQL the daemon also keeps its server up (it is
the server's owner while it runs: mirror/embedded.py).

The daemon runs only on a database stamped for this mirror of this volume (mirror/stamp.py).
Every service survives losing the database for a while (each retries, and status answers 503
`degraded` meanwhile); the one thing that ends the daemon by itself is the source no longer
knowing the mirror (`mirror remove`): it exits non-zero saying so, within an ack interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from mirror.api import build_app
from mirror.db import open_database
from mirror.errors import MirrorError
from mirror.follow import Follower
from mirror.gc import MirrorGc
from mirror.region_counters import RegionCounters
from mirror.replicate import Replicator, ReplicatorConfig
from mirror.stamp import Stamp, claim_for_daemon
from mirror.status import region_status
from objstore import open_store
from volume.client import SourceClient
from volume.config import MirrorRegion
from volume.errors import MirrorRemovedError

log = structlog.get_logger(__name__)
FINAL_ACK_TIMEOUT_S = 2.0
# The replicator keeps one connection for LISTEN and uses up to 3 more, beside the follower,
# GC and status readers.
DAEMON_POOL_SIZE = 12


async def run_region(region: MirrorRegion, stop: asyncio.Event) -> None:
    """Run until `stop`. Raises MirrorError if the database is not this mirror's, or once the
    source says the mirror was removed."""
    async with (
        open_database(region, max_size=DAEMON_POOL_SIZE, who=f"mirror run {region.name}") as db,
        # The mirror's own token: it may stream, snapshot, read status and ack this mirror only.
        SourceClient(list(region.source_api_urls), region.token) as source,
    ):
        await db.migrate()
        await claim_for_daemon(db, Stamp.of(region))
        follower = Follower(region.name, db, source)
        mirror_store = await open_store(region.bucket, name="mirror")
        source_store = await open_store(region.source_bucket, name="source")
        gc = MirrorGc(db, mirror_store, grace_s=region.gc_grace_s)
        counters = RegionCounters(db)
        replicator = Replicator(db, source_store, mirror_store, ReplicatorConfig.of(region))

        async def status() -> dict[str, object]:
            return await region_status(
                region, follower.status, replicator.queue, replicator, gc, counters
            )

        api = urlsplit(region.api)
        runner = web.AppRunner(build_app(region.verifier, region.name, status), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, api.hostname or "127.0.0.1", api.port or 80).start()
        log.info("mirror.running", mirror=region.name, api=region.api)
        removed: MirrorRemovedError | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(follower.run(stop))
                tg.create_task(gc.run(stop))
                tg.create_task(replicator.run(stop))
                if db.server is not None:
                    tg.create_task(db.server.watch(stop))
        except* MirrorRemovedError as group:
            # The follower raised it (its ack was answered "unknown mirror"); the group then
            # cancelled the other services: nothing of this mirror is kept at the source now.
            removed = _first(group)
        finally:
            if removed is None:
                # One last ack so the source's retention and GC do not wait for our next
                # start; bounded, since the source may be the thing that is going away.
                with contextlib.suppress(MirrorRemovedError):
                    await follower.ack(timeout_s=FINAL_ACK_TIMEOUT_S)
            await runner.cleanup()
            await mirror_store.aclose()
            await source_store.aclose()
            log.info("mirror.stopped", mirror=region.name, removed=removed is not None)
    if removed is not None:
        raise MirrorError(
            f"mirror {region.name!r} was removed from the source (its ack was answered"
            f" {removed.message!r}); the region daemon stops",
            hint="its bucket and database are left as they are; `mirrorfs mirror create"
            f" {region.name}` makes it a mirror again",
        )


def _first(group: BaseExceptionGroup[MirrorRemovedError]) -> MirrorRemovedError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, MirrorRemovedError)
    return exc
