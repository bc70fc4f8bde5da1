"""A region survives its PostgreSQL: stopped for a minute under write load, the daemon says
`degraded` (HTTP 503, JSON, the reason) meanwhile, then reconnects and carries on from its
watermark: the replica equals the source, nothing applied twice, every block copied."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fallback.client import FsClient
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion
from tests.mirror.waits import http_status, wait_following, wait_status
from tests.servers.postgres import PostgresServer, short_data_dir
from volume.config import load_config

OUTAGE_S = 60.0


@pytest.fixture
async def own_postgres() -> AsyncIterator[PostgresServer]:
    """A PostgreSQL of this test's own, since the test stops it."""
    data_dir = short_data_dir()
    server = PostgresServer.start(data_dir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def write_load(cfg_path: Path, stop: asyncio.Event, written: list[str]) -> None:
    """Files with real blocks, one after another, until `stop`."""
    cfg = load_config(cfg_path)
    async with await FsClient.for_source(cfg, uid=0, gid=0) as fs:
        await fs.mkdir("/load")
        i = 0
        while not stop.is_set():
            path = f"/load/d{i // 100}/f{i}"
            if i % 100 == 0:
                await fs.mkdir(f"/load/d{i // 100}")
            await fs.put(io.BytesIO(os.urandom(20_000 + i % 7_000)), path)  # type: ignore[arg-type]
            if i % 10 == 3:
                await fs.put(io.BytesIO(os.urandom(5_000)), path)  # type: ignore[arg-type]  # overwrite
            written.append(path)
            i += 1
            await asyncio.sleep(0.02)


@pytest.mark.timeout(600)
async def test_replica_database_stopped_for_a_minute_under_write_load(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    """Regression: while the database was away, status answered a bare 500."""
    dsn = own_postgres.create_database("eu")
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        region = MirrorRegion(cluster, "eu", dsn)
        await region.create()
        region.start()
        stop = asyncio.Event()
        written: list[str] = []
        writer = asyncio.create_task(write_load(cluster.config_path, stop, written))
        try:
            await wait_following(region)
            while len(written) < 20:
                await asyncio.sleep(0.1)
            await asyncio.to_thread(own_postgres.stop)
            during: list[tuple[int, Any]] = []
            outage_end = time.monotonic() + OUTAGE_S
            while time.monotonic() < outage_end:
                during.append(await http_status(region.api, cluster.cfg.token))
                await asyncio.sleep(0.5)
            at_restart = len(written)
            await asyncio.to_thread(own_postgres.start_again)
            while len(written) < at_restart + 20:
                assert not writer.done(), writer
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, 30)
        try:
            assert writer.exception() is None
            # Meanwhile: a JSON document saying degraded and why, with 503; never a bare 500.
            assert len(during) > 60
            for code, doc in during:
                assert code == 503 and isinstance(doc, dict), (code, doc)
                assert doc["state"] == "degraded" and doc["mirror"] == "eu", doc
                assert "replica database unavailable" in doc["degraded_reason"], doc
            # Afterwards: carried on from its watermark (no snapshot reload), equal to the
            # source, every block copied.
            await region.assert_equal_to_source()
            st = await wait_status(
                region,
                lambda s: (
                    s["state"] == "following"
                    and s["blocks_pending"] == 0
                    and s["blocks_failed"] == 0
                ),
                "every block copied after the outage",
                timeout_s=120,
            )
            assert st["resyncs"] == 0, st
            log = region.log_path.read_text()
            assert "diverged" not in log.lower() and "Traceback" not in log
            assert st["applied_version"] > 0 and len(written) > 40
        finally:
            region.kill()
