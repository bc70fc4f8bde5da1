"""The local block cache: bounded tiers, a disk directory shared by processes, read-backs
verified, one fetch per key however many readers, and a failing disk that never fails a read.

Real files and real processes; the full disk is a real tmpfs (root only, as in CI)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from objstore import open_store
from objstore.cache import BlockCache, CachedStore, default_cache_dir, parse_size
from objstore.checksum import checksum
from objstore.diskcache import LEDGER
from objstore.keys import block_key

KiB = 1024
BLOCK = 64 * KiB


def content(i: int, size: int = BLOCK) -> bytes:
    return random.Random(i).randbytes(size)


def key(i: int, size: int = BLOCK) -> str:
    return block_key(i, 0, size)


class Fetcher:
    """fetch() for block i, counting calls."""

    def __init__(self) -> None:
        self.calls: dict[int, int] = {}

    def __call__(self, i: int, size: int = BLOCK):  # type: ignore[no-untyped-def]
        async def fetch() -> bytes:
            self.calls[i] = self.calls.get(i, 0) + 1
            return content(i, size)

        return fetch

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def cache_files(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.is_file() and p.name != LEDGER)


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in cache_files(root))


async def test_memory_tier_is_lru_within_its_bound() -> None:
    cache = BlockCache(memory_bytes=3 * BLOCK)
    fetch = Fetcher()
    for i in range(3):
        assert await cache.get(key(i), fetch(i)) == content(i)
    await cache.get(key(0), fetch(0))  # 0 is now the most recently used: 1 goes first
    for i in (3, 4):
        await cache.get(key(i), fetch(i))
        assert cache.stats.memory_bytes <= 3 * BLOCK
    assert fetch.total == 5 and cache.stats.memory_hits == 1
    for i in (0, 3, 4):
        assert await cache.get(key(i), fetch(i)) == content(i)
    assert fetch.total == 5, "the three most recently used are held"
    await cache.get(key(1), fetch(1))
    assert fetch.calls[1] == 2 and cache.stats.memory_evicted == 3
    assert len(cache._memory) == 3


async def test_disk_tier_stays_within_its_bound_and_survives_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    bound = 10 * BLOCK
    cache = BlockCache(memory_bytes=0, disk_dir=root, disk_bytes=bound)
    fetch = Fetcher()
    for i in range(40):
        assert await cache.get(key(i), fetch(i)) == content(i)
        assert dir_bytes(root) <= bound, f"over the bound after block {i}"
    assert cache.stats.evicted > 0 and fetch.total == 40
    assert await cache.get(key(39), fetch(39)) == content(39)
    assert cache.stats.disk_hits == 1 and fetch.total == 40
    cache.close()

    # A new cache on the directory (a restart): the recent blocks come from disk, verified.
    again = BlockCache(memory_bytes=0, disk_dir=root, disk_bytes=bound)
    fetch = Fetcher()
    kept = [i for i in range(40) if again.disk and again.disk.path(key(i)).exists()]
    assert 39 in kept and 0 not in kept and len(kept) >= 5, kept
    for i in kept:
        assert await again.get(key(i), fetch(i)) == content(i)
    assert fetch.total == 0 and again.stats.disk_hits == len(kept)
    # A block larger than the bound is served, not kept.
    big = 20 * BLOCK
    assert await again.get(key(99, big), fetch(99, big)) == content(99, big)
    assert not again.disk.path(key(99, big)).exists()  # type: ignore[union-attr]
    again.close()


async def test_the_least_recently_used_file_goes_first(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = BlockCache(memory_bytes=0, disk_dir=root, disk_bytes=10 * BLOCK)
    fetch = Fetcher()
    for i in range(9):
        await cache.get(key(i), fetch(i))
        os.utime(cache.disk.path(key(i)), (1000 + i, 1000 + i))  # type: ignore[union-attr]
    await cache.get(key(0), fetch(0))  # a disk hit touches it: now the newest
    for i in range(9, 12):
        await cache.get(key(i), fetch(i))
    assert fetch.calls.get(0) == 1
    assert cache.disk.path(key(0)).exists()  # type: ignore[union-attr]
    assert not cache.disk.path(key(1)).exists()  # type: ignore[union-attr]
    cache.close()


CHILD = """
import asyncio, json, random, sys
from pathlib import Path
from objstore.cache import BlockCache
from objstore.keys import block_key

root, bound, seed, BLOCK = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def content(i):
    return random.Random(i).randbytes(BLOCK)


