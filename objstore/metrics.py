"""MetricsLayer: Prometheus counters and latency histograms per bucket and verb.

Labels are the store's name (a role like "source" or "mirror", not the URL, to keep cardinality
bounded) and the verb. Bytes are counted on the way in and out so throughput is a rate() away.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from objstore.base import ObjectMeta, ObjectStore, StoreLayer
from objstore.errors import NotFoundError

_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class StoreMetrics:
    """The metric families, created once per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "mirrorfs_objstore_requests",
            "Object store requests by outcome (ok, not_found, error)",
            ["store", "op", "outcome"],
            registry=registry,
        )
        self.bytes = Counter(
            "mirrorfs_objstore_bytes",
            "Bytes read (get) or written (put)",
            ["store", "op"],
            registry=registry,
        )
        self.latency = Histogram(
            "mirrorfs_objstore_latency_seconds",
            "Latency of one object store call, retries included when outside the retry layer",
            ["store", "op"],
            buckets=_BUCKETS_S,
            registry=registry,
        )


_METRICS: dict[int, StoreMetrics] = {}


def metrics_for(registry: CollectorRegistry) -> StoreMetrics:
    found = _METRICS.get(id(registry))
    if found is None:
        found = _METRICS[id(registry)] = StoreMetrics(registry)
    return found


class MetricsLayer(StoreLayer):
    def __init__(
        self, inner: ObjectStore, *, name: str = "store", registry: CollectorRegistry = REGISTRY
    ) -> None:
        super().__init__(inner)
        self.name = name
        self.m = metrics_for(registry)

    def _done(self, op: str, start: float, exc: BaseException | None, nbytes: int = 0) -> None:
        if exc is None:
            outcome = "ok"
        else:
            outcome = "not_found" if isinstance(exc, NotFoundError) else "error"
        self.m.requests.labels(self.name, op, outcome).inc()
        self.m.latency.labels(self.name, op).observe(time.perf_counter() - start)
        if nbytes:
            self.m.bytes.labels(self.name, op).inc(nbytes)

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        start = time.perf_counter()
        try:
            data = await self.inner.get(key, offset=offset, length=length)
        except BaseException as exc:
            self._done("get", start, exc)
            raise
        self._done("get", start, None, len(data))
        return data

    async def head(self, key: str) -> ObjectMeta:
        start = time.perf_counter()
        try:
            meta = await self.inner.head(key)
        except BaseException as exc:
            self._done("head", start, exc)
            raise
        self._done("head", start, None)
        return meta

    async def put(self, key: str, data: bytes) -> ObjectMeta:
        start = time.perf_counter()
        try:
            meta = await self.inner.put(key, data)
        except BaseException as exc:
            self._done("put", start, exc)
            raise
        self._done("put", start, None, len(data))
        return meta

    async def copy_from(self, source: ObjectStore, meta: ObjectMeta) -> ObjectMeta:
        start = time.perf_counter()
        try:
            copied = await self.inner.copy_from(source, meta)
        except BaseException as exc:
            self._done("copy", start, exc)
            raise
        self._done("copy", start, None, meta.size)
        return copied

    async def delete(self, key: str) -> None:
        start = time.perf_counter()
        try:
            await self.inner.delete(key)
        except BaseException as exc:
            self._done("delete", start, exc)
            raise
        self._done("delete", start, None)

    async def list(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[ObjectMeta]:
        start = time.perf_counter()
        try:
            async for meta in self.inner.list(prefix, start_after=start_after):
                yield meta
        except BaseException as exc:
            self._done("list", start, exc)
            raise
        self._done("list", start, None)
