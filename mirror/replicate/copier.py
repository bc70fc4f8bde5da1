"""Copy one block from the source bucket to the mirror bucket, verified, with a reason for
every failure. Used by the replicator's copy tasks and by `verify --repair`.

Blocks are immutable and keys never reused, so a copy is idempotent: copying twice (a lease
taken over, a repair) writes the same bytes to the same key.
"""

from __future__ import annotations

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
from objstore import NotFoundError, ObjectStore, StoreError
from objstore.checksum import checksum

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

    def __init__(self, source: ObjectStore, mirror: ObjectStore) -> None:
        self.source = source
        self.mirror = mirror

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
        data = await self.read_source(block)
        try:
            await self.mirror.put(block.key, data)
        except StoreError as exc:
            raise _mirror_error(exc, "PUT to") from exc
        return True


def _mirror_error(exc: StoreError, what: str) -> CopyError:
    reason = MIRROR_UNAVAILABLE if exc.temporary else MIRROR_ERROR
    return CopyError(reason, f"{what} the mirror bucket: {exc}")