async def main():
    cache = BlockCache(memory_bytes=0, disk_dir=root, disk_bytes=bound)
    order = list(range(100)) * 4
    random.Random(seed).shuffle(order)
    wrong, ledger_max = 0, 0
    for i in order:
        async def fetch(i=i):
            return content(i)
        wrong += await cache.get(block_key(i, 0, BLOCK), fetch) != content(i)
        ledger_max = max(ledger_max, int.from_bytes((root / ".ledger").read_bytes(), "little"))
    cache.close()
    print(json.dumps({"wrong": wrong, "ledger_max": ledger_max, **cache.stats.as_dict()}))

asyncio.run(main())
"""


def test_processes_share_a_directory_within_its_bound(tmp_path: Path) -> None:
    """Four processes, small blocks (so the ledger's updates collide often), a bound of a
    quarter of the blocks they read."""
    root = tmp_path / "shared"
    block = 4 * KiB
    bound = 25 * block
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(bound), str(seed), str(block)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in (1, 2, 3, 4)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))
    for r in results:
        assert r["wrong"] == 0, r
        assert r["ledger_max"] <= bound, r
        assert r["disk_hits"] > 0 and r["evicted"] > 0, r
    assert dir_bytes(root) <= bound
    ledger = int.from_bytes((root / LEDGER).read_bytes(), "little")
    assert ledger >= dir_bytes(root), "the ledger never under-counts"
    assert not [p for p in cache_files(root) if p.name.startswith(".tmp-")]


async def test_a_write_waits_for_another_holder_of_the_directory_lock(tmp_path: Path) -> None:
    """What keeps processes from both spending the same room: the ledger's flock (taken here
    on a descriptor of the test's own, as another process would hold it)."""
    root = tmp_path / "cache"
    cache = BlockCache(memory_bytes=0, disk_dir=root, disk_bytes=100 * BLOCK)
    cache.prepare_disk()
    fd = os.open(root / LEDGER, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        get = asyncio.create_task(cache.get(key(1), Fetcher()(1)))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(get), 0.5)
        assert not cache.disk.path(key(1)).exists()  # type: ignore[union-attr]
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert await asyncio.wait_for(get, 10) == content(1)
        assert cache.disk.path(key(1)).exists()  # type: ignore[union-attr]
    finally:
        os.close(fd)
        cache.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "header"])
async def test_a_corrupt_file_is_dropped_counted_and_fetched_again(
    tmp_path: Path, damage: str
) -> None:
    root = tmp_path / "cache"
    cache = BlockCache(memory_bytes=0, disk_dir=root, disk_bytes=100 * BLOCK)
    fetch = Fetcher()
    await cache.get(key(7), fetch(7))
    path = cache.disk.path(key(7))  # type: ignore[union-attr]
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[-1000] ^= 0x01
    elif damage == "truncate":
        raw = raw[:-1]
    else:
        raw[:8] = b"garbage!"
    path.write_bytes(bytes(raw))
    assert await cache.get(key(7), fetch(7), checksum=checksum(content(7))) == content(7)
    assert fetch.calls[7] == 2 and cache.stats.corrupt == 1
    assert path.read_bytes() != bytes(raw), "the bad file was replaced by the fetched block"
    assert await cache.get(key(7), fetch(7)) == content(7) and fetch.calls[7] == 2
    cache.close()


async def test_a_file_that_is_not_the_recorded_block_is_refused(tmp_path: Path) -> None:
    """A cache file whole and self-consistent, but not what the block's record says (written
    by a buggy or older writer): the caller's checksum wins."""
    cache = BlockCache(memory_bytes=0, disk_dir=tmp_path / "c", disk_bytes=100 * BLOCK)
    wrong = content(8)

    async def fetch_wrong() -> bytes:
        return wrong

    await cache.get(key(7), fetch_wrong)  # no record given: kept as it is
    fetch = Fetcher()
    got = await cache.get(key(7), fetch(7), checksum=checksum(content(7)))
    assert got == content(7) and fetch.calls[7] == 1 and cache.stats.corrupt == 1
    # Bytes that do not match the record given are returned, never kept.
    await cache.get(key(9), fetch_wrong, checksum=checksum(content(9)))
    assert not cache.disk.path(key(9)).exists()  # type: ignore[union-attr]
    cache.close()


