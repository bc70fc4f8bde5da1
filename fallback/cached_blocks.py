"""A BlockSource that asks the local block cache (objstore/cache.py) first and the region's
BlockSource only on a miss: a cache hit costs no mirror or source request and no claim in the
region's database.

The cache's outcome is counted into the region's ReadCounters (cache_hits/_bytes: served by
the cache, a get that joined another's fetch included; cache_misses/_bytes: asked of the
region; cache_corrupt: disk copies that failed their check and were fetched again), so in a
mirror region they reach its sums with the other read counts. The source region has no
counters of its own; a fresh ReadCounters keeps them for the process (`mirrorfs warmup`
prints them).
"""

from __future__ import annotations

from fallback.blocks import BlockSource
from fallback.client import FsClient
from fallback.fetch import FallbackBlocks, ReadCounters
from fallback.reader import Piece
from objstore.cache import FETCH, BlockCache
from objstore.keys import block_key


class CachedBlocks:
    """fallback's BlockSource over `inner`, through `cache` (see the module docstring). Closing
    it closes `inner`, not the cache: one cache may serve several clients."""

    def __init__(self, inner: BlockSource, cache: BlockCache, counters: ReadCounters) -> None:
        self.inner = inner
        self.cache = cache
        self.counters = counters
        self._reporting = False

    async def get(self, piece: Piece, state: str | None) -> bytes:
        assert piece.slice_id is not None
        self._start_reporting()
        key = block_key(piece.slice_id, piece.index, piece.block_size)
        read = await self.cache.get_traced(
            key, lambda: self.inner.get(piece, state), checksum=piece.checksum or None
        )
        c = self.counters
        if read.corrupt:
            c.cache_corrupt += 1
        if read.source == FETCH:
            c.cache_misses += 1
            c.cache_miss_bytes += len(read.data)
        else:
            c.cache_hits += 1
            c.cache_hit_bytes += len(read.data)
        return read.data

    def _start_reporting(self) -> None:
        """A mirror region's counters are flushed by FallbackBlocks' timer, which it starts on
        its first get: a client whose reads all hit the cache would otherwise report only
        when it closes."""
        if not self._reporting and isinstance(self.inner, FallbackBlocks):
            self._reporting = True
            self.inner.start_reporting()

    async def aclose(self) -> None:
        await self.inner.aclose()


def use_cache(fs: FsClient, cache: BlockCache) -> CachedBlocks:
    """Put `cache` in front of the client's blocks, counting into the region's ReadCounters
    (a mirror's FallbackBlocks), else into fresh ones; the CachedBlocks now in `fs.blocks`.
    Idempotent for one cache: a client already reading through it is left as it is."""
    if isinstance(fs.blocks, CachedBlocks):
        if fs.blocks.cache is cache:
            return fs.blocks
        raise ValueError("this client already reads through another block cache")
    counters = fs.blocks.counters if isinstance(fs.blocks, FallbackBlocks) else ReadCounters()
    cached = CachedBlocks(fs.blocks, cache, counters)
    fs.blocks = cached
    return cached
