"""Bucket errors, translated once in each backend so layers above ask the error, not botocore.

`temporary` tells the retry layer whether trying again can help; `hint` tells a person what to do.
"""

from __future__ import annotations


class StoreError(Exception):
    """A bucket operation failed. `op` and `key` say which; `url` names the bucket."""

    temporary = False

    def __init__(
        self,
        message: str,
        *,
        op: str = "",
        key: str = "",
        url: str = "",
        hint: str | None = None,
        temporary: bool | None = None,
    ) -> None:
        self.message = message
        self.op = op
        self.key = key
        self.url = url
        self.hint = hint
        if temporary is not None:
            self.temporary = temporary
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = " ".join(p for p in (self.op, self.key) if p)
        bucket = f" in {self.url}" if self.url else ""
        return f"{where}{bucket}: {self.message}" if where or bucket else self.message


class NotFoundError(StoreError, FileNotFoundError):
    """The key (or the bucket) does not exist. Never retried: a miss is an answer."""


class RateLimitedError(StoreError):
    """The service asked us to slow down (HTTP 429/503 SlowDown)."""

    temporary = True


class UnavailableError(StoreError):
    """The service failed or could not be reached (5xx, connection refused, timeout)."""

    temporary = True


class ChecksumError(StoreError):
    """An object's bytes do not match the checksum recorded for them."""


class UnsupportedError(StoreError):
    """The store cannot do this verb for these arguments (a server-side copy between buckets
    that are not on one S3 endpoint). Callers take the general path instead."""


class InvalidURLError(StoreError, ValueError):
    """A bucket URL that cannot be opened: unknown scheme, missing bucket name, bad parameter."""
