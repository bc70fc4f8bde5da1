"""Open a bucket by URL: pick the backend by scheme (imported only when used) and layer it.

The default stack, outermost first, is Logging -> Metrics -> Retry -> backend: metrics see one
call however many retries it took (retries are counted by the retry layer itself) and a failure
is logged once, after the retries gave up.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from prometheus_client import REGISTRY, CollectorRegistry

from objstore.base import ObjectStore
from objstore.errors import InvalidURLError, StoreError
from objstore.logs import LoggingLayer
from objstore.metrics import MetricsLayer
from objstore.retry import RetryLayer

SCHEMES = ("file", "s3")
OPEN_CHECK_ATTEMPTS = 3


def open_backend(url: str) -> ObjectStore:
    """The bare backend for `url`, no layers. Raises InvalidURLError naming the URL."""
    scheme = urlsplit(url).scheme
    if scheme == "file":
        from objstore.local import LocalStore

        return LocalStore.from_url(url)
    if scheme == "s3":
        from objstore.s3 import S3Store

        return S3Store.from_url(url)
    raise InvalidURLError(
        f"unknown scheme {scheme!r}; use one of {', '.join(s + '://' for s in SCHEMES)}",
        url=url,
        op="open",
    )


async def open_store(
    url: str,
    *,
    name: str = "store",
    retry: RetryLayer | None = None,
    registry: CollectorRegistry = REGISTRY,
    check: bool = True,
    max_attempts: int | None = None,
) -> ObjectStore:
    """A layered store for `url`; with `check`, fails now if the bucket is missing or unreachable.

    The check is retried a few times only, so a wrong endpoint gives a clear error in seconds
    rather than a silent minute of backoff.
    """
    backend = open_backend(url)
    if check:
        probe = RetryLayer(backend, max_attempts=OPEN_CHECK_ATTEMPTS, max_delay_s=5.0)
        checker = getattr(backend, "check", None)
        try:
            if checker is not None:
                await probe._call(checker)
        except StoreError:
            await backend.aclose()
            raise
    retrying = RetryLayer(backend, max_attempts=max_attempts or 8) if retry is None else retry
    return LoggingLayer(MetricsLayer(retrying, name=name, registry=registry), name=name)
