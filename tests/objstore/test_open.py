"""Bad bucket URLs give a clear error naming the URL, quickly, never an endless retry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from objstore import NotFoundError, StoreError, UnavailableError, open_store
from objstore.errors import InvalidURLError
from tests.servers.ports import free_port


@pytest.mark.parametrize(
    "url",
    ["ftp://host/x", "bucket-without-scheme", "s3:///prefix-only", "file://remotehost/x"],
)
async def test_bad_urls_name_the_url(url: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        await open_store(url)
    assert url in str(info.value)


async def test_unknown_s3_parameter_is_refused() -> None:
    with pytest.raises(InvalidURLError, match="endpoitn"):
        await open_store("s3://b?endpoitn=http://x")


async def test_missing_bucket_names_the_url(seaweed: object, s3_url: str) -> None:
    endpoint = s3_url.split("?", 1)[1]
    url = f"s3://no-such-bucket-mirrorfs?{endpoint}"
    with pytest.raises(NotFoundError) as info:
        await open_store(url)
    assert "no-such-bucket-mirrorfs" in str(info.value)
    assert url in str(info.value)


async def test_unreachable_endpoint_fails_fast_naming_the_url() -> None:
    url = f"s3://b?endpoint=http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(UnavailableError) as info:
        await open_store(url)
    assert url in str(info.value)
    assert time.monotonic() - start < 30


async def test_missing_local_bucket_is_created(tmp_path: Path) -> None:
    store = await open_store((tmp_path / "new").as_uri())
    await store.put("k", b"v")
    assert (tmp_path / "new" / "k").read_bytes() == b"v"


async def test_local_keys_cannot_escape_the_bucket(tmp_path: Path) -> None:
    store = await open_store((tmp_path / "b").as_uri())
    for key in ("../escape", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(StoreError):
            await store.put(key, b"x")
    assert not (tmp_path / "escape").exists()
