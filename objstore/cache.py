"""A local cache of immutable blocks: a bounded memory tier (LRU) and a bounded disk directory
shared by the processes of one host (objstore/diskcache.py), plus `CachedStore`, the same
cache as a layer for callers that only hold an ObjectStore.

Blocks never change under a key, so a cached copy is never stale; the only question is whether
it is whole and right. A disk file is verified when read back (its header's length and xxh3
checksum, and the block's recorded checksum when the caller knows it): a corrupt or truncated
file is deleted, counted (`corrupt`) and the block fetched again.

A failing disk (ENOSPC, EACCES, a read-only or unmakeable directory) never fails a read: the
error is logged, the block is served from `fetch`, and the disk tier rests for `DISK_RETRY_S`,
so a broken disk costs one warning, not one per block.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from objstore.base import ObjectMeta, ObjectStore, StoreLayer, clip_range
from objstore.checksum import checksum as checksum_of
from objstore.diskcache import CorruptFileError, DiskTier
from objstore.keys import parse_block_key

log = structlog.get_logger(__name__)

DEFAULT_CACHE_BYTES = 10 * 1024**3  # the disk tier of a mount and of `mirrorfs warmup`
# 64 blocks: a FUSE read asks for 128 KiB at a time, so one block is asked for ~32 times in a row.
DEFAULT_MEMORY_BYTES = 256 * 1024**2
CACHE_DIR_ENV = "MIRRORFS_CACHE_DIR"
DISK_RETRY_S = 30.0  # after a disk failure the disk tier rests this long

MEMORY, DISK, SHARED, FETCH = "memory", "disk", "shared", "fetch"  # CacheRead.source


def default_cache_dir() -> Path:
    """$MIRRORFS_CACHE_DIR, else $XDG_CACHE_HOME/mirrorfs/blocks, else ~/.cache/mirrorfs/blocks."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mirrorfs" / "blocks"


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """Bytes of a size as a person writes it: "10GiB", "512Mi", "1.5G", "4096". KiB, MiB, GiB,
    TiB (the B optional) are powers of 1024; K, M, G, T (the B optional) powers of 1000.
    ValueError saying what is wrong otherwise."""
    m = _SIZE_RE.match(text)
    if not m or (m.group(3) and not m.group(2)):
        raise ValueError(
            f"{text!r} is not a size: write a number of bytes, optionally with a unit "
            "K, M, G, T (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 10GiB"
        )
    number, unit, binary, _ = m.groups()
    return int(float(number) * (1024 if binary else 1000) ** _POWERS[unit.lower()])


@dataclass
class CacheStats:
    """What this process's cache did since it was made, and what it holds now.

    memory_hits/disk_hits: gets served by a tier; shared: gets that joined another get's fetch
    of the same key; misses: fetches. hit_bytes counts the three served kinds, miss_bytes the
    fetched. corrupt: disk files that failed their check (dropped, fetched again). evicted:
    disk files this process removed for room; memory_evicted: memory entries. disk_errors:
    disk operations that failed (the read was served anyway)."""

    memory_hits: int = 0
    disk_hits: int = 0
    shared: int = 0
    misses: int = 0
    hit_bytes: int = 0
    miss_bytes: int = 0
    corrupt: int = 0
    evicted: int = 0
    memory_evicted: int = 0
    disk_errors: int = 0
    memory_bytes: int = 0  # held in memory now
    disk_bytes: int = 0  # the directory's ledger when last read (every process's files)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CacheRead:
    """One get: its bytes, where they came from (MEMORY, DISK, SHARED or FETCH), and whether
    a corrupt disk copy was dropped on the way."""

    data: bytes
    source: str
    corrupt: bool = False


