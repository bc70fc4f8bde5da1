"""The mount's local block cache, through real mounts of a mirror region (copying paused):
a second mount reading the same file is served from the disk cache (the region's counters show
the hits, and no block was read from a bucket again), a corrupted cache file is detected and
the block fetched again (the bytes stay right), the cache directory never holds more than its
bound, and the counts reach the region's status document (`mirror status`, the dashboard).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from tests.fallback.test_mirror_reads import Setup
from tests.mount.mounts import mounted_at, mounted_mirror

MiB = 1024 * 1024
SIZE = 13 * MiB  # four blocks: 4 + 4 + 4 + 1 MiB


def disk_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())


def block_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file() and not p.name.startswith("."))


async def counts(s: Setup) -> dict[str, Any]:
    status = await s.region.status()
    names = ("cache_hits", "cache_misses", "cache_corrupt", "fallback_reads", "mirror_hits")
    return {name: status.get(name) or 0 for name in names}


async def test_the_disk_cache_serves_a_second_mount_and_survives_corruption(
    tmp_path: Path, pg_dsn: str
) -> None:
    data = os.urandom(SIZE)
    digest = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    args = ("--region", "eu", "--cache-dir", str(cache), "--cache-size", "64MiB")
    async with mounted_mirror(tmp_path, pg_dsn, *args[2:]) as (s, first):
        await s.region.wait_applied(await s.put("/c/model.bin", data))
        assert hashlib.sha256((first.path / "c" / "model.bin").read_bytes()).hexdigest() == digest
        first.stop()  # its client reports its counts to the region as it closes
        cold = await counts(s)
        assert cold["cache_misses"] == 4 and cold["fallback_reads"] == 4, cold
        assert len(block_files(cache)) == 4

        def read_through_a_new_mount(name: str) -> str:
            with mounted_at(s.cluster.config_path, tmp_path / name, *args,
                            log=tmp_path / f"{name}.log") as m:  # fmt: skip
                return hashlib.sha256((m.path / "c" / "model.bin").read_bytes()).hexdigest()

        assert read_through_a_new_mount("second") == digest
        warm = await counts(s)
        assert warm["cache_hits"] - cold["cache_hits"] == 4, warm
        # No bucket was asked: the source's fallback reads and the mirror's hits stand still.
        assert (warm["fallback_reads"], warm["mirror_hits"]) == (4, cold["mirror_hits"])

        victim = block_files(cache)[0]
        raw = bytearray(victim.read_bytes())
        raw[-1] ^= 0xFF
        victim.write_bytes(bytes(raw))
        assert read_through_a_new_mount("third") == digest
        after = await counts(s)
        assert after["cache_corrupt"] - warm["cache_corrupt"] == 1, after
        assert after["cache_hits"] - warm["cache_hits"] == 3
        assert len(block_files(cache)) == 4  # the fetched block went back in


async def test_the_disk_cache_never_holds_more_than_its_bound(tmp_path: Path, pg_dsn: str) -> None:
    bound = 9 * MiB
    cache = tmp_path / "small"
    data = os.urandom(SIZE)
    async with mounted_mirror(
        tmp_path, pg_dsn, "--cache-dir", str(cache), "--cache-size", str(bound)
    ) as (s, mount):
        await s.region.wait_applied(await s.put("/c/big.bin", data))
        for _ in range(2):
            assert (mount.path / "c" / "big.bin").read_bytes() == data
            assert 0 < disk_bytes(cache) <= bound
