"""The ObjectStore contract, the same assertions for every backend."""

from __future__ import annotations

import asyncio
import os

import pytest

from objstore import NotFoundError, ObjectStore
from objstore.checksum import checksum
from objstore.keys import block_key


async def keys_of(store: ObjectStore, prefix: str = "", start_after: str = "") -> list[str]:
    return [m.key async for m in store.list(prefix, start_after=start_after)]


async def test_put_get_head_roundtrip(store: ObjectStore) -> None:
    data = os.urandom(1000)
    meta = await store.put("blocks/aa/bb/1_0_1000", data)
    assert meta.size == 1000
    assert await store.get("blocks/aa/bb/1_0_1000") == data
    assert (await store.head("blocks/aa/bb/1_0_1000")).size == 1000


async def test_missing_key_is_not_found_and_a_file_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFoundError) as info:
        await store.get("nope/missing")
    assert isinstance(info.value, FileNotFoundError)
    assert "nope/missing" in str(info.value)
    with pytest.raises(NotFoundError):
        await store.head("nope/missing")
    with pytest.raises(NotFoundError):
        await store.get("nope/missing", offset=10, length=5)


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, 1, slice(0, 1)),
        (0, None, slice(0, 100)),
        (99, 1, slice(99, 100)),
        (99, None, slice(99, 100)),
        (50, 1000, slice(50, 100)),
        (100, None, slice(100, 100)),
        (100, 10, slice(100, 100)),
        (250, 10, slice(250, 250)),
        (10, 0, slice(10, 10)),
        (0, 100, slice(0, 100)),
    ],
)
async def test_range_reads_at_edges(
    store: ObjectStore, offset: int, length: int | None, expected: slice
) -> None:
    data = bytes(range(100))
    await store.put("r/obj", data)
    assert await store.get("r/obj", offset=offset, length=length) == data[expected]


async def test_negative_range_is_refused(store: ObjectStore) -> None:
    await store.put("r/neg", b"x")
    with pytest.raises(ValueError):
        await store.get("r/neg", offset=-1)


async def test_overwrite_identical_block_is_idempotent(store: ObjectStore) -> None:
    data = os.urandom(4096)
    await store.put("blocks/x/y/7_0_4096", data)
    await store.put("blocks/x/y/7_0_4096", data)
    assert await store.get("blocks/x/y/7_0_4096") == data
    assert await keys_of(store, "blocks/") == ["blocks/x/y/7_0_4096"]


async def test_delete_is_idempotent(store: ObjectStore) -> None:
    await store.put("d/k", b"1")
    await store.delete("d/k")
    await store.delete("d/k")
    with pytest.raises(NotFoundError):
        await store.head("d/k")
    assert await keys_of(store, "d/") == []


async def test_listing_filters_by_prefix_and_start_after(store: ObjectStore) -> None:
    keys = ["a/b", "a-c", "a/c/d", "b", "a/c/e", "ab"]
    for k in keys:
        await store.put(k, k.encode())
    listed = await keys_of(store)
    assert sorted(listed) == sorted(keys)
    if store.url.startswith("file:"):
        assert listed == sorted(keys, key=str.encode)  # strict byte order, like AWS S3
    assert await keys_of(store, "a/") == ["a/b", "a/c/d", "a/c/e"]
    assert await keys_of(store, "a/c") == ["a/c/d", "a/c/e"]
    assert await keys_of(store, "a/", start_after="a/b") == ["a/c/d", "a/c/e"]
    assert await keys_of(store, "zzz") == []
    sizes = {m.key: m.size async for m in store.list()}
    assert sizes == {k: len(k) for k in keys}


async def test_block_keys_list_in_byte_order(store: ObjectStore) -> None:
    """Keys of one shape (our block layout) list in byte order on every backend, so a listing
    can be resumed with start_after. (SeaweedFS orders mixed shapes by path component.)"""
    keys = [block_key(sid, i, 10) for sid in (5, 77, 1234, 99999) for i in (0, 1, 10)]
    for k in keys:
        await store.put(k, b"0123456789")
    expected = sorted(keys, key=str.encode)
    assert await keys_of(store, "blocks/") == expected
    assert await keys_of(store, "blocks/", start_after=expected[4]) == expected[5:]


async def test_listing_pages_past_a_thousand_keys(store: ObjectStore) -> None:
    sem = asyncio.Semaphore(32)

    async def put(i: int) -> None:
        async with sem:
            await store.put(f"p/{i:05d}", b"")

    await asyncio.gather(*(put(i) for i in range(1100)))
    listed = await keys_of(store, "p/")
    assert listed == [f"p/{i:05d}" for i in range(1100)]


async def test_concurrent_puts(store: ObjectStore) -> None:
    blobs = {f"c/{i}": os.urandom(64 * 1024 + i) for i in range(32)}
    same = os.urandom(10_000)
    await asyncio.gather(
        *(store.put(k, v) for k, v in blobs.items()),
        *(store.put("c/same", same) for _ in range(8)),
    )
    for k, v in blobs.items():
        assert checksum(await store.get(k)) == checksum(v)
    assert await store.get("c/same") == same


async def test_large_object(store: ObjectStore) -> None:
    data = os.urandom(64 * 1024 * 1024 + 3)
    await store.put("big/obj", data)
    assert (await store.head("big/obj")).size == len(data)
    got = await store.get("big/obj")
    assert checksum(got) == checksum(data)
    tail = await store.get("big/obj", offset=len(data) - 10, length=100)
    assert tail == data[-10:]
