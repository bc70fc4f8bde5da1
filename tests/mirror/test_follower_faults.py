"""Bad frames on the wire are never applied: the follower drops the connection and resumes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirror.db import Database
from mirror.follow.follower import Follower
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion, make_files, source_dump
from tests.servers.faultproxy import FaultProxy
from volume.client import SourceClient


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[SourceCluster]:
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        yield cluster


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
async def test_bad_frames_are_never_applied(source: SourceCluster, pg_dsn: str, fault: str) -> None:
    region = MirrorRegion(source, "eu", pg_dsn)
    await region.create()
    await make_files(source, "pre", 300)  # a backlog, so the first response carries records
    with FaultProxy(source.api(1)) as proxy:
        for at in (40, 3000, 20_000):
            if fault == "corrupt":
                proxy.corrupt_next(1, at_byte=at, path_prefix="/v1/changelog")
            else:
                proxy.truncate_next(1, at_byte=at, path_prefix="/v1/changelog")
        async with (
            await Database.connect(pg_dsn) as db,
            SourceClient([proxy.url], source.cfg.token) as client,
        ):
            follower = Follower("eu", db, client)
            stop = asyncio.Event()
            task = asyncio.create_task(follower.run(stop))
            try:
                version, expected = await source_dump(source)
                deadline = time.monotonic() + 60
                while follower.status.applied_version < version:
                    assert time.monotonic() < deadline, follower.status
                    assert not task.done(), task
                    await asyncio.sleep(0.05)
                assert await region.dump() == expected
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
        changelog_requests = [p for _, p in proxy.seen() if p.startswith("/v1/changelog")]
        assert proxy.stats().errors_injected == 3
        assert len(changelog_requests) >= 4, "the follower did not reconnect after bad frames"
