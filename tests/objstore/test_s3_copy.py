"""What S3Store does on the wire, against a real SeaweedFS: an upload damaged on the way is
refused by the server (the CRC32 every PUT carries) and sent again, never stored damaged; and a
server-side copy (CopyObject) copies only the object it was told of, or says it cannot."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from objstore import NotFoundError, ObjectMeta, ObjectStore, UnsupportedError, open_store
from objstore.local import LocalStore
from objstore.retry import RetryLayer
from objstore.s3 import S3Store
from tests.conftest import unique_name
from tests.servers.faultproxy import FaultProxy
from tests.servers.seaweed import SeaweedServer

KEY = "blocks/00/1-0"


@pytest.fixture
async def store(s3_url: str) -> AsyncIterator[ObjectStore]:
    s = await open_store(s3_url, name="test")
    yield s
    await s.aclose()


@pytest.fixture
def other_bucket(seaweed: SeaweedServer) -> AsyncIterator[str]:
    name = unique_name("copy")
    seaweed.create_bucket(name)
    yield name
    seaweed.delete_bucket(name)


async def test_an_upload_damaged_on_the_way_is_refused_and_sent_again(
    fault_proxy: FaultProxy, s3_bucket: str, store: ObjectStore
) -> None:
    backend = S3Store.from_url(f"s3://{s3_bucket}?endpoint={fault_proxy.url}")
    retrying = RetryLayer(backend, base_wait_s=0.01)
    data = os.urandom(256 * 1024)
    fault_proxy.corrupt_next_request(1, at_byte=1000, path_prefix=f"/{s3_bucket}/")
    try:
        await retrying.put(KEY, data)
    finally:
        await retrying.aclose()
    assert fault_proxy.stats().faults_injected == 1, "the body was damaged once"
    assert retrying.retries == 1, "the server refused the damaged body; the retry sent it again"
    assert await store.get(KEY) == data, "what is stored is what was sent, not the damaged body"


async def test_server_side_copy_copies_the_object_it_was_told_of(
    seaweed: SeaweedServer, store: ObjectStore, other_bucket: str
) -> None:
    data = os.urandom(100_000)
    meta = await store.head((await store.put(KEY, data)).key)
    mirror = await open_store(f"s3://{other_bucket}?endpoint={seaweed.endpoint}", name="mirror")
    try:
        copied = await mirror.copy_from(store, meta)
        assert copied.etag == meta.etag and copied.size == len(data)
        assert await mirror.get(KEY) == data

        # The source object replaced since the HEAD: the copy is refused, nothing written.
        await store.put(KEY, os.urandom(100_000))
        await mirror.delete(KEY)
        with pytest.raises(NotFoundError, match="no longer has etag"):
            await mirror.copy_from(store, meta)
        with pytest.raises(NotFoundError):
            await mirror.head(KEY)
        gone = ObjectMeta("blocks/00/3-0", 10, meta.etag)
        with pytest.raises(NotFoundError):
            await mirror.copy_from(store, gone)
    finally:
        await mirror.aclose()


async def test_server_side_copy_that_cannot_be_done_says_so(
    store: ObjectStore,
    seaweed_factory: Callable[[], SeaweedServer],
    tmp_path: Path,
) -> None:
    meta = await store.put(KEY, b"x" * 1000)
    meta = await store.head(KEY)
    other = seaweed_factory()  # another cluster: it does not see the source's bucket
    name = unique_name("elsewhere")
    other.create_bucket(name)
    elsewhere = await open_store(f"s3://{name}?endpoint={other.endpoint}", name="elsewhere")
    local = LocalStore(tmp_path / "bucket", fsync=False)
    try:
        with pytest.raises(UnsupportedError, match="cannot copy out of"):
            await elsewhere.copy_from(store, meta)
        with pytest.raises(UnsupportedError, match="s3:// source"):
            await elsewhere.copy_from(local, meta)
        with pytest.raises(UnsupportedError):
            await local.copy_from(store, meta)
    finally:
        await elsewhere.aclose()
        other.delete_bucket(name)
