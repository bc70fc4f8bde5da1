"""RetryLayer: exponential backoff with full jitter on temporary errors, nothing else.

It asks the error (`exc.temporary`), never a list of classes: throttling, 5xx and connection
failures are temporary; not-found and other 4xx are answers and return at once. Timeouts live
inside each attempt (the backend's), so one hung call cannot eat the whole retry budget.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from objstore.base import ObjectMeta, ObjectStore, StoreLayer
from objstore.errors import StoreError

T = TypeVar("T")
log = structlog.get_logger(__name__)

DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_MAX_DELAY_S = 60.0
DEFAULT_BASE_WAIT_S = 0.05
DEFAULT_MAX_WAIT_S = 5.0


def is_temporary(exc: BaseException) -> bool:
    return isinstance(exc, StoreError) and exc.temporary


class RetryLayer(StoreLayer):
    """Retries temporary failures of every verb; `list` restarts after the last key it yielded."""

    def __init__(
        self,
        inner: ObjectStore,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
        base_wait_s: float = DEFAULT_BASE_WAIT_S,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
    ) -> None:
        super().__init__(inner)
        self.max_attempts = max_attempts
        self.max_delay_s = max_delay_s
        self.base_wait_s = base_wait_s
        self.max_wait_s = max_wait_s
        self.retries = 0  # attempts beyond the first, for tests and status

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(is_temporary),
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_delay_s),
            wait=wait_random_exponential(multiplier=self.base_wait_s, max=self.max_wait_s),
            before_sleep=self._before_sleep,
            reraise=True,
        )

    def _before_sleep(self, state: RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.info(
            "objstore.retry",
            url=self.url,
            attempt=state.attempt_number,
            error=str(exc),
            wait_s=round(state.upcoming_sleep, 3),
        )

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async for attempt in self._retrying():
            with attempt:
                return await fn()
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        return await self._call(lambda: self.inner.get(key, offset=offset, length=length))

    async def head(self, key: str) -> ObjectMeta:
        return await self._call(lambda: self.inner.head(key))

    async def put(self, key: str, data: bytes) -> ObjectMeta:
        return await self._call(lambda: self.inner.put(key, data))

    async def copy_from(self, source: ObjectStore, meta: ObjectMeta) -> ObjectMeta:
        return await self._call(lambda: self.inner.copy_from(source, meta))

    async def delete(self, key: str) -> None:
        await self._call(lambda: self.inner.delete(key))

    async def list(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[ObjectMeta]:
        last = start_after
        async for attempt in self._retrying():
            with attempt:
                async for meta in self.inner.list(prefix, start_after=last):
                    last = meta.key
                    yield meta
                return
