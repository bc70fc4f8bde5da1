"""`s3://bucket/prefix?endpoint=URL&region=R`: any S3 API (AWS, SeaweedFS, MinIO, Ceph RGW).

The only module that imports botocore. Its errors are translated here, once, into the objstore
error tree; botocore's own retries are switched off so the retry layer owns the policy (two retry
loops stacked multiply the wait and hide throttling from metrics).

Endpoint: `?endpoint=` or the standard `AWS_ENDPOINT_URL`; region: `?region=`, else the AWS
config chain; credentials: the AWS chain (env, profile via `?profile=`, instance role).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import exceptions as bex

from objstore.base import ObjectMeta, ObjectStore, backend_of
from objstore.errors import (
    InvalidURLError,
    NotFoundError,
    RateLimitedError,
    StoreError,
    UnavailableError,
    UnsupportedError,
)

DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 60.0
_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestThrottled",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
# The body arrived damaged (its x-amz-checksum-crc32 or Content-MD5 did not match): send again.
_DAMAGED_CODES = {"BadDigest", "XAmzContentChecksumMismatch", "InvalidDigest"}
# A CopyObject the mirror's endpoint cannot do: it does not see the source bucket, may not
# read it, or has no server-side copy at all. The copier then copies through this process.
_NO_SERVER_COPY_CODES = {"NoSuchBucket", "AccessDenied", "NotImplemented", "InvalidRequest"}
_KNOWN_PARAMS = {"endpoint", "region", "profile", "max_connections"}


def translate(exc: BaseException, *, op: str, key: str, url: str) -> StoreError:
    """One botocore/aiohttp exception -> one objstore error (with `temporary` set right)."""
    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = str(err.get("Message") or code or exc)
        if code == "NoSuchBucket":
            return NotFoundError(
                "bucket does not exist", op=op, key=key, url=url, hint="create the bucket first"
            )
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFoundError("no such key", op=op, key=key, url=url)
        if code in _DAMAGED_CODES:
            return UnavailableError(
                f"{code}: the body was damaged on the way", op=op, key=key, url=url
            )
        if code in _THROTTLE_CODES or status in (429, 503):
            return RateLimitedError(f"{code or status}: {message}", op=op, key=key, url=url)
        if status >= 500:
            return UnavailableError(f"{code or status}: {message}", op=op, key=key, url=url)
        hint = "check the credentials and bucket policy" if status == 403 else None
        return StoreError(f"{code or status}: {message}", op=op, key=key, url=url, hint=hint)
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return StoreError(
            "no S3 credentials found",
            op=op,
            key=key,
            url=url,
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ?profile=",
        )
    if isinstance(
        exc,
        bex.EndpointConnectionError
        | bex.ConnectionClosedError
        | bex.ReadTimeoutError
        | bex.ConnectTimeoutError
        | bex.ResponseStreamingError
        | aiohttp.ClientError
        | asyncio.TimeoutError
        | ConnectionError,
    ):
        return UnavailableError(f"{type(exc).__name__}: {exc}", op=op, key=key, url=url)
    return StoreError(f"{type(exc).__name__}: {exc}", op=op, key=key, url=url)


class S3Store:
    """One bucket (and optional key prefix) over one pooled aiobotocore client."""

    def __init__(
        self,
        url: str,
        bucket: str,
        prefix: str,
        *,
        endpoint: str | None,
        region: str | None,
        profile: str | None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.url = url
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.region = region
        self.profile = profile
        self.max_connections = max_connections
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        parts = urlsplit(url)
        if not parts.netloc:
            raise InvalidURLError("missing bucket name (s3://BUCKET/prefix)", url=url, op="open")
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(params) - _KNOWN_PARAMS
        if unknown:
            raise InvalidURLError(
                f"unknown parameter(s) {sorted(unknown)}; known: {sorted(_KNOWN_PARAMS)}",
                url=url,
                op="open",
            )
        prefix = parts.path.strip("/")
        try:
            max_conn = int(params.get("max_connections", DEFAULT_MAX_CONNECTIONS))
        except ValueError:
            raise InvalidURLError("max_connections must be an integer", url=url) from None
        return cls(
            url,
            parts.netloc,
            prefix + "/" if prefix else "",
            endpoint=params.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL"),
            region=params.get("region"),
            profile=params.get("profile"),
            max_connections=max_conn,
        )

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                session = get_session()
                if self.profile:
                    session.set_config_variable("profile", self.profile)
                config = AioConfig(
                    retries={"total_max_attempts": 1},
                    max_pool_connections=self.max_connections,
                    connect_timeout=DEFAULT_CONNECT_TIMEOUT_S,
                    read_timeout=DEFAULT_READ_TIMEOUT_S,
                    # botocore's flexible checksums (a CRC32 on every PUT and every GET's
                    # response) only when an operation requires one: every block is checked
                    # against its recorded xxh3 by whoever reads it (fallback/reader.py, the
                    # copier), and the CRC pass was a third of a copied read's CPU
                    # (docs/benchmarks/2026-12-02-mount.md).
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    # UNSIGNED-PAYLOAD: no SHA-256 of every body, on our side (14% of a bulk
                    # copy's CPU) nor on the server's. The body is still guarded in transit:
                    # each PUT carries its CRC32 (x-amz-checksum-crc32), which the server
                    # checks (a mismatch is BadDigest, retried); and every read checks xxh3.
                    s3={
                        **({"addressing_style": "path"} if self.endpoint else {}),
                        "payload_signing_enabled": False,
                    },
                )
                stack = contextlib.AsyncExitStack()
                self._client = await stack.enter_async_context(
                    session.create_client(
                        "s3",
                        endpoint_url=self.endpoint,
                        region_name=self.region
                        or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                        config=config,
                    )
                )
                self._stack = stack
        return self._client

    async def check(self) -> None:
        """Fail fast with a clear error if the bucket is missing or the endpoint unreachable."""
        client = await self._get_client()
        try:
            await client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            err = translate(exc, op="open", key="", url=self.url)
            if isinstance(err, NotFoundError):
                raise NotFoundError(
                    f"bucket {self.bucket!r} does not exist",
                    op="open",
                    url=self.url,
                    hint="create the bucket first",
                ) from exc
            raise err from exc

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"bad range offset={offset} length={length}")
        if length == 0:
            return b""
        client = await self._get_client()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.prefix + key}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        try:
            resp = await client.get_object(**kwargs)
            async with resp["Body"] as stream:
                data: bytes = await stream.read()
            return data
        except bex.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                await self.head(key)  # past the end of an existing object: empty, like a slice
                return b""
            raise translate(exc, op="get", key=key, url=self.url) from exc
        except Exception as exc:
            raise translate(exc, op="get", key=key, url=self.url) from exc

    async def head(self, key: str) -> ObjectMeta:
        client = await self._get_client()
        try:
            resp = await client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as exc:
            raise translate(exc, op="head", key=key, url=self.url) from exc
        mtime = resp.get("LastModified")
        return ObjectMeta(
            key,
            int(resp["ContentLength"]),
            str(resp.get("ETag", "")).strip('"'),
            mtime.timestamp() if mtime else 0.0,
        )

    async def put(self, key: str, data: bytes) -> ObjectMeta:
        client = await self._get_client()
        try:
            resp = await client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, ChecksumCRC32=crc32(data)
            )
        except Exception as exc:
            raise translate(exc, op="put", key=key, url=self.url) from exc
        return ObjectMeta(key, len(data), str(resp.get("ETag", "")).strip('"'))

    async def copy_from(self, source: ObjectStore, meta: ObjectMeta) -> ObjectMeta:
        """CopyObject on this bucket's endpoint out of the source's bucket, if it still has
        `meta.etag`. The endpoint must see the source bucket (one server, or S3 across regions
        with credentials that may read it); else UnsupportedError."""
        src = backend_of(source)
        if not isinstance(src, S3Store):
            raise UnsupportedError(
                f"server-side copy needs an s3:// source, not {source.url}", op="copy", url=self.url
            )
        client = await self._get_client()
        try:
            resp = await client.copy_object(
                Bucket=self.bucket,
                Key=self.prefix + meta.key,
                CopySource={"Bucket": src.bucket, "Key": src.prefix + meta.key},
                CopySourceIfMatch=f'"{meta.etag}"',
            )
        except bex.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NO_SERVER_COPY_CODES:
                raise UnsupportedError(
                    f"{code}: this endpoint cannot copy out of {src.url}",
                    op="copy",
                    key=meta.key,
                    url=self.url,
                    hint="the mirror's credentials must be able to read the source bucket",
                ) from exc
            if code == "PreconditionFailed":
                raise NotFoundError(
                    f"the source object no longer has etag {meta.etag}",
                    op="copy",
                    key=meta.key,
                    url=src.url,
                ) from exc
            raise translate(exc, op="copy", key=meta.key, url=self.url) from exc
        except Exception as exc:
            raise translate(exc, op="copy", key=meta.key, url=self.url) from exc
        etag = str(resp.get("CopyObjectResult", {}).get("ETag", "")).strip('"')
        return ObjectMeta(meta.key, meta.size, etag)

    async def delete(self, key: str) -> None:
        client = await self._get_client()
        try:
            await client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as exc:
            err = translate(exc, op="delete", key=key, url=self.url)
            if not isinstance(err, NotFoundError) or "bucket" in err.message:
                raise err from exc

    async def list(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[ObjectMeta]:
        client = await self._get_client()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if start_after:
            kwargs["StartAfter"] = self.prefix + start_after
        cut = len(self.prefix)
        try:
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(**kwargs):
                for item in page.get("Contents", ()):
                    mtime = item.get("LastModified")
                    yield ObjectMeta(
                        item["Key"][cut:],
                        int(item["Size"]),
                        str(item.get("ETag", "")).strip('"'),
                        mtime.timestamp() if mtime else 0.0,
                    )
        except Exception as exc:
            raise translate(exc, op="list", key=prefix, url=self.url) from exc

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def __repr__(self) -> str:
        return f"S3Store({self.url})"


def crc32(data: bytes) -> str:
    """The x-amz-checksum-crc32 header value: big-endian CRC32, base64."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
