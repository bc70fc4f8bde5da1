"""No region ever shows half a request: a real 3-node source, a mirror daemon, real PostgreSQL.

A put whose write is refused changes nothing at the source or in the replica; a mirror daemon
killed with -9 (again and again) while multi-op requests stream in only ever holds whole
requests, checked on the replica after every kill and while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mirror.db import Database
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion, source_dump
from volume.client import SourceClient

FILES = 150  # per request: create + truncate + write each, 450 records (~170 KB)
KILLS = 5


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[SourceCluster]:
    async with SourceCluster.running(tmp_path / "vol", nodes=3) as cluster:
        yield cluster


@pytest.fixture
async def region(source: SourceCluster, pg_dsn: str) -> AsyncIterator[MirrorRegion]:
    r = MirrorRegion(source, "eu", pg_dsn)
    try:
        yield r
    finally:
        r.kill()


def put_ops(path: str, slice_id: int, size: int) -> list[dict[str, Any]]:
    write = {"path": path, "chunk_index": 0, "pos": 0, "slice_id": slice_id, "size": size}
    return [
        {"op": "create", "args": {"path": path, "mode": 0o644, "exclusive": False}},
        {"op": "truncate", "args": {"path": path, "size": 0}},
        {"op": "write", "args": {**write, "checksums": [f"xxh3:{slice_id:016x}"]}},
    ]


async def put_round(c: SourceClient, round_no: int) -> None:
    """One request rewriting every file /w/f<i> with `round_no`'s size (metadata only)."""
    first = int((await c.op("alloc_slices", count=FILES))["effect"]["first"])
    ops = [op for i in range(FILES) for op in put_ops(f"/w/f{i}", first + i, 1000 + round_no)]
    res = await c.ops(ops)
    res.raise_first_error()


async def replica_files(dsn: str) -> list[tuple[str, int, int, int]]:
    """(name, size, refs, bytes referenced) of every file under /w, read in one statement."""
    async with await Database.connect(dsn) as db, db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT d.name, i.size, count(r.slice_id) AS refs, coalesce(sum(r.len), 0) AS bytes"
            " FROM dentries d JOIN inodes i ON i.ino = d.ino"
            " LEFT JOIN chunk_refs r ON r.ino = i.ino"
            " WHERE d.parent = (SELECT ino FROM dentries WHERE parent = 1 AND name = 'w')"
            " GROUP BY d.name, i.size"
        )
    return [(r["name"], r["size"], r["refs"], r["bytes"]) for r in rows]


def assert_whole_requests(files: list[tuple[str, int, int, int]], where: str) -> None:
    """Every request rewrites all files with one size: any other picture is half a request."""
    if not files:
        return
    assert len(files) == FILES, f"{where}: {len(files)} of {FILES} files exist"
    sizes = {size for _, size, _, _ in files}
    assert len(sizes) == 1, f"{where}: files at sizes {sorted(sizes)[:5]}: half a request"
    (size,) = sizes
    assert size > 0, f"{where}: files truncated, not yet rewritten"
    assert all((refs, nbytes) == (1, size) for _, _, refs, nbytes in files), where


async def test_failed_put_changes_nothing_at_source_or_mirror(
    source: SourceCluster, region: MirrorRegion
) -> None:
    await region.create()
    region.start()
    async with source.client() as c:
        await c.op("mkdir", path="/w", mode=0o755)
        await put_round(c, 1)
        await region.assert_equal_to_source()
        _, before = await source_dump(source)
        head = (await c.status(source.api(1)))["applied_version"]
        gc_before = await region_gc_rows(region)

        # A put whose write names a slice id that was never allocated: refused.
        res = await c.ops(put_ops("/w/f0", 10**9, 5))
        assert [r["ok"] for r in res.results] == [False, False, False]
        assert res.results[2]["error"]["errno"] == 22

        _, after = await source_dump(source)
        assert after == before, "the failed put changed the source"
        changed = [r async for r in c.stream(head + 1, follow=False) if r.op != "tick"]
        assert changed == [], f"the failed put left records: {[r.op for r in changed]}"
    await region.assert_equal_to_source()
    assert await region.dump() == before
    assert await region_gc_rows(region) == gc_before, "the mirror queued blocks for GC"


async def region_gc_rows(region: MirrorRegion) -> int:
    async with await Database.connect(region.dsn) as db, db.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM gc_queue"))


async def test_mirror_killed_mid_stream_never_shows_half_a_request(
    source: SourceCluster, region: MirrorRegion
) -> None:
    await region.create()
    async with source.client() as c:
        await c.op("mkdir", path="/w", mode=0o755)
        for n in range(1, 6):  # a backlog: the daemon starts catching up in large batches
            await put_round(c, n)
    stop = asyncio.Event()

    async def writer() -> None:
        n = 6
        async with source.client() as c:
            while not stop.is_set():
                await put_round(c, n)
                n += 1

    seen: list[int] = []

    async def watch() -> None:
        """Look at the replica while the daemon applies: it must never show half a request."""
        while True:
            assert_whole_requests(await replica_files(region.dsn), "while running")
            seen.append(1)
            await asyncio.sleep(0.02)

    wtask = asyncio.create_task(writer())
    try:
        for kill in range(KILLS):
            start = (await region.watermark())[0]
            region.start()
            watcher = asyncio.create_task(watch())
            deadline = time.monotonic() + 60
            while (await region.watermark())[0] <= start:  # kill while records flow in
                assert time.monotonic() < deadline, "the daemon applied nothing"
                assert not watcher.done(), watcher.result()
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05 * kill)
            region.kill()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            assert_whole_requests(await replica_files(region.dsn), f"after kill {kill + 1}")
    finally:
        stop.set()
        await wtask
    assert len(seen) >= KILLS
    region.start()
    await region.assert_equal_to_source()
    assert_whole_requests(await replica_files(region.dsn), "at the end")
