"""`mirrorfs mirror run NAME`: the region daemon (follower + status API), until SIGTERM.

Composed as services in one TaskGroup: the follower, a poller that learns the source's head
version (so lag is known even while disconnected from the stream), and the HTTP status API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import orjson
import structlog
from aiohttp import web

from changelog.client import SourceClient
from changelog.config import VolumeConfig
from mirror.db import Database
from mirror.embedded import EmbeddedPostgres, start_embedded
from mirror.follower import Follower
from mirror.gc import MirrorGc
from mirror.replicator import Replicator
from mirror.status import region_status
from objstore import open_store

log = structlog.get_logger(__name__)
SOURCE_POLL_INTERVAL_S = 2.0
FINAL_ACK_TIMEOUT_S = 2.0
DAEMON_POOL_SIZE = 12


@contextlib.asynccontextmanager
async def open_replica(cfg: VolumeConfig, name: str) -> AsyncIterator[Database]:
    """The mirror's database: its DSN, or the embedded server under its data directory."""
    mcfg = cfg.mirror(name)
    embedded: EmbeddedPostgres | None = None
    dsn = mcfg.dsn
    if not dsn:
        embedded = await start_embedded(cfg.resolve(mcfg.data_dir) / "pg")
        dsn = embedded.dsn
    try:
        # The replicator keeps one connection for LISTEN and uses up to 3 more, beside the
        # follower, GC and status readers.
        db = await Database.connect(dsn, max_size=DAEMON_POOL_SIZE)
        try:
            yield db
        finally:
            await db.aclose()
    finally:
        if embedded is not None:
            await embedded.stop()


async def poll_source(follower: Follower, cfg: VolumeConfig, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for url in cfg.api_urls:
            try:
                st = await follower.source.status(url)
            except Exception:  # noqa: BLE001 - an unreachable node: try the next
                continue
            follower.status.source_version = max(
                follower.status.source_version, int(st["applied_version"])
            )
            held_by = (st.get("gc") or {}).get("held_by") or {}
            follower.status.source_gc_hold = held_by.get(follower.name)
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SOURCE_POLL_INTERVAL_S)


def status_app(
    cfg: VolumeConfig, name: str, follower: Follower, gc: MirrorGc, replicator: Replicator
) -> web.Application:
    token = cfg.token.encode()

    @web.middleware
    async def auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").encode()
        if request.path.startswith("/v1/") and not hmac.compare_digest(given, token):
            log.warning("mirror.unauthorized", path=request.path, peer=request.remote)
            return web.json_response({"error": "AuthError", "message": "bad token"}, status=401)
        return await handler(request)

    async def get_status(request: web.Request) -> web.Response:
        body = await region_status(
            name, cfg.name, cfg.mirror(name).window_s, follower.status, follower.replica
        )
        body.update(await replicator.status_dict())
        body["gc"] = await gc.status()
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    app = web.Application(middlewares=[auth])
    app.router.add_get("/v1/status", get_status)
    return app


async def run_region(cfg: VolumeConfig, name: str, stop: asyncio.Event) -> None:
    mcfg = cfg.mirror(name)
    async with open_replica(cfg, name) as db, SourceClient(cfg.api_urls, cfg.token) as source:
        await db.migrate()
        follower = Follower(name, db, source)
        mirror_store = await open_store(mcfg.bucket, name="mirror")
        source_store = await open_store(cfg.source.bucket, name="source")
        gc = MirrorGc(db, mirror_store, grace_s=cfg.source.gc_grace_s)
        replicator = Replicator(db, source_store, mirror_store)
        api = urlsplit(mcfg.api)
        runner = web.AppRunner(status_app(cfg, name, follower, gc, replicator), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, api.hostname or "127.0.0.1", api.port or 80).start()
        log.info("mirror.running", mirror=name, api=mcfg.api)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(follower.run(stop))
                tg.create_task(poll_source(follower, cfg, stop))
                tg.create_task(gc.run(stop))
                tg.create_task(replicator.run(stop))
        finally:
            # One last ack so the source's retention and GC do not wait for our next start;
            # bounded, since the source may be the thing that is going away.
            await follower.ack(timeout_s=FINAL_ACK_TIMEOUT_S)
            await runner.cleanup()
            await mirror_store.aclose()
            await source_store.aclose()
            log.info("mirror.stopped", mirror=name)
