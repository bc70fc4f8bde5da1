"""`mirrorfs warmup` through the real CLI on a real source region, and on a mirror region.

Claims checked: after a warmup of a directory, the cache directory holds every block of its
files, and a client reading through that cache afterwards asks the region for none of them; a
second warmup fetches nothing; a bad size, an unknown path or region and an unusable cache
directory are one-line errors with a non-zero exit, before anything is read; through a mirror,
the warmup's cache counts reach the region's status document.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

from cli.connect import open_client
from fallback import FsClient
from fallback.cached_blocks import use_cache
from objstore.cache import BlockCache
from objstore.diskcache import LEDGER
from objstore.keys import block_sizes
from tests.changelog.cluster import SourceCluster
from tests.fallback.test_mirror_reads import paused_region
from tests.test_cli import mfs
from tests.test_cli_files import assert_clean_error

MiB = 1024 * 1024


async def test_warmup_fills_the_cache_a_later_read_is_served_from(tmp_path: Path) -> None:
    files = {
        "/models/m/weights.bin": os.urandom(9 * MiB + 5),
        "/models/m/tok/vocab.json": b'{"a": 1}',
        "/models/other.bin": os.urandom(MiB),
    }
    blocks = sum(len(block_sizes(len(d))) for d in files.values())
    cache_dir = tmp_path / "cache"
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        cfg = cluster.config_path
        async with await FsClient.for_source(cluster.cfg, uid=0, gid=0) as fs:
            for path, data in files.items():
                await fs.put(io.BytesIO(data), path)  # type: ignore[arg-type]

        first = mfs("warmup", "--cache", str(cache_dir), "/models/m", config=cfg)
        want = 9 * MiB + 5 + 8
        assert first.stdout.startswith(f"2 file(s), {want} bytes: 4 block(s) fetched".encode())
        assert b"0 already cached" in first.stdout, first.stdout
        on_disk = [p for p in cache_dir.rglob("*") if p.is_file() and p.name != LEDGER]
        assert len(on_disk) == 4

        out = mfs(
            "warmup", "--cache-dir", str(cache_dir), "--cache-size", "1GiB", "/models", config=cfg
        )
        assert re.search(rb": 1 block\(s\) fetched .* 4 already cached", out.stdout), out.stdout
        assert len([p for p in cache_dir.rglob("*") if p.is_file()]) == blocks + 1

        # A later reader with the same cache directory (a mount, a client): no block asked.
        cache = BlockCache(memory_bytes=0, disk_dir=cache_dir)
        async with await open_client(cluster.cfg, "source", uid=0, gid=0) as fs:
            cached = use_cache(fs, cache)
            for path, data in files.items():
                assert await fs.read_file(path) == data
            assert (cached.counters.cache_hits, cached.counters.cache_misses) == (blocks, 0)
        cache.close()

        # Errors: one line each, exit 1, nothing read.
        bad = mfs("warmup", "--cache-size", "10XB", "/models", config=cfg, check=False)
        assert_clean_error(bad, b"--cache-size: '10XB' is not a size")
        missing = mfs("warmup", "--cache", str(cache_dir), "/nope", config=cfg, check=False)
        assert_clean_error(missing, b"/nope: no such file or directory in region 'source'")
        region = mfs("warmup", "--region", "mars", "/models", config=cfg, check=False)
        assert_clean_error(region, b"no region named 'mars'")
        (tmp_path / "a-file").write_bytes(b"")
        unusable = tmp_path / "a-file" / "cache"
        broken = mfs("warmup", "--cache", str(unusable), "/models", config=cfg, check=False)
        assert_clean_error(broken, f"cache directory {unusable}: Not a directory".encode())
        for proc in (bad, missing, region, broken):
            assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr  # error (+ hint)


async def test_warmup_through_a_mirror_region_reports_to_the_region(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Through a mirror (copying paused): the blocks come by fallback, land in the cache, and
    the warmup's cache counts reach the region's status document."""
    cache_dir = tmp_path / "cache"
    async with paused_region(tmp_path, pg_dsn) as s:
        data = os.urandom(5 * MiB)
        await s.region.wait_applied(await s.put("/m/w.bin", data))
        cfg = s.cluster.config_path
        out = mfs("warmup", "--region", "eu", "--cache", str(cache_dir), "/m", config=cfg)
        assert b"1 file(s), 5242880 bytes: 2 block(s) fetched" in out.stdout, out.stdout
        again = mfs("warmup", "--region", "eu", "--cache", str(cache_dir), "/m", config=cfg)
        assert b": 0 block(s) fetched (0 bytes), 2 already cached" in again.stdout, again.stdout
        status = await s.region.status()
        assert (status["cache_misses"], status["cache_hits"]) == (2, 2), status
        assert status["cache_miss_bytes"] == status["cache_hit_bytes"] == len(data)
        assert status["fallback_reads"] == 2
