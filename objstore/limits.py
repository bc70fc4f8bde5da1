"""Layers that bound what one process asks of a bucket: bytes per second and requests in flight.

Both sit outside the retry layer, so a retried request waits for its slot (and pays for its
bytes) once, not once per attempt. They are shared by every caller holding the layered store:
a cap of 100 MB/s on a replicator is 100 MB/s for its whole copy pool.
"""

from __future__ import annotations

import asyncio
import time

from objstore.base import ObjectMeta, ObjectStore, StoreLayer


class TokenBucket:
    """A rate shared by many tasks: `take(n)` returns once n bytes may be sent.

    Waiters queue on a lock, so they are served in order and the rate holds however many
    tasks share it; one take may exceed the burst (a 4 MiB block under a 1 MB/s cap) and is
    paid back by the waits that follow it.
    """

    def __init__(self, rate_bytes_per_s: float, burst_bytes: float | None = None) -> None:
        if rate_bytes_per_s <= 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s, got {rate_bytes_per_s}")
        self.rate = rate_bytes_per_s
        self.burst = burst_bytes if burst_bytes is not None else rate_bytes_per_s
        self._tokens = self.burst
        self._at = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= n
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)


class BandwidthLayer(StoreLayer):
    """Caps the bytes moved by get and put. A get pays after it returns (its size is known only
    then), so a burst may overshoot by one object; the rate over any longer span holds."""

    def __init__(self, inner: ObjectStore, bucket: TokenBucket) -> None:
        super().__init__(inner)
        self.bucket = bucket

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        data = await self.inner.get(key, offset=offset, length=length)
        await self.bucket.take(len(data))
        return data

    async def put(self, key: str, data: bytes) -> ObjectMeta:
        await self.bucket.take(len(data))
        return await self.inner.put(key, data)


class ConcurrencyLayer(StoreLayer):
    """At most `max_inflight` get/head/put/delete requests at once (listing is not bounded: it
    is one paginated request at a time already)."""

    def __init__(self, inner: ObjectStore, max_inflight: int) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        super().__init__(inner)
        self.max_inflight = max_inflight
        self._slots = asyncio.Semaphore(max_inflight)

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        async with self._slots:
            return await self.inner.get(key, offset=offset, length=length)

    async def head(self, key: str) -> ObjectMeta:
        async with self._slots:
            return await self.inner.head(key)

    async def put(self, key: str, data: bytes) -> ObjectMeta:
        async with self._slots:
            return await self.inner.put(key, data)

    async def copy_from(self, source: ObjectStore, meta: ObjectMeta) -> ObjectMeta:
        async with self._slots:
            return await self.inner.copy_from(source, meta)

    async def delete(self, key: str) -> None:
        async with self._slots:
            await self.inner.delete(key)
