"""LoggingLayer: one structlog event per failed call, and per call at debug level.

Successful calls are logged at debug only: a model load does thousands of GETs a second.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import structlog

from objstore.base import ObjectMeta, ObjectStore, StoreLayer
from objstore.errors import NotFoundError

log = structlog.get_logger("objstore")


class LoggingLayer(StoreLayer):
    def __init__(self, inner: ObjectStore, *, name: str = "store") -> None:
        super().__init__(inner)
        self.name = name

    def _failed(self, op: str, key: str, start: float, exc: BaseException) -> None:
        level = log.debug if isinstance(exc, NotFoundError) else log.warning
        level(
            "objstore.failed",
            store=self.name,
            op=op,
            key=key,
            url=self.url,
            error=str(exc),
            elapsed_s=round(time.perf_counter() - start, 4),
        )

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        start = time.perf_counter()
        try:
            return await self.inner.get(key, offset=offset, length=length)
        except Exception as exc:
            self._failed("get", key, start, exc)
            raise

    async def head(self, key: str) -> ObjectMeta:
        start = time.perf_counter()
        try:
            return await self.inner.head(key)
        except Exception as exc:
            self._failed("head", key, start, exc)
            raise

    async def put(self, key: str, data: bytes) -> ObjectMeta:
        start = time.perf_counter()
        try:
            return await self.inner.put(key, data)
        except Exception as exc:
            self._failed("put", key, start, exc)
            raise

    async def copy_from(self, source: ObjectStore, meta: ObjectMeta) -> ObjectMeta:
        start = time.perf_counter()
        try:
            return await self.inner.copy_from(source, meta)
        except Exception as exc:
            self._failed("copy", meta.key, start, exc)
            raise

    async def delete(self, key: str) -> None:
        start = time.perf_counter()
        try:
            await self.inner.delete(key)
        except Exception as exc:
            self._failed("delete", key, start, exc)
            raise

    async def list(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[ObjectMeta]:
        start = time.perf_counter()
        try:
            async for meta in self.inner.list(prefix, start_after=start_after):
                yield meta
        except Exception as exc:
            self._failed("list", prefix, start, exc)
            raise