class BlockCache:
    """Blocks by key in memory (`memory_bytes`, 0 = off) and in `disk_dir` (`disk_bytes`;
    None or 0 = no disk tier). Instances on one directory, in one process or several, share
    it safely; `close()` each."""

    def __init__(
        self,
        *,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        disk_dir: Path | str | None = None,
        disk_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if memory_bytes < 0 or disk_bytes < 0:
            raise ValueError(
                f"cache bounds must be >= 0 (memory {memory_bytes}, disk {disk_bytes})"
            )
        self.memory_bytes = memory_bytes
        self.disk_dir = None if disk_dir is None or disk_bytes == 0 else Path(disk_dir)
        self.disk_bytes = disk_bytes
        self.disk = None if self.disk_dir is None else DiskTier(self.disk_dir, disk_bytes)
        self.stats = CacheStats()
        self.last_disk_error: str | None = None
        self._memory: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self._disk_off_until = 0.0

    async def get(
        self, key: str, fetch: Callable[[], Awaitable[bytes]], *, checksum: str | None = None
    ) -> bytes:
        """The block under `key`: from memory, else from disk (verified, and against
        `checksum`, the block's recorded one, when given), else `await fetch()`, then kept in
        both tiers. Concurrent gets of one key in this process share one fetch; its error is
        raised to each of them and nothing is kept. Bytes that do not match `checksum` (or, for
        a block key, its size) are returned but not kept: verifying is the fetch's job."""
        return (await self.get_traced(key, fetch, checksum=checksum)).data

    async def get_traced(
        self, key: str, fetch: Callable[[], Awaitable[bytes]], *, checksum: str | None = None
    ) -> CacheRead:
        """`get`, also saying where the bytes came from (for a caller's own counters)."""
        while True:
            hit = self._memory_get(key, checksum)
            if hit is not None:
                return CacheRead(hit, MEMORY)
            fut = self._inflight.get(key)
            if fut is None:
                break
            try:
                data = await asyncio.shield(fut)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if fut.cancelled() and task is not None and not task.cancelling():
                    continue  # the get we joined was cancelled, not us: try again ourselves
                raise
            self.stats.shared += 1
            self.stats.hit_bytes += len(data)
            return CacheRead(data, SHARED)
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # none may be waiting
        self._inflight[key] = fut
        try:
            try:
                read = await self._load(key, fetch, checksum)
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except BaseException as exc:
                fut.set_exception(exc)
                raise
            # The joined gets have their bytes now; the key stays in flight until the disk
            # write is done, so a get arriving meanwhile joins instead of fetching again.
            fut.set_result(read.data)
            if read.source == FETCH:
                await self._store(key, read.data, checksum)
            return read
        finally:
            if self._inflight.get(key) is fut:
                del self._inflight[key]

    async def lookup(self, key: str, *, checksum: str | None = None) -> bytes | None:
        """The cached block under `key` (memory, then disk), or None: never fetches."""
        hit = self._memory_get(key, checksum)
        if hit is not None:
            return hit
        found, _ = await self._disk_get(key, checksum)
        return found

    async def discard(self, key: str) -> None:
        """Forget `key` in both tiers (its object was overwritten or deleted)."""
        self._memory_drop(key)
        if self.disk is not None and self._disk_usable():
            try:
                await asyncio.to_thread(self.disk.remove, key)
            except OSError as exc:
                self._disk_failed("discard", key, exc)

    def prepare_disk(self) -> None:
        """Make the directory and its ledger now; OSError if that cannot be done (for a command
        that exists to fill the cache and should say so before it reads anything)."""
        if self.disk is not None:
            self.disk.prepare()

    def close(self) -> None:
        """Release the disk tier's file descriptor. Idempotent."""
        if self.disk is not None:
            self.disk.close()

    # -- one get's way through the tiers -------------------------------------------------------

    async def _load(
        self, key: str, fetch: Callable[[], Awaitable[bytes]], checksum: str | None
    ) -> CacheRead:
        found, corrupt = await self._disk_get(key, checksum)
        if found is not None:
            return CacheRead(found, DISK)
        data = await fetch()
        self.stats.misses += 1
        self.stats.miss_bytes += len(data)
        return CacheRead(data, FETCH, corrupt)

    async def _store(self, key: str, data: bytes, checksum: str | None) -> None:
        if not _is_block(key, data):
            return
        to_disk = (
            self.disk is not None
            and self._disk_usable()
            and DiskTier.fits(key, len(data), self.disk_bytes)
        )
        if not to_disk and len(data) > self.memory_bytes:
            return
        actual = await asyncio.to_thread(checksum_of, data)
        if checksum is not None and actual != checksum:
            return
        self._memory_put(key, data, actual)
        if to_disk:
            assert self.disk is not None
            try:
                self.stats.evicted += await asyncio.to_thread(self.disk.write, key, data, actual)
            except OSError as exc:
                self._disk_failed("write", key, exc)
            self.stats.disk_bytes = self.disk.ledger_bytes

    # -- memory --------------------------------------------------------------------------------

    def _memory_get(self, key: str, checksum: str | None) -> bytes | None:
        entry = self._memory.get(key)
        if entry is None:
            return None
        data, recorded = entry
        if checksum is not None and recorded != checksum:
            self._memory_drop(key)  # kept by a caller that did not know the record: not it
            return None
        self._memory.move_to_end(key)
        self.stats.memory_hits += 1
        self.stats.hit_bytes += len(data)
        return data

    def _memory_put(self, key: str, data: bytes, recorded: str) -> None:
        if len(data) > self.memory_bytes:
            return
        self._memory_drop(key)
        self._memory[key] = (data, recorded)
        self.stats.memory_bytes += len(data)
        while self.stats.memory_bytes > self.memory_bytes:
            _, (old, _) = self._memory.popitem(last=False)
            self.stats.memory_bytes -= len(old)
            self.stats.memory_evicted += 1

    def _memory_drop(self, key: str) -> None:
        entry = self._memory.pop(key, None)
        if entry is not None:
            self.stats.memory_bytes -= len(entry[0])

    # -- disk ----------------------------------------------------------------------------------

    def _disk_usable(self) -> bool:
        return self.disk is not None and time.monotonic() >= self._disk_off_until

    def _disk_failed(self, op: str, key: str, exc: OSError) -> None:
        self.stats.disk_errors += 1
        self.last_disk_error = f"{op} {key}: {exc}"
        self._disk_off_until = time.monotonic() + DISK_RETRY_S
        log.warning(
            "cache.disk_failed",
            op=op,
            key=key,
            dir=str(self.disk_dir),
            error=str(exc),
            resting_s=DISK_RETRY_S,
        )

    async def _disk_get(self, key: str, checksum: str | None) -> tuple[bytes | None, bool]:
        """(the verified bytes from disk or None, whether a corrupt file was dropped)."""
        if self.disk is None or not self._disk_usable():
            return None, False
        try:
            found = await asyncio.to_thread(self.disk.read, key, checksum)
        except CorruptFileError as exc:
            self.stats.corrupt += 1
            log.warning("cache.corrupt", key=key, dir=str(self.disk_dir), why=str(exc))
            return None, True
        except OSError as exc:
            self._disk_failed("read", key, exc)
            return None, False
        if found is None:
            return None, False
        data, recorded = found
        self.stats.disk_hits += 1
        self.stats.hit_bytes += len(data)
        self._memory_put(key, data, recorded)
        return data, False


def _is_block(key: str, data: bytes) -> bool:
    """A block key names its size: bytes of another length are not that block."""
    try:
        _, _, size = parse_block_key(key)
    except ValueError:
        return True
    return len(data) == size


def is_block_key(key: str) -> bool:
    try:
        parse_block_key(key)
    except ValueError:
        return False
    return True


class CachedStore(StoreLayer):
    """Whole-object gets of block keys through a BlockCache; a range get of a cached block is
    sliced from it, of an uncached one passed through (fetching the whole block for a few
    bytes would cost more than it saves). Other keys pass through. A put or delete of a key
    drops it from the cache (a repaired block replaces a corrupt one under its key). Sits
    outside retry and metrics: a hit asks nothing of the bucket. Does not close the cache."""

    def __init__(self, inner: ObjectStore, cache: BlockCache) -> None:
        super().__init__(inner)
        self.cache = cache

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        if not is_block_key(key):
            return await self.inner.get(key, offset=offset, length=length)
        if offset == 0 and length is None:
            return await self.cache.get(key, lambda: self.inner.get(key))
        data = await self.cache.lookup(key)
        if data is None:
            return await self.inner.get(key, offset=offset, length=length)
        start, end = clip_range(len(data), offset, length)
        return data[start:end]

    async def put(self, key: str, data: bytes) -> ObjectMeta:
        meta = await self.inner.put(key, data)
        await self.cache.discard(key)
        return meta

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)
        await self.cache.discard(key)
