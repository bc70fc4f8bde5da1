"""Reads through a mirror region with the local block cache in front (fallback/cached_blocks.py):
a real source cluster, a real region daemon (copying paused), its PostgreSQL and buckets.

Claims checked: the second read of a file (a new client, a new cache on the same directory:
as a restarted mount) is served from the disk cache, asking neither bucket anything, and its
hits reach the region while the client is still open; a
corrupt cache file is detected, the block fetched again through the region and the file's
bytes are right; the cache counts reach the region's status document when the client closes.
"""

from __future__ import annotations

import os
from pathlib import Path

from cli.connect import open_client
from fallback import FallbackBlocks, FsClient
from fallback.cached_blocks import CachedBlocks, use_cache
from objstore.cache import BlockCache
from objstore.diskcache import LEDGER
from objstore.faults import FaultLayer, FaultPlan
from objstore.keys import block_sizes
from tests.fallback.test_mirror_reads import paused_region, read_all
from tests.mirror.volume import wait_until
from volume.inode import BLOCK_SIZE


def counting(fs: FsClient) -> tuple[FaultPlan, FaultPlan]:
    """Count the calls the region's blocks make to the mirror and the source bucket."""
    cached = fs.blocks
    assert isinstance(cached, CachedBlocks) and isinstance(cached.inner, FallbackBlocks)
    mirror, source = FaultPlan(), FaultPlan()
    cached.inner.mirror = FaultLayer(cached.inner.mirror, mirror)
    cached.inner.source = FaultLayer(cached.inner.source, source)
    return mirror, source


async def test_a_second_read_is_served_from_the_cache_and_counted_by_the_region(
    tmp_path: Path, pg_dsn: str
) -> None:
    cache_dir = tmp_path / "cache"
    async with paused_region(tmp_path, pg_dsn) as s:
        data = os.urandom(2 * BLOCK_SIZE + 12345)
        n = len(block_sizes(len(data)))
        await s.region.wait_applied(await s.put("/models/w.bin", data))

        # 1. Cold: every block through the region (from the source: copying is paused).
        cache = BlockCache(memory_bytes=0, disk_dir=cache_dir, disk_bytes=64 * BLOCK_SIZE)
        async with await open_client(s.cfg, "eu", uid=0, gid=0) as fs:
            cached = use_cache(fs, cache)
            assert use_cache(fs, cache) is cached
            assert await read_all(fs, "/models/w.bin") == data
            c = cached.counters
            assert (c.cache_misses, c.cache_hits, c.fallback_reads) == (n, 0, n)
            assert c.cache_miss_bytes == len(data)
        cache.close()
        assert len([p for p in cache_dir.rglob("*") if p.is_file()]) == n + 1  # and the ledger

        # 2. Warm, in a new client and a new cache on the directory: neither bucket is asked.
        cache = BlockCache(memory_bytes=0, disk_dir=cache_dir, disk_bytes=64 * BLOCK_SIZE)
        async with await open_client(s.cfg, "eu", uid=0, gid=0) as fs:
            cached = use_cache(fs, cache)
            mirror, source = counting(fs)
            assert await read_all(fs, "/models/w.bin") == data
            assert (
                await read_all(fs, "/models/w.bin", BLOCK_SIZE - 5, 10)
                == data[BLOCK_SIZE - 5 : BLOCK_SIZE + 5]
            )
            c = cached.counters
            assert (c.cache_hits, c.cache_misses, c.mirror_hits, c.fallback_reads) == (
                n + 2,
                0,
                0,
                0,
            )
            assert c.cache_hit_bytes == len(data) + 2 * BLOCK_SIZE
            assert mirror.calls == {} and source.calls == {}

            # While the client is open (a mount), its hits reach the region on the flush timer,
            # though its region blocks were never asked (their timer starts on their first get).
            async def reported() -> bool:
                return bool((await s.region.status())["cache_hits"] == n + 2)

            await wait_until("an open client of cache hits only reports them", reported, 20)

            # 3. A corrupt cache file: detected, fetched again through the region, bytes right.
            path = next(p for p in cache_dir.rglob("*") if p.is_file() and p.name != LEDGER)
            raw = bytearray(path.read_bytes())
            raw[len(raw) // 2] ^= 0x40
            path.write_bytes(bytes(raw))
            assert await read_all(fs, "/models/w.bin") == data
            assert (c.cache_corrupt, c.cache_misses) == (1, 1)
            assert mirror.calls.get("get", 0) + source.calls.get("get", 0) >= 1
        cache.close()
        assert path.read_bytes() != bytes(raw), "the cache file was written again, good"

        # The client flushed its counts when it closed: the region's sums show both clients.
        status = await s.region.status()
        assert status["cache_misses"] == n + 1 and status["cache_corrupt"] == 1
        assert status["cache_hits"] == 2 * n + 1
        assert status["cache_miss_bytes"] >= len(data)
        assert status["fallback_reads"] >= n
