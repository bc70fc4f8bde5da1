"""`mirrorfs source serve`: run one source node until asked to stop."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from changelog.api import build_app, commit
from changelog.gc import SourceGc
from changelog.node import SourceNode
from changelog.sweeper import UploadSweeper
from objstore import open_store
from volume.config import VolumeConfig
from volume.request_ids import new_request_id

log = structlog.get_logger(__name__)
# Requests in flight get this long to finish when the node stops (streams end at once).
SHUTDOWN_TIMEOUT_S = 5.0


async def serve_node(cfg: VolumeConfig, node_id: int, stop: asyncio.Event) -> None:
    """Serve until `stop` is set; then stop the loops, the HTTP server and Raft, in that order."""
    store = await open_store(cfg.source.bucket, name="source")  # a bad bucket fails here, first
    node = await asyncio.to_thread(SourceNode, cfg, node_id)
    node.bind_loop(asyncio.get_running_loop())
    node.gc = SourceGc(
        node.state,
        node.segments,
        node.data_dir,
        store,
        is_leader=lambda: node.raft.is_leader,
        grace_s=cfg.source.gc_grace_s,
    )
    node.sweeper = UploadSweeper(
        node.state,
        store,
        submit=lambda ops: commit(node, new_request_id(), ops),
        is_leader=lambda: node.raft.is_leader,
        grace_s=cfg.source.upload_grace_s,
    )
    api = urlsplit(node.me.api)
    runner = web.AppRunner(
        build_app(node),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, api.hostname or "127.0.0.1", api.port or 80, reuse_address=True)
        await site.start()
        log.info("source.serving", node=node_id, api=node.me.api, raft=node.me.raft)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(node.run_ticker(stop))
            tg.create_task(node.run_retention(stop))
            tg.create_task(node.gc.run(stop))
            tg.create_task(node.sweeper.run(stop))
            await stop.wait()
    finally:
        node.stopping.set()
        await runner.cleanup()
        await asyncio.to_thread(node.close)
        await store.aclose()
        log.info("source.stopped", node=node_id)
