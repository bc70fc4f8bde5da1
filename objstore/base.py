"""The object-store contract every backend and layer honours.

Keys are flat strings ("a/b/c" is one key, no directories). Blocks are immutable and keys are
never reused for different bytes, so every verb is idempotent and safe to retry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    key: str
    size: int
    etag: str = ""
    mtime: float = 0.0


@runtime_checkable
class ObjectStore(Protocol):
    """Flat key -> bytes. Blocks are immutable, so every verb is idempotent."""

    url: str

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes [offset, offset+length) of the object, clipped at its end like a slice.

        An offset at or past the end returns b"". Raises NotFoundError if the key is absent.
        """
        ...

    async def head(self, key: str) -> ObjectMeta:
        """Size and etag. Raises NotFoundError if the key is absent."""
        ...

    async def put(self, key: str, data: bytes) -> ObjectMeta:
        """Store the object whole; readers never see a partial object. Overwrite is allowed."""
        ...

    async def copy_from(self, source: ObjectStore, meta: ObjectMeta) -> ObjectMeta:
        """Have this store's server copy `meta.key` out of `source` itself (S3 CopyObject), the
        bytes never passing through this process, and only while the source object still has
        the etag `meta.etag`. Returns the new object's meta with the etag its server computed.

        Raises UnsupportedError when the two buckets are not on one server that can do it, and
        NotFoundError when the source object is gone (or no longer has that etag).
        """
        ...

    async def delete(self, key: str) -> None:
        """Deleting a missing key is not an error."""
        ...

    def list(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[ObjectMeta]:
        """Keys starting with `prefix` and greater than `start_after`, in byte order.

        Caveat: SeaweedFS orders keys by path component ("a/b" before "a-c"); for keys of one
        shape, such as block keys, that is the same order.
        """
        ...

    async def aclose(self) -> None:
        """Release connections. Idempotent."""
        ...


class StoreLayer:
    """A pass-through wrapper: a layer subclasses it and overrides only the verbs it changes."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        return await self.inner.get(key, offset=offset, length=length)

    async def head(self, key: str) -> ObjectMeta:
        return await self.inner.head(key)

    async def put(self, key: str, data: bytes) -> ObjectMeta:
        return await self.inner.put(key, data)

    async def copy_from(self, source: ObjectStore, meta: ObjectMeta) -> ObjectMeta:
        return await self.inner.copy_from(source, meta)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    def list(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[ObjectMeta]:
        return self.inner.list(prefix, start_after=start_after)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


def backend_of(store: ObjectStore) -> ObjectStore:
    """The backend under all of a store's layers (a server-side copy needs the source's bucket
    and endpoint, which only the backend knows)."""
    while isinstance(store, StoreLayer):
        store = store.inner
    return store


def single_part_etag(etag: str) -> bool:
    """An S3 etag that is the MD5 of the object's bytes (a multipart upload's ends in -N)."""
    return len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower())


async def copy_object(src: ObjectStore, dst: ObjectStore, key: str) -> ObjectMeta:
    """Copy one object between stores (GET then PUT). Idempotent for immutable keys."""
    data = await src.get(key)
    return await dst.put(key, data)


def clip_range(size: int, offset: int, length: int | None) -> tuple[int, int]:
    """The [start, end) a range read returns from an object of `size` bytes."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"bad range offset={offset} length={length}")
    start = min(offset, size)
    end = size if length is None else min(size, offset + length)
    return start, max(start, end)
