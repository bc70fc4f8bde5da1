"""Writing and reading files through the client: blocks first, one commit, verified reads."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fallback.client import FsClient
from objstore import open_store
from objstore.errors import ChecksumError
from objstore.keys import BLOCK_PREFIX
from tests.changelog.cluster import SourceCluster
from volume.config import load_config
from volume.inode import CHUNK_SIZE


@pytest.fixture(params=["file", "s3"])
async def fs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FsClient]:
    bucket = None if request.param == "file" else request.getfixturevalue("s3_url")
    cluster = SourceCluster(tmp_path / "vol", nodes=1, bucket=bucket)
    cluster.start_all()
    try:
        await cluster.wait_leader()
        client = await FsClient.for_source(load_config(cluster.config_path), uid=0, gid=0)
        async with client:
            yield client
    finally:
        cluster.kill_all()


async def read_all(fs: FsClient, path: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([c async for c in fs.read(path, offset=offset, length=length)])


async def test_multi_chunk_file_roundtrip_and_ranges(fs: FsClient) -> None:
    data = os.urandom(CHUNK_SIZE + 5 * 1024 * 1024 + 7)
    res = await fs.put(io.BytesIO(data), "/big.bin")  # type: ignore[arg-type]
    assert res.size == len(data) and res.slices == 2
    assert await read_all(fs, "/big.bin") == data
    for off, n in [(0, 1), (CHUNK_SIZE - 3, 10), (4 * 1024 * 1024 - 1, 2), (len(data) - 5, 100)]:
        assert await read_all(fs, "/big.bin", off, n) == data[off : off + n]


async def test_overwrite_replaces_content_and_frees_old_slices(fs: FsClient) -> None:
    await fs.put(io.BytesIO(b"a" * 5_000_000), "/f")  # type: ignore[arg-type]
    res = await fs.put(io.BytesIO(b"b" * 1000), "/f")  # type: ignore[arg-type]
    assert await read_all(fs, "/f") == b"b" * 1000
    assert (await fs.stat("/f")).size == 1000
    records = [r async for r in fs.source.stream(1, follow=False)]
    freed = [f for r in records if r.op == "truncate" for f in r.effect["freed"]]
    assert len(freed) == 1 and freed[0]["size"] == 5_000_000
    assert res.version == records[-1].version or res.version < records[-1].version


async def test_empty_file_and_missing_parent(fs: FsClient) -> None:
    await fs.put(io.BytesIO(b""), "/empty")  # type: ignore[arg-type]
    assert await read_all(fs, "/empty") == b""
    from volume.errors import FsError

    with pytest.raises(FsError) as info:
        await fs.put(io.BytesIO(b"x"), "/no/such/dir/f", parents=False)  # type: ignore[arg-type]
    assert info.value.errno == 2
    with pytest.raises(FsError):
        await fs.stat("/no/such/dir/f")


async def test_a_corrupt_block_is_never_returned(fs: FsClient) -> None:
    await fs.put(io.BytesIO(os.urandom(100_000)), "/c")  # type: ignore[arg-type]
    store = fs.store
    [key] = [m.key async for m in store.list(BLOCK_PREFIX)]
    bad = bytearray(await store.get(key))
    bad[500] ^= 0xFF
    await store.put(key, bytes(bad))
    with pytest.raises(ChecksumError):
        await read_all(fs, "/c")


async def test_blocks_are_in_the_bucket_before_the_commit(fs: FsClient, tmp_path: Path) -> None:
    data = os.urandom(6 * 1024 * 1024)
    res = await fs.put(io.BytesIO(data), "/ordered")  # type: ignore[arg-type]
    records = [r async for r in fs.source.stream(1, follow=False)]
    [write] = [r for r in records if r.op == "write" and r.version <= res.version]
    sid = write.effect["slice"]["id"]
    keys = [m.key async for m in fs.store.list(BLOCK_PREFIX)]
    assert len([k for k in keys if k.split("/")[-1].startswith(f"{sid}_")]) == 2
    _ = open_store
