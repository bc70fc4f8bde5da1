"""`mirrorfs source serve`: run one source node until asked to stop."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from changelog.api import build_app
from changelog.config import VolumeConfig
from changelog.node import SourceNode

log = structlog.get_logger(__name__)


async def serve_node(cfg: VolumeConfig, node_id: int, stop: asyncio.Event) -> None:
    """Serve until `stop` is set; then stop the loops, the HTTP server and Raft, in that order."""
    node = await asyncio.to_thread(SourceNode, cfg, node_id)
    node.bind_loop(asyncio.get_running_loop())
    api = urlsplit(node.me.api)
    runner = web.AppRunner(build_app(node), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, api.hostname or "127.0.0.1", api.port or 80, reuse_address=True)
    await site.start()
    log.info("source.serving", node=node_id, api=node.me.api, raft=node.me.raft)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(node.run_ticker(stop))
            tg.create_task(node.run_retention(stop))
            await stop.wait()
    finally:
        await runner.cleanup()
        await asyncio.to_thread(node.close)
        log.info("source.stopped", node=node_id)