async def test_concurrent_gets_of_one_key_share_one_fetch() -> None:
    cache = BlockCache(memory_bytes=10 * BLOCK)
    release = asyncio.Event()
    calls = 0

    async def fetch() -> bytes:
        nonlocal calls
        calls += 1
        await release.wait()
        return content(1)

    gets = [asyncio.create_task(cache.get(key(1), fetch)) for _ in range(10)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*gets) == [content(1)] * 10
    assert calls == 1 and cache.stats.shared == 9 and cache.stats.misses == 1

    # The get that fetches is cancelled: the others are not, and fetch again themselves.
    release.clear()
    first = asyncio.create_task(cache.get(key(2), fetch))
    await asyncio.sleep(0)
    others = [asyncio.create_task(cache.get(key(2), fetch)) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*others) == [content(1)] * 3
    assert first.cancelled() and calls == 3  # one for the cancelled get, one for the rest

    # A failing fetch fails every get that joined it, and nothing is kept.
    async def broken() -> bytes:
        await asyncio.sleep(0)
        raise OSError("source down")

    results = await asyncio.gather(
        *(cache.get(key(3), broken) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, OSError) for r in results)
    assert await cache.lookup(key(3)) is None


async def test_a_disk_that_cannot_be_made_serves_from_fetch(tmp_path: Path) -> None:
    """Root ignores permission bits, so the unwritable directory is one under a file."""
    (tmp_path / "file").write_bytes(b"x")
    cache = BlockCache(memory_bytes=0, disk_dir=tmp_path / "file" / "cache")
    with pytest.raises(OSError):
        cache.prepare_disk()
    fetch = Fetcher()
    for i in range(3):
        assert await cache.get(key(i), fetch(i)) == content(i)
    assert fetch.total == 3 and cache.stats.disk_errors == 1, "one warning, then it rests"
    assert cache.last_disk_error is not None and "Not a directory" in cache.last_disk_error


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (root only), unmounted afterwards whatever happens."""
    point = tmp_path / "tmpfs"
    point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(point)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=True)


async def test_a_full_or_read_only_disk_never_fails_a_read(tmpfs: Path) -> None:
    root = tmpfs / "cache"
    cache = BlockCache(memory_bytes=0, disk_dir=root, disk_bytes=100 * BLOCK)
    fetch = Fetcher()
    assert await cache.get(key(0), fetch(0)) == content(0)  # fits
    for i in range(1, 8):  # 7 more do not: ENOSPC
        assert await cache.get(key(i), fetch(i)) == content(i)
    assert cache.stats.disk_errors == 1 and "No space" in (cache.last_disk_error or "")
    assert not [p for p in cache_files(root) if p.name.startswith(".tmp-")]
    cache.close()

    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    ro = BlockCache(memory_bytes=0, disk_dir=root, disk_bytes=100 * BLOCK)
    fetch = Fetcher()
    assert await ro.get(key(0), fetch(0)) == content(0)  # still read from disk
    assert fetch.total == 0 and ro.stats.disk_hits == 1
    assert await ro.get(key(5), fetch(5)) == content(5)  # not kept: read-only
    assert fetch.total == 1 and ro.stats.disk_errors == 1
    ro.close()


async def test_cached_store_serves_block_gets_from_the_cache(tmp_path: Path) -> None:
    inner = await open_store((tmp_path / "bucket").as_uri(), registry=CollectorRegistry())
    cache = BlockCache(memory_bytes=0, disk_dir=tmp_path / "cache", disk_bytes=100 * BLOCK)
    store = CachedStore(inner, cache)
    try:
        await inner.put(key(1), content(1))
        await inner.put("meta/x", b"not a block")
        assert await store.get(key(1), offset=10, length=5) == content(1)[10:15]
        assert cache.stats.misses == 0, "a range get of an uncached block passes through"
        assert await store.get(key(1)) == content(1)
        await inner.delete(key(1))  # gone from the bucket: still served from the cache
        assert await store.get(key(1)) == content(1)
        assert await store.get(key(1), offset=BLOCK - 3, length=10) == content(1)[-3:]
        assert await store.get("meta/x") == b"not a block" and cache.stats.misses == 1
        await store.put(key(1), content(5, BLOCK))  # a repair under the key: the cache forgets
        assert await store.get(key(1)) == content(5, BLOCK)
        await store.delete(key(1))
        assert await cache.lookup(key(1)) is None
    finally:
        await store.aclose()
        cache.close()


def test_parse_size() -> None:
    assert parse_size("10GiB") == 10 * 1024**3
    assert parse_size("10gib") == parse_size("10 Gi") == 10 * 1024**3
    assert parse_size("1.5G") == 1_500_000_000 and parse_size("2MB") == 2_000_000
    assert parse_size("4096") == parse_size("4096B") == 4096 and parse_size("1KiB") == 1024
    for bad in ("", "ten", "-1G", "10X", "10 i", "1e9", "5PiB"):
        with pytest.raises(ValueError, match="is not a size"):
            parse_size(bad)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIRRORFS_CACHE_DIR", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("MIRRORFS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "mirrorfs" / "blocks"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_cache_dir() == tmp_path / "h" / ".cache" / "mirrorfs" / "blocks"
