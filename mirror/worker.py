"""`mirrorfs mirror worker NAME`: extra copy workers for a region, on this or another machine.

They share the region daemon's queue (its PostgreSQL); nothing else of the daemon runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from mirror.db import open_database
from mirror.metrics import WorkerCollector
from mirror.replicate import Replicator, ReplicatorConfig
from objstore import open_store
from volume.config import MirrorRegion
from volume.web import metrics_response

Progress = Callable[[dict[str, Any]], None]


async def run_workers(
    region: MirrorRegion,
    stop: asyncio.Event,
    config: ReplicatorConfig | None = None,
    *,
    on_progress: Progress | None = None,
    every_s: float = 1.0,
    metrics_at: tuple[str, int] | None = None,
    on_metrics_url: Callable[[str], None] | None = None,
) -> None:
    """Copy the region's pending blocks until `stop`; every `every_s` hand this process's
    replicator status (state, rates, blocks copied since start) to `on_progress`. With
    `metrics_at` (host, port; port 0: any free one), serve `GET /metrics` there and hand its
    URL to `on_metrics_url`."""
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
        if metrics_at is not None:
            url = await serve_metrics(stack, region, replicator, metrics_at)
            if on_metrics_url is not None:
                on_metrics_url(url)
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(replicator.run(stop))
            while on_progress is not None and not run.done():
                on_progress(replicator.process_status())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(run), every_s)
        if on_progress is not None:
            on_progress(replicator.process_status())


async def serve_metrics(
    stack: contextlib.AsyncExitStack,
    region: MirrorRegion,
    replicator: Replicator,
    at: tuple[str, int],
) -> str:
    """`GET /metrics` of this worker (no token, as every daemon's), until `stack` closes."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        WorkerCollector(
            region.volume,
            region.name,
            lambda: {"worker_id": replicator.queue.worker_id, **replicator.process_status()},
        )
    )

    async def get_metrics(_request: web.Request) -> web.Response:
        return metrics_response(registry)

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, at[0], at[1])
    await site.start()
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}/metrics"
