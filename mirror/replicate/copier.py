"""Copy one block from the source bucket to the mirror bucket, verified, with a reason for
every failure. Used by the replicator's copy tasks and by `verify --repair`.

Blocks are immutable and keys never reused, so a copy is idempotent: copying twice (a lease
taken over, a repair) writes the same bytes to the same key.

With `server_side`, the mirror's endpoint copies the block out of the source bucket itself
(CopyObject): the bytes never pass through this process, which then only reads the copy back
inside the mirror region to check it against the recorded xxh3. An etag match proves only that
the copy equals the source object, not that the source object holds the bytes the changelog
recorded; a mismatch is deleted and the block copied the ordinary way, which tells a corrupt
source (SOURCE_CORRUPT) from a torn read. An endpoint that cannot do it (it does not see the
source bucket, may not read it) is asked once; then every copy goes through this process.
"""

from __future__ import annotations

import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from mirror.errors import MirrorError
from mirror.replicate.queue import (
    MIRROR_ERROR,
    MIRROR_UNAVAILABLE,
    SOURCE_CORRUPT,
    SOURCE_ERROR,
    SOURCE_MISSING,
    SOURCE_UNAVAILABLE,
    Claim,
)
from objstore import NotFoundError, ObjectStore, StoreError, TokenBucket, UnsupportedError
from objstore.base import single_part_etag
from objstore.checksum import checksum

log = structlog.get_logger(__name__)

SOURCE_READ_ATTEMPTS = 3  # a checksum mismatch may be a torn read: read again before failing


class CopyError(MirrorError):
    """One block could not be copied; `reason` is one of copyqueue's reason words."""

    def __init__(self, reason: str, message: str, *, permanent: bool = False) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message
        self.permanent = permanent


class _MismatchError(Exception):
    """The bytes read do not match the recorded checksum (retried: maybe a torn read)."""


class BlockCopier:
    """Copy one block source -> mirror with its checksum verified; errors come out as
    CopyError with the reason said. Shared by the replicator and `verify --repair`."""

    def __init__(
        self,
        source: ObjectStore,
        mirror: ObjectStore,
        *,
        server_side: bool = False,
        meter: TokenBucket | None = None,
    ) -> None:
        self.source = source
        self.mirror = mirror
        self.server_side = server_side
        self.meter = meter  # a server-side copy moves the bytes across the boundary too
        self.server_copies = 0  # blocks copied by the mirror's endpoint and verified

    async def is_present(self, block: Claim) -> bool:
        """The mirror bucket holds the block with the right bytes. HEAD first: a miss (the
        common case) costs one small local request; a hit is then read and verified, since
        neither the size nor the etag (not our checksum; not even MD5 for multipart) prove the
        bytes. Reading from the local mirror bucket is far cheaper than the cross-region copy."""
        try:
            meta = await self.mirror.head(block.key)
            if meta.size != block.size:
                return False
            data = await self.mirror.get(block.key)
        except NotFoundError:
            return False
        except StoreError as exc:
            raise _mirror_error(exc, "HEAD/GET in") from exc
        return len(data) == block.size and checksum(data) == block.checksum

    async def read_source(self, block: Claim) -> bytes:
        """The block's verified bytes from the source bucket. A mismatch is read again (a torn
        read or a flaky middlebox) up to SOURCE_READ_ATTEMPTS times, then fails for good."""
        got = ""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_MismatchError),
                stop=stop_after_attempt(SOURCE_READ_ATTEMPTS),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                reraise=True,
            ):
                with attempt:
                    data = await self.source.get(block.key)
                    digest = checksum(data)
                    if len(data) != block.size or digest != block.checksum:
                        got = f"{len(data)} bytes, {digest}"
                        raise _MismatchError(got)
                    return data
        except _MismatchError:
            raise CopyError(
                SOURCE_CORRUPT,
                f"{block.key} in the source bucket does not match its recorded checksum"
                f" (want {block.size} bytes, {block.checksum}; got {got}"
                f" on {SOURCE_READ_ATTEMPTS} reads)",
                permanent=True,
            ) from None
        except NotFoundError:
            raise CopyError(
                SOURCE_MISSING,
                f"{block.key} is not in the source bucket {self.source.url}"
                " (deleted by GC, or never uploaded)",
                permanent=True,
            ) from None
        except StoreError as exc:
            reason = SOURCE_UNAVAILABLE if exc.temporary else SOURCE_ERROR
            raise CopyError(reason, f"GET {block.key}: {exc}") from exc
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def copy(self, block: Claim, *, check_existing: bool = True) -> bool:
        """Make the mirror hold the block. Returns False if it was there already (nothing
        copied), True if copied. Idempotent. Raises CopyError."""
        if check_existing and await self.is_present(block):
            return False
        if self.server_side and await self._server_copy(block):
            self.server_copies += 1
            return True
        data = await self.read_source(block)
        try:
            await self.mirror.put(block.key, data)
        except StoreError as exc:
            raise _mirror_error(exc, "PUT to") from exc
        return True

    async def _server_copy(self, block: Claim) -> bool:
        """Copy by CopyObject and verify the copy by reading it back. False: not done (cannot,
        or the copy did not verify and was removed), copy through this process instead."""
        try:
            meta = await self.source.head(block.key)
        except NotFoundError:
            return False  # the ordinary path says SOURCE_MISSING, with its reason
        except StoreError as exc:
            reason = SOURCE_UNAVAILABLE if exc.temporary else SOURCE_ERROR
            raise CopyError(reason, f"HEAD {block.key}: {exc}") from exc
        if meta.size != block.size or not single_part_etag(meta.etag):
            return False
        if self.meter is not None:
            await self.meter.take(block.size)
        try:
            copied = await self.mirror.copy_from(self.source, meta)
            if copied.etag == meta.etag:
                data = await self.mirror.get(block.key)
                if len(data) == block.size and checksum(data) == block.checksum:
                    return True
            log.warning("copier.server_copy_mismatch", key=block.key, etag=meta.etag)
            await self.mirror.delete(block.key)
        except UnsupportedError as exc:
            self.server_side = False
            log.warning("copier.server_copy_unsupported", error=str(exc))
        except NotFoundError:
            pass  # gone or replaced since the HEAD: the ordinary path finds out which
        except StoreError as exc:
            raise _mirror_error(exc, "CopyObject in") from exc
        return False


def _mirror_error(exc: StoreError, what: str) -> CopyError:
    reason = MIRROR_UNAVAILABLE if exc.temporary else MIRROR_ERROR
    return CopyError(reason, f"{what} the mirror bucket: {exc}")
